"""PackedModel against the trained model in eval mode, for every zoo model.

Random BatchNorm statistics and affine parameters (negative scales included), the zoo's own
weight initialization, inputs with exact zeros. What must hold: against the trained model
evaluated in float64 (:class:`~bnnkit.export.validation.Float64Reference`), the same top-1
on every input and logits within 1e-5 relative (max |packed - trained| <= 1e-5 * max
|trained|), on the torch backend and on the Triton kernels (the interpreter on CPU); a sample
may differ only by a flip at a near-tie of the float64 model that the reference reproduces.
"""

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.backend import use_backend
from bnnkit.export import PackedModel, pack
from bnnkit.export.validation import Float64Reference, compare_outputs
from bnnkit.kernels.bits import interpreting

SMALL_INPUT = {"resnet18": (3, 32, 32), "resnet34": (3, 32, 32)}  # ImageNet models on small images
# under the interpreter (slow): the smallest inputs each architecture accepts
INTERPRETER_INPUT = {"resnet18": (3, 16, 16), "resnet34": (3, 16, 16), "resnet20": (3, 8, 8),
                     "resnet20_bireal": (3, 8, 8), "resnet18_cifar": (3, 8, 8)}
RTOL = 1e-5


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 3 - 1.5)  # negative BN scales included
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


def zoo_case(name: str, seed: int = 0, sizes: dict | None = None):
    torch.manual_seed(seed)
    model = models.create(name).eval()
    randomize_batchnorm(model, seed)
    shape = (sizes or SMALL_INPUT).get(name, models.model_info(name).input_shape)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed + 1))
    x[0] = 0.0  # an all-zero input: every binarization sees exact zeros
    x[1, ..., : shape[-1] // 2] = 0.0
    return model, x, shape


def assert_matches(got: torch.Tensor, model: torch.nn.Module, x: torch.Tensor, what: str) -> None:
    reference = Float64Reference(model)
    want = reference.run(x.cpu())
    result = compare_outputs(want, got.cpu(), RTOL, explain=reference.explain)
    assert result.ok, (f"{what}: sample {result.first_disagreement} differs (max |packed - trained| = "
                       f"{result.max_abs_diff:.3g}, {result.rel_diff:.3g} relative > {RTOL})")


@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_torch_backend(name):
    model, x, shape = zoo_case(name)
    packed = pack(model, architecture={"name": name, "kwargs": {}}, input_shape=shape)
    assert isinstance(packed, PackedModel) and not packed.training
    with torch.no_grad(), use_backend("torch"):
        assert_matches(packed(x), model, x, name)


@pytest.mark.skipif(not interpreting(), reason="the CUDA run of this check is the GPU test below")
@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_triton_interpreter(name):
    model, x, shape = zoo_case(name, seed=1, sizes=INTERPRETER_INPUT)
    x = x[:1] if name in ("vgg_small", "resnet18", "resnet34", "resnet18_cifar") else x[:2]  # wide layers: slow
    packed = pack(model)
    with torch.no_grad(), use_backend("triton"):
        got = packed(x)
    assert_matches(got, model, x, f"{name} (Triton interpreter)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_cuda(name):
    model, x, shape = zoo_case(name, seed=2)
    packed = pack(model).cuda()
    model = model.cuda()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float layers in real fp32 (TF32 rounds to 10 bits)
    try:
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            got = packed(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert_matches(got, model, x, f"{name} (CUDA kernels)")


def test_pack_does_not_modify_the_model():
    model, x, _ = zoo_case("resnet20")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pack(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert type(model.layer1[0].conv1).__name__ == "BinaryConv2d"


def test_block_structure_of_resnet20():
    """conv1 writes packed bits straight into conv2; conv2 fuses ReLU, BN and the residual add."""
    model, _, _ = zoo_case("resnet20")
    packed = pack(model)
    assert packed.layers["layer1.0.conv1"] == {"input": "binarize", "output": "packed", "relu": True,
                                               "residual": False}
    assert packed.layers["layer2.0.conv2"]["input"] == "packed"
    bireal = pack(zoo_case("resnet20_bireal")[0])
    assert bireal.layers["layer1.0.conv1"]["residual"] and bireal.layers["layer1.0.conv2"]["residual"]
    names = {type(m).__name__ for m in packed.body.modules()}
    assert "BinaryConv2d" not in names and "PackedConv2d" in names


def test_a32_model_packs_with_real_inputs():
    torch.manual_seed(0)
    model = models.create("resnet20", a32=True).eval()
    randomize_batchnorm(model, 3)
    x = torch.randn(2, 3, 32, 32)
    packed = pack(model)
    assert {enc["input"] for enc in packed.layers.values()} == {"real"}
    with torch.no_grad():
        got = packed(x)
    assert_matches(got, model, x, "resnet20 a32")


def test_packed_model_is_inference_only():
    packed = pack(zoo_case("digits_mlp")[0])
    with pytest.raises(RuntimeError, match="inference only"):
        packed.train()
