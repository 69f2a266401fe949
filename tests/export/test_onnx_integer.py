"""The integer ONNX graph (``to_onnx(..., ops="integer")``): integer ops compute every binary
layer, exactly (the trained model in float64 with its near-tie rule, on the zoo and on random
models), the sign thresholds and exact-accumulator windows hold at their edges, and the file
stays as small as the float graph's.

``BNNKIT_ONNX_SWEEP=N`` runs N random models instead of the CI's few.
"""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import bnnkit
from bnnkit import models
from bnnkit.cli import main
from bnnkit.backend import use_backend
from bnnkit.export import OnnxExportError, pack, to_onnx
from bnnkit.export.onnx import run_onnxruntime
from bnnkit.export.onnx.integer_layers import (IntegerLoweringError, exact_window, graph_epilogue, split_windows,
                                                threshold_bias)
from bnnkit.export.validation import Float64Reference, compare_outputs
from bnnkit.kernels.epilogue import Epilogue, epilogue_reference, sign_thresholds
from bnnkit.nn import BinaryConv2d, BinaryLinear
from random_binary_models import random_input, random_model

from .conftest import SMALL_INPUT, inputs_with_zeros, randomize_batchnorm

SWEEP = int(os.environ.get("BNNKIT_ONNX_SWEEP", "0") or 0)
INTEGER_OPS = ("QLinearConv", "MatMulInteger")


def node_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def extra_windows(path: str) -> int:
    """How many QLinearConvs beyond one per layer the split-window route (one per channel group,
    fed by a Split) added."""
    graph = onnx.load(path).graph
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    return sum(len(n.output) - 1 for n in graph.node
               if n.op_type == "Split" and all(consumers.get(o) == "QLinearConv" for o in n.output))


def agrees_with_float64(model: nn.Module, path: str, x: torch.Tensor):
    reference = Float64Reference(model)
    return compare_outputs(reference.run(x), run_onnxruntime(path, x), explain=reference.explain)


def agrees_with_packed(model: nn.Module, path: str, x: torch.Tensor):
    """The integer graph against the packed model it was built from (``pack``, pure-PyTorch
    kernels): the same sign thresholds and exact integer accumulators, so the same top-1 and
    logits within the validation tolerance. Both binarize in float32 in their own order, so a
    difference is allowed only where a near-tie of the float64 model explains it."""
    packed = pack(model, input_shape=tuple(x.shape[1:])).eval()
    with torch.no_grad(), use_backend("torch"):
        want = packed(x)
    reference = Float64Reference(model)
    reference.run(x)  # records the near-ties that explain() may flip
    return compare_outputs(want, run_onnxruntime(path, x), explain=reference.explain)


@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_integer_ops_compute_every_binary_layer_of_the_zoo(name, zoo_exports):
    exported = zoo_exports(name)
    counts = node_counts(exported.path)
    modules = list(exported.model.modules())
    binary = [m for m in modules if isinstance(m, (BinaryConv2d, BinaryLinear))]
    assert sum(counts.get(op, 0) for op in INTEGER_OPS) - extra_windows(exported.path) == len(binary)
    # the float ops left are the model's own full-precision layers
    assert counts.get("Conv", 0) == sum(type(m) is nn.Conv2d for m in modules)
    assert counts.get("Gemm", 0) + counts.get("MatMul", 0) == sum(type(m) is nn.Linear for m in modules)
    assert exported.info.ops == "integer" and exported.info.verification.ok


# every kind of zoo block (MLP, plain CNN, CIFAR ResNet with option-A shortcuts, Bi-Real, VGG,
# ImageNet ResNet with 1x1 shortcuts); resnet34 and resnet18_cifar repeat them and take
# long to pack, so they are checked against float64 only (above).
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "resnet20", "resnet20_bireal", "vgg_small", "resnet18"])
def test_integer_graph_computes_what_the_packed_model_computes(name, zoo_exports):
    exported = zoo_exports(name)
    result = agrees_with_packed(exported.model, exported.path, inputs_with_zeros(3, SMALL_INPUT[name], seed=8))
    assert result.ok, result


@pytest.mark.parametrize("name", ["digits_mlp", "resnet20", "resnet18"])
def test_integer_file_is_as_small_as_the_float_graph(name, zoo_exports):
    integer, float_form = zoo_exports(name).info, zoo_exports(name, "float").info
    assert integer.file_bytes <= 1.2 * float_form.file_bytes, (integer.file_bytes, float_form.file_bytes)
    assert integer.packed_weight_bytes == float_form.packed_weight_bytes > 0


def test_unpacked_integer_graph_holds_int8_weights_and_computes_the_same(tmp_path, zoo_exports):
    exported = zoo_exports("digits_cnn")
    plain = to_onnx(exported.model, tmp_path / "int8.onnx", inputs_with_zeros(2, (1, 8, 8), 3), packed=False)
    graph = onnx.load(plain.path)
    assert "BitShift" not in node_counts(plain.path) and plain.packed_weight_bytes == 0
    int8_weights = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) == exported.info.binary_weights
    x = inputs_with_zeros(5, (1, 8, 8), 4)
    assert torch.equal(run_onnxruntime(plain.path, x), run_onnxruntime(exported.path, x))


def test_onnx_reference_evaluator_computes_the_residual_network(tmp_path, zoo_exports):
    """The ONNX spec's reference implementation, not one runtime, on every integer route of
    ResNet-20: QLinearConv to signs, QLinearConv's exact accumulator window (16
    channels), im2col + MatMulInteger (32 and 64 channels), DequantizeLinear epilogues and
    residuals.
    It implements DequantizeLinear from opset 19 on, so this graph is exported at opset 21."""
    from onnx.reference import ReferenceEvaluator

    exported = zoo_exports("resnet20")
    info = to_onnx(exported.model, tmp_path / "r20.onnx", inputs_with_zeros(2, (3, 32, 32), seed=2), opset=21)
    assert {"QLinearConv", "MatMulInteger", "DequantizeLinear"} <= set(node_counts(info.path))
    y = inputs_with_zeros(2, (3, 32, 32), seed=9)
    out = torch.from_numpy(ReferenceEvaluator(info.path).run(None, {"input": y.numpy()})[0])
    reference = Float64Reference(exported.model)
    assert compare_outputs(reference.run(y), out, explain=reference.explain).ok


@pytest.mark.parametrize("seed", range(SWEEP or 6))
def test_random_model_integer_graph_is_exact(seed, tmp_path):
    rm = random_model(seed)
    x = random_input(rm.input_shape, 4, seed)
    info = to_onnx(rm.model, tmp_path / "m.onnx", x[:2])
    assert info.verification.ok
    result = agrees_with_float64(rm.model, info.path, x)
    assert result.ok, (seed, rm.description, result)
    result = agrees_with_packed(rm.model, info.path, x)
    assert result.ok, (seed, rm.description, result)


def test_a_model_pack_refuses_is_named_and_the_float_graph_takes_it(tmp_path):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4),
                        BinaryConv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.BatchNorm2d(4),
                        nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    randomize_batchnorm(net, seed=3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(OnnxExportError, match=r"cannot be packed: 2: grouped convolution.*ops='float'"):
        to_onnx(net, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()
    assert to_onnx(net, tmp_path / "m.onnx", x, ops="float").verification.ok


def test_sign_threshold_becomes_a_saturating_bias_for_every_accumulator():
    g = torch.Generator().manual_seed(0)
    k, c = 27, 64
    rows = torch.randn(4, c, generator=g, dtype=torch.float64)
    rows[0, :8] = 0  # constant signs: zero scale
    rows[2, 8:16] = -rows[2, 8:16].abs()  # decreasing after the ReLU
    rows[0, 16:24] = -rows[0, 16:24].abs()  # decreasing before it
    for relu in (False, True):
        epilogue = Epilogue(scale=rows[0], bias=rows[1] * 5, relu=relu, post_scale=rows[2], post_bias=rows[3])
        thresholds = sign_thresholds(epilogue, c, k)
        flip, bias = threshold_bias(torch.stack([thresholds.lo, thresholds.hi]).numpy(), k, "layer")
        acc = np.arange(-k, k + 1)[:, None]
        bits = flip.astype(np.int64) * acc + bias >= 1
        want = (acc >= thresholds.lo.numpy()) & (acc <= thresholds.hi.numpy())
        assert np.array_equal(bits, want)
        assert (want[:, :8].all(axis=0) | (~want[:, :8]).all(axis=0)).all()  # zero scale: one sign per channel
    with pytest.raises(IntegerLoweringError, match="channel 0 has the sign interval \\[-2, 3\\]"):
        threshold_bias(np.array([[-2], [3]], dtype=np.int32), k, "layer")


def test_folded_epilogue_is_the_packed_epilogue():
    g = torch.Generator().manual_seed(1)
    params = torch.randn(4, 32, generator=g)
    params[2, :8] = -params[2, :8].abs()  # BatchNorm with negative scales after the ReLU
    params[2, 8:10] = 0
    acc = torch.arange(-50, 51, dtype=torch.int32)[:, None].expand(-1, 32)
    for relu in (False, True):
        want = epilogue_reference(acc, Epilogue(*params[:2], relu=relu, post_scale=params[2], post_bias=params[3]))
        scale, bias, lower, upper = graph_epilogue(params.numpy(), relu)
        got = acc.numpy() * scale + bias
        if lower is not None:
            got = np.maximum(got, lower)
        if upper is not None:
            got = np.minimum(got, upper)
        assert (lower is not None and upper is not None) == relu
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_exact_window_rule():
    assert exact_window(28, 9) == 2.0 and exact_window(30, 9) is None  # 252 and 270 terms, even
    assert exact_window(13, 9) == 1.0 and exact_window(15, 9) is None  # 117 and 135 terms, odd
    assert exact_window(254, 1) == 2.0 and exact_window(127, 1) == 1.0 and exact_window(129, 1) is None


def test_split_window_rule():
    assert split_windows(28, 9) is None  # one window
    assert split_windows(32, 9) == [16, 16] and split_windows(30, 9) == [16, 14] and split_windows(56, 9) == [28, 28]
    assert split_windows(58, 9) is None and split_windows(64, 9) is None  # three windows or more: im2col
    assert split_windows(31, 9) is None  # an odd group has no exact window of 2
    assert split_windows(300, 1) == [150, 150]


@pytest.mark.parametrize("channels, stride", [(28, 1), (28, 2), (13, 1), (30, 2), (32, 1), (56, 2), (64, 1)])
def test_extreme_accumulators_are_exact_at_the_borders(tmp_path, channels, stride):
    """Inputs equal to (or opposite of) the weights give the largest |accumulator| the window or
    the im2col must hold, and zero padding shrinks it at the borders."""
    torch.manual_seed(channels)
    net = nn.Sequential(BinaryConv2d(channels, 6, 3, stride=stride, padding=1, bias=False, scale="none"))
    with torch.no_grad():
        w = net[0].weight
        w[0] = w[0].abs()  # channel 0 sees +k on an all-positive input, -k on an all-negative one
        w[1] = -w[1].abs()
    x = torch.cat([torch.ones(1, channels, 7, 9), -torch.ones(1, channels, 7, 9), torch.randn(2, channels, 7, 9)])
    info = to_onnx(net.eval(), tmp_path / "m.onnx", x[:2])
    counts = node_counts(info.path)
    windows = 1 if exact_window(channels, 9) is not None else len(split_windows(channels, 9) or [])
    assert counts.get("QLinearConv", 0) == windows and counts.get("MatMulInteger", 0) == (not windows)
    got = run_onnxruntime(info.path, x)
    with torch.no_grad():
        want = net(x)
    assert torch.equal(got, want)  # integers times 1: exact
    assert float(got[0, 0].max()) == 9 * channels and float(got[1, 0].min()) == -9 * channels


def test_export_cli_chooses_the_graph_form(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", run, "--epochs", "1",
                 "--model-arg", "hidden=16", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["export", run, "--out", str(tmp_path / "bad"), "--onnx-ops", "float"]) == 2
    assert "add --onnx" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    for ops in ("integer", "float"):
        out = tmp_path / ops
        args = ["export", run, "--out", str(out), "--onnx"] + ([] if ops == "integer" else ["--onnx-ops", ops])
        assert main(args) == 0
        assert f"({ops} ops)" in capsys.readouterr().out
        graph = onnx.load(str(out / "model.onnx"))
        props = {p.key: p.value for p in graph.metadata_props}
        assert props["bnnkit.ops"] == ops and json.loads(props["bnnkit.input_spec"])["shape"] == [1, 8, 8]
        assert (sum(node_counts(str(out / "model.onnx")).get(op, 0) for op in INTEGER_OPS) > 0) == (ops == "integer")
        assert main(["validate", str(out), "--samples", "64"]) == 0
        assert main(["predict", str(out), "--runtime", "onnxruntime", _digit_file(tmp_path)]) == 0
        capsys.readouterr()


def _digit_file(tmp_path) -> str:
    path = tmp_path / "digit.npy"
    np.save(path, np.random.default_rng(0).random((1, 8, 8), dtype=np.float32) * 16)
    return str(path)


def test_binarize_converted_model_with_packed_linear_chain(tmp_path):
    """Binary linear layers that write signs for the next one (threshold + Where) and a
    binary head with a float output."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 40), nn.ReLU(), nn.BatchNorm1d(40), nn.Linear(40, 33),
                        nn.BatchNorm1d(33), nn.ReLU(), nn.Linear(33, 17), nn.ReLU(), nn.BatchNorm1d(17),
                        nn.Linear(17, 5))
    bnnkit.binarize(net, keep_first=True, keep_last=False, scale="channel")
    randomize_batchnorm(net, seed=4)
    x = inputs_with_zeros(6, (3, 2, 2), seed=5)
    info = to_onnx(net, tmp_path / "m.onnx", x[:2])
    counts = node_counts(info.path)
    assert counts["MatMulInteger"] == 3 and counts.get("QLinearConv", 0) == 0
    assert agrees_with_float64(net, info.path, x).ok
