"""ONNX export, both graph forms: onnxruntime reproduces every zoo model, binarizes 0 to +1,
packs weights to bits; the float form's own structure. The integer form's own properties:
test_onnx_integer.py."""

import math

import onnx
import pytest
import torch
from torch import nn

import bnnkit
from bnnkit import models
from bnnkit.export import OnnxExportError, UnsupportedLayerError, to_onnx
from bnnkit.export.validation import Float64Reference
from bnnkit.export.validation.compare import compare_outputs
from bnnkit.export.onnx import run_onnxruntime
from bnnkit.export.onnx.graph import op_types
from bnnkit.export.onnx.ops import pack_weight_bits, unpack_weight_bits
from bnnkit.kernels.bitpack import pack_signs_reference
from bnnkit.nn import BinaryConv2d, BinaryLinear

from .conftest import SMALL_INPUT, inputs_with_zeros, randomize_batchnorm


@pytest.mark.parametrize("ops", ["integer", "float"])
@pytest.mark.parametrize("name", sorted(SMALL_INPUT))
def test_onnxruntime_matches_every_zoo_model(name, ops, zoo_exports):
    exported = zoo_exports(name, ops)
    graph = onnx.load(exported.path)
    onnx.checker.check_model(graph, full_check=True)
    used = op_types(graph)
    assert "Sign" not in used
    assert {"BitShift", "BitwiseAnd", "GreaterOrEqual", "Where"} <= used  # bits unpacked, inputs binarized
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}  # no custom domain
    assert {m.key: m.value for m in graph.metadata_props}["bnnkit.ops"] == ops
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    for batch, seed in ((1, 10), (4, 11)):  # both batch sizes on the one file
        x = inputs_with_zeros(batch, SMALL_INPUT[name], seed)
        reference = Float64Reference(exported.model)
        result = compare_outputs(reference.run(x), run_onnxruntime(exported.path, x), explain=reference.explain)
        assert result.ok, (name, batch, result)


@pytest.mark.parametrize("ops", ["integer", "float"])
def test_zero_binarizes_to_plus_one_in_onnxruntime(tmp_path, ops):
    # All layers binary: the input itself is binarized, so exact zeros meet the binarization.
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False))
    bnnkit.binarize(net, keep_first=False, keep_last=False, scale="none")
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(5, 6) - 0.1)
    x = torch.tensor([[0.0, -0.0, 1.0, -1.0, 0.0, 2.0], [0.0] * 6])
    path = str(tmp_path / "zeros.onnx")
    to_onnx(net, path, x, ops=ops)
    out = run_onnxruntime(path, x)
    assert torch.equal(out, net.eval()(x).detach())
    # binarize([0, -0, 1, -1, 0, 2]) = [1, 1, 1, -1, 1, 1]; with ONNX Sign the zeros would give 0.
    signs = torch.where(x >= 0, 1.0, -1.0)
    assert torch.equal(out, bnnkit.functional.binarize(signs @ net[0].quantized_weight().T) @ net[1].quantized_weight().T)


@pytest.mark.parametrize("ops", ["integer", "float"])
def test_packed_file_is_much_smaller_than_fp32(tmp_path, zoo_exports, ops):
    exported = zoo_exports("resnet20", ops)
    fp32_bytes = 4 * sum(p.numel() for p in exported.model.parameters())
    assert exported.info.file_bytes * 10 <= fp32_bytes, exported.info
    assert exported.info.packed_weight_bytes == sum(math.ceil(m.weight[0].numel() / 8) * m.out_channels
                                                    for m in exported.model.modules() if isinstance(m, BinaryConv2d))


def test_unpacked_float_graph_has_float_weights_and_the_same_outputs(tmp_path, zoo_exports):
    exported = zoo_exports("digits_mlp", "float")
    fp32_bytes = 4 * sum(p.numel() for p in exported.model.parameters())
    plain = to_onnx(exported.model, tmp_path / "plain.onnx", inputs_with_zeros(2, (1, 8, 8), 3), packed=False,
                    ops="float")
    assert plain.file_bytes >= fp32_bytes and plain.packed_weight_bytes == 0  # float weights: no compression
    assert plain.file_bytes >= 8 * exported.info.file_bytes
    used = op_types(onnx.load(plain.path))
    assert "BitShift" not in used and "Sign" not in used and "MatMulInteger" not in used
    x = inputs_with_zeros(3, (1, 8, 8), 4)
    assert compare_outputs(run_onnxruntime(plain.path, x), run_onnxruntime(exported.path, x), tolerance=0).ok


@pytest.mark.parametrize("ops", ["integer", "float"])
@pytest.mark.parametrize("scale", ["tensor", "channel", "none"])
def test_converted_model_odd_shapes_and_scales(tmp_path, scale, ops):
    # K = 3 * 3 * 3 = 27 and 5 * 4 * 4 = 80 - 5 etc.: bit counts that are not whole bytes.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(5),
                        nn.Conv2d(5, 7, 3, stride=2, padding=1, groups=1, bias=True), nn.ReLU(),
                        nn.Flatten(), nn.Linear(7 * 4 * 4, 13), nn.BatchNorm1d(13), nn.Linear(13, 3))
    bnnkit.binarize(net, keep_first=False, scale=scale)
    randomize_batchnorm(net, seed=5)
    x = inputs_with_zeros(4, (3, 8, 8), 6)
    info = to_onnx(net, tmp_path / "net.onnx", x, ops=ops)
    assert info.binary_weights == 5 * 27 + 7 * 45 + 13 * 112
    assert "Slice" in op_types(onnx.load(info.path))
    y = inputs_with_zeros(1, (3, 8, 8), 7)
    reference = Float64Reference(net)
    assert compare_outputs(reference.run(y), run_onnxruntime(info.path, y), explain=reference.explain).ok
    # The ONNX reference implementation computes the same (the spec, not one runtime); it implements
    # DequantizeLinear from opset 19 on, so the integer graph is exported at opset 21 for it.
    from onnx.reference import ReferenceEvaluator

    if ops == "integer":
        info = to_onnx(net, tmp_path / "net21.onnx", x, ops=ops, opset=21)
    reference_out = ReferenceEvaluator(info.path).run(None, {"input": y.numpy()})[0]
    assert compare_outputs(reference.run(y), torch.from_numpy(reference_out), explain=reference.explain).ok


@pytest.mark.parametrize("ops", ["integer", "float"])
def test_a32_layers_shared_layers_and_3d_inputs(tmp_path, ops):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.real_input = BinaryLinear(6, 8, input_estimator=None, scale="channel")
            self.shared = BinaryLinear(8, 8, weight_estimator="identity_ste", input_estimator="approx_sign")

        def forward(self, x):  # x: (N, T, 6)
            h = torch.relu(self.real_input(x))
            return self.shared(self.shared(h) - 0.1).mean(dim=1)

    torch.manual_seed(1)
    net = Net().eval()
    x = torch.randn(3, 5, 6)
    x[:, 0] = 0
    info = to_onnx(net, tmp_path / "net.onnx", x, ops=ops)
    assert info.binary_weights == 6 * 8 + 8 * 8  # the shared layer is counted once
    y = torch.randn(1, 5, 6)
    reference = Float64Reference(net)
    assert compare_outputs(reference.run(y), run_onnxruntime(info.path, y), explain=reference.explain).ok
    assert net.training is False and isinstance(net.shared, BinaryLinear)  # model left as it was


@pytest.mark.parametrize("ops", ["integer"])  # the float form copies the model the same way
def test_model_is_left_unchanged(tmp_path, ops):
    model = models.create("digits_mlp", hidden=32)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 8, 8), ops=ops)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("ops", ["integer", "float"])
def test_opset_above_18(tmp_path, ops):
    model = randomize_batchnorm(models.create("digits_cnn", channels=4), seed=0)
    info = to_onnx(model, tmp_path / "m.onnx", torch.randn(1, 1, 8, 8), opset=20, ops=ops)
    graph = onnx.load(info.path)
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [20]
    assert info.verification.ok


def test_pack_weight_bits_is_the_byte_view_of_the_word_format():
    w = torch.randn(5, 3, 3, 3)
    w[0, 0] = 0
    w[1, 1, 1, 1] = float("nan")
    bits = pack_weight_bits(w)
    assert bits.dtype == torch.uint8 and bits.shape == (5, 4)  # ceil(27 / 8)
    words = pack_signs_reference(w.reshape(5, -1))
    as_bytes = words.numpy().astype("<i4").view("u1").reshape(5, -1)[:, :4]
    assert torch.equal(bits, torch.from_numpy(as_bytes.copy()))
    scale = torch.rand(5, 1) + 0.1
    expected = torch.where(w >= 0, scale.reshape(5, 1, 1, 1), -scale.reshape(5, 1, 1, 1))
    assert torch.equal(unpack_weight_bits(bits, scale, w.shape), expected)
    with pytest.raises(ValueError, match="uint8 of shape"):
        unpack_weight_bits(bits[:, :3], scale, w.shape)


def test_unsupported_layers_are_named(tmp_path):
    class MyBinaryConv(BinaryConv2d):
        pass

    net = nn.Sequential(nn.Conv2d(1, 4, 3), MyBinaryConv(4, 4, 3))
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' \(MyBinaryConv\).*BinaryConv2d, BinaryLinear"):
        to_onnx(net, tmp_path / "x.onnx", torch.randn(1, 1, 8, 8))

    def my_sign(x):
        return torch.sign(x)

    net = nn.Sequential(nn.Linear(4, 4), BinaryLinear(4, 4, input_estimator=my_sign))
    with pytest.raises(UnsupportedLayerError, match=r"layer '1' \(BinaryLinear\) has a callable input_estimator \(my_sign\)"):
        to_onnx(net, tmp_path / "x.onnx", torch.randn(1, 4))


def test_bad_arguments(tmp_path):
    model = models.create("digits_mlp", hidden=16)
    with pytest.raises(TypeError, match="floating point"):
        to_onnx(model, tmp_path / "x.onnx", torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch dim"):
        to_onnx(model, tmp_path / "x.onnx", torch.zeros(8))
    with pytest.raises(ValueError, match="opset must be an int >= 18"):
        to_onnx(model, tmp_path / "x.onnx", torch.zeros(1, 1, 8, 8), opset=17)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        to_onnx(lambda x: x, tmp_path / "x.onnx", torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"fails on example_input of shape \(1, 1, 9, 9\)"):
        to_onnx(model, tmp_path / "x.onnx", torch.zeros(1, 1, 9, 9))  # the model takes 8x8 inputs
    with pytest.raises(ValueError, match="ops must be one of 'integer', 'float', got 'int8'"):
        to_onnx(model, tmp_path / "x.onnx", torch.zeros(1, 1, 8, 8), ops="int8")
    assert not list(tmp_path.iterdir())


def test_exporter_failure_names_the_root_cause(tmp_path):
    class Untraceable(nn.Module):
        def forward(self, x):
            if torch.compiler.is_exporting():
                raise RuntimeError("this layer cannot be traced")
            return x * 2

    with pytest.raises(OnnxExportError, match="failed for Untraceable: RuntimeError: this layer cannot be traced"):
        to_onnx(Untraceable(), tmp_path / "x.onnx", torch.randn(2, 3))


@pytest.mark.parametrize("ops", ["integer", "float"])
def test_a_file_that_disagrees_with_the_model_is_an_error(tmp_path, monkeypatch, ops):
    import bnnkit.export.onnx.export as onnx_export

    real = onnx_export.run_onnxruntime
    monkeypatch.setattr(onnx_export, "run_onnxruntime", lambda path, x: real(path, x) + 1.0)  # same top-1
    with pytest.raises(OnnxExportError, match="onnxruntime disagrees with the model on the example input"):
        to_onnx(models.create("digits_mlp", hidden=16), tmp_path / "m.onnx", torch.randn(2, 1, 8, 8), ops=ops)
