"""Property test: random models built from the blocks users write pack exactly, or are refused
by name (the generator: tests/random_binary_models.py).

For each model: random BatchNorm statistics and weight magnitudes, ``pack`` (half of them
with the input shape, half proving shapes from the graph), then the packed model against the
trained model evaluated in float64 (:class:`~bnnkit.export.validation.Float64Reference`) on
the torch backend and on the Triton kernels (the interpreter on CPU): same top-1 and
``max |diff| <= 1e-5 * max |trained|`` on every sample, except a flip at a near-tie of the
float64 model that the reference reproduces (reported in the failure message when it is not);
then ``save`` / ``load`` gives bitwise the same outputs. On the native CPU kernels
(``BNNKIT_BACKEND=cpu``) the packed model's output is bitwise the torch backend's.

CI runs a few seeds; ``BNNKIT_PACK_SWEEP=N`` runs N seeds per test.
"""

import os

import pytest
import torch
from torch import nn

from bnnkit.backend import use_backend
from bnnkit.export import PackError, load, pack
from bnnkit.export.validation import Float64Reference, compare_outputs
from bnnkit.kernels.bits import interpreting
from bnnkit.nn.layers import BinaryConv2d, BinaryLinear
from random_binary_models import Unit, random_input, random_model

SWEEP = int(os.environ.get("BNNKIT_PACK_SWEEP", "0") or 0)
TORCH_SEEDS = range(SWEEP or 24)
TRITON_SEEDS = range(1000, 1000 + (SWEEP or 6))
CPU_SEEDS = range(3000, 3000 + (SWEEP or 16))
REFUSAL_SEEDS = range(2000, 2000 + (SWEEP or 6))
RTOL = 1e-5


def run(packed, x: torch.Tensor, backend: str) -> torch.Tensor:
    """The packed model's output on CPU: the Triton backend on CUDA when there is one (true
    float32 in the float layers: no TF32), else under the interpreter."""
    if backend == "triton" and torch.cuda.is_available():
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.no_grad(), use_backend(backend), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                return packed.cuda()(x.cuda()).cpu()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.no_grad(), use_backend(backend):
        return packed(x)


def check_packed(seed: int, backend: str, tmp_path=None) -> None:
    rm = random_model(seed)
    what = f"seed {seed}: {' | '.join(rm.description)}"
    packed = pack(rm.model, input_shape=rm.input_shape if seed % 2 else None)
    x = random_input(rm.input_shape, 3, seed)
    reference = Float64Reference(rm.model)
    want = reference.run(x)
    got = run(packed, x, backend)
    result = compare_outputs(want, got, RTOL, explain=reference.explain)
    assert result.ok, (f"{what}: sample {result.first_disagreement} differs from the float64 model "
                       f"(rel. diff {result.rel_diff:.3g}); near-ties of that sample: "
                       f"{reference.ties[result.first_disagreement]}")
    if tmp_path is not None:
        packed.input_shape = rm.input_shape  # recorded in the manifest (pack without it proved shapes from the graph)
        packed.save(tmp_path / "packed")
        again = run(load(tmp_path / "packed"), x, backend)
        assert torch.equal(again, got), f"{what}: outputs differ after save/load"


@pytest.mark.parametrize("seed", TORCH_SEEDS)
def test_random_model_packs_exactly_torch_backend(seed, tmp_path):
    check_packed(seed, "torch", tmp_path)


@pytest.mark.skipif(not (interpreting() or torch.cuda.is_available()), reason="needs CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("seed", TRITON_SEEDS)
def test_random_model_packs_exactly_triton(seed):
    check_packed(seed, "triton")


@pytest.mark.parametrize("seed", CPU_SEEDS)
def test_random_model_on_the_native_cpu_kernels_is_bitwise_the_reference(seed):
    """Every layer of the drawn model on the native kernels (threads split the work whatever
    its size): the model's output equals the torch backend's bit for bit, a batch of one and
    of several (also the float64 comparison holds, through the reference's)."""
    from cpu_testing import task_split

    rm = random_model(seed)
    packed = pack(rm.model, input_shape=rm.input_shape if seed % 2 else None)
    for batch in (1, 5):
        x = random_input(rm.input_shape, batch, seed)
        want = run(packed, x, "torch")
        with task_split(seed % 2 == 0):
            got = run(packed, x, "cpu")
        assert torch.equal(got, want), f"seed {seed} batch {batch}: {' | '.join(rm.description)}"


def unsupported_conv(c: int, rng: torch.Generator) -> tuple[BinaryConv2d, str]:
    kind = int(torch.randint(3, (1,), generator=rng))
    if kind == 0 and c > 1:
        return BinaryConv2d(c, c, 3, padding=1, groups=c), "grouped convolution"
    if kind == 1:
        return BinaryConv2d(c, c, 3, padding=2, dilation=2), r"dilation \(2, 2\)"
    return OverridesForward(c, c, 3, padding=1), r"OverridesForward overrides BinaryConv2d\.forward"


class OverridesForward(BinaryConv2d):
    def forward(self, x):
        return super().forward(x).clamp(-1, 1)


@pytest.mark.parametrize("seed", REFUSAL_SEEDS)
def test_random_model_with_a_layer_the_kernels_cannot_run_is_refused_by_name(seed):
    rm = random_model(seed)
    blocks = rm.model.blocks
    rng = torch.Generator().manual_seed(seed)
    if len(rm.input_shape) == 3:  # insert a shape-preserving-enough conv at the input
        conv, message = unsupported_conv(rm.input_shape[0], rng)
        blocks.insert(0, Unit(conv, [("bn", nn.BatchNorm2d(rm.input_shape[0]))]))
    else:  # a binary linear layer whose callable input estimator is not a sign
        f = rm.input_shape[0]
        blocks.insert(0, Unit(BinaryLinear(f, f, input_estimator=torch.tanh), []))
        message = "the callable input estimator's forward is not binarize"
    with pytest.raises(PackError, match=rf"^blocks\.0\.core: {message}"):
        pack(rm.model, input_shape=rm.input_shape)


def test_the_generator_draws_every_block():
    """Over the CI seeds, every block kind the issue lists appears."""
    seen = " | ".join(" | ".join(random_model(s).description) for s in [*TORCH_SEEDS, *TRITON_SEEDS])
    for block in ["bconv3x3/s2", "bconv1x1", "blinear", " a32", " channel", " tensor", " none", "bn relu",
                  "relu bn", "hardtanh", "prelu", "relu_fn", "residual(identity)", "binary 1x1/s2 downsample",
                  "float 1x1/s2 downsample", "two binary branches summed", "concatenation", "MaxPool2d",
                  "AvgPool2d", "flatten", "global avg pool", "float head", "binary head", "conv3x3"]:
        assert block in seen, block
