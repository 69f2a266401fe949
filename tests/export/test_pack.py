"""PackedModel against the trained model in eval mode, for every zoo model.

Random BatchNorm statistics and affine parameters (negative scales included), inputs with
exact zeros. What must hold: the same top-1 on every input and logits within 1e-4 relative
(max |packed - trained| <= 1e-4 * max |trained|, fp32), on the torch backend and on the
Triton kernels (the interpreter on CPU).

The latent weights of the binary layers have one magnitude with random signs: the trained
layer sums ``±alpha`` in float32 (rounding at every step) where the packed layer computes
``alpha * acc`` from the exact integer ``acc``; with arbitrary magnitudes the two differ by
about 1e-6, and an activation that close to 0 binarizes differently (an expected float
near-tie, not an error, in about one of 10^5 activations). With one magnitude alpha's
multiples are exact in both and the comparison isolates packing, folding and the kernels.
``test_default_init_small_models`` checks the zoo's own initialization on small models.
"""

import pytest
import torch
from torch import nn

from bnnkit import models
from bnnkit.backend import use_backend
from bnnkit.export import PackedModel, pack
from bnnkit.kernels.bits import interpreting
from bnnkit.nn.layers import BinaryLayer

SMALL_INPUT = {"resnet18": (3, 32, 32), "resnet34": (3, 32, 32)}  # ImageNet models on small images
# under the interpreter (slow): the smallest inputs each architecture accepts
INTERPRETER_INPUT = {"resnet18": (3, 16, 16), "resnet34": (3, 16, 16), "resnet20": (3, 8, 8),
                     "resnet20_bireal": (3, 8, 8), "resnet18_cifar": (3, 8, 8)}
RTOL = 1e-4


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) * 3 - 1.5)  # negative BN scales included
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


def equal_magnitude_weights(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, BinaryLayer):
            signs = torch.where(torch.rand(m.weight.shape, generator=g) < 0.5, -1.0, 1.0)
            signs.view(-1)[0] = 0.0  # a zero latent weight binarizes to +1
            m.weight.data.copy_(signs * 2.0**-4)


def zoo_case(name: str, seed: int = 0, equal_magnitudes: bool = True, sizes: dict | None = None):
    torch.manual_seed(seed)
    model = models.create(name).eval()
    randomize_batchnorm(model, seed)
    if equal_magnitudes:
        equal_magnitude_weights(model, seed)
    shape = (sizes or SMALL_INPUT).get(name, models.model_info(name).input_shape)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(seed + 1))
    x[0] = 0.0  # an all-zero input: every binarization sees exact zeros
    x[1, ..., : shape[-1] // 2] = 0.0
    return model, x, shape


def assert_matches(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert torch.equal(got.argmax(-1), want.argmax(-1)), f"{what}: top-1 differs"
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= RTOL * scale, f"{what}: max |packed - trained| = {err:.3g} > {RTOL} * {scale:.3g}"


@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_torch_backend(name):
    model, x, shape = zoo_case(name)
    packed = pack(model, architecture={"name": name, "kwargs": {}}, input_shape=shape)
    assert isinstance(packed, PackedModel) and not packed.training
    with torch.no_grad(), use_backend("torch"):
        assert_matches(packed(x), model(x), name)


@pytest.mark.skipif(not interpreting(), reason="the CUDA run of this check is the GPU test below")
@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_triton_interpreter(name):
    model, x, shape = zoo_case(name, seed=1, sizes=INTERPRETER_INPUT)
    x = x[:1] if name in ("vgg_small", "resnet18", "resnet34", "resnet18_cifar") else x[:2]  # wide layers: slow
    packed = pack(model)
    with torch.no_grad(), use_backend("triton"):
        assert_matches(packed(x), model(x), f"{name} (Triton interpreter)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", models.list_models())
def test_packed_matches_trained_cuda(name):
    model, x, shape = zoo_case(name, seed=2)
    packed = pack(model).cuda()
    model = model.cuda()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the trained model in real fp32 (TF32 rounds alpha)
    try:
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            assert_matches(packed(x.cuda()).cpu(), model(x.cuda()).cpu(), f"{name} (CUDA kernels)")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "resnet20"])
def test_default_init_small_models(name):
    model, x, _ = zoo_case(name, seed=5, equal_magnitudes=False)
    with torch.no_grad(), use_backend("torch"):
        assert_matches(pack(model)(x), model(x), f"{name} (zoo initialization)")


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
        assert_matches(packed(x), model(x), "resnet20 a32")


def test_packed_model_is_inference_only():
    packed = pack(zoo_case("digits_mlp")[0])
    with pytest.raises(RuntimeError, match="inference only"):
        packed.train()
