"""Shared helpers of the kernel tests: device choice, poisoned outputs, tolerances, readable diffs."""

from __future__ import annotations

import torch

from bnnkit.kernels.bits import interpreting


def kernel_device() -> str:
    """Where the Triton kernels run in this session: CPU under the interpreter, else CUDA."""
    return "cpu" if interpreting() else "cuda"


def encode_activation(x: torch.Tensor, encoding: str) -> torch.Tensor:
    """A real activation tensor in one of the kernels' input encodings: ``float`` (as is),
    ``half``, ``int8`` (±1) or ``packed`` (int32 sign bits along the last dim)."""
    from bnnkit.kernels.bitpack import pack_signs_reference

    if encoding == "float":
        return x
    if encoding == "half":
        return x.half()
    if encoding == "int8":
        return torch.where(x >= 0, 1, -1).to(torch.int8)
    return pack_signs_reference(x)


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """An output buffer full of garbage (NaN / 0x5A5A5A5A), so unwritten elements fail comparisons."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, 0x5A5A5A5A if dtype == torch.int32 else 0x5A, dtype=dtype, device=device)


def assert_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Exact equality (integers, signs, bits) with the first mismatches in the message."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    bad = (got != want).nonzero()
    if len(bad):
        idx = [tuple(i.tolist()) for i in bad[:5]]
        pairs = ", ".join(f"{i}: {got[i].item()} vs {want[i].item()}" for i in idx)
        raise AssertionError(f"{what}: {len(bad)} of {want.numel()} elements differ (got vs want) {pairs}")


# Float outputs of the fused epilogue: the kernel computes y in float32 (GPU: with FMA), the
# reference with separate multiply and add, so y differs by a few float32 ulps before the cast.
FLOAT_OUT_TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    g, w = got.double(), want.double()
    err = (g - w).abs()
    bound = atol + rtol * w.abs()
    bad = ~(err <= bound)
    if bad.any():
        i = tuple(bad.nonzero()[0].tolist())
        raise AssertionError(f"{what}: {int(bad.sum())} of {w.numel()} outside rtol={rtol} atol={atol}; "
                             f"first at {i}: {g[i].item()} vs {w[i].item()}")


def sign_edge_values(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Random normal values in ``dtype`` (CPU), about a third of them replaced by the values a
    sign test gets wrong most easily: +0, -0, ± a subnormal, ± the smallest normal, ±max,
    ±inf and NaN (binarized as +1, +1, ±1, ±1, ±1, ±1, -1)."""
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, info.tiny / 4, -info.tiny / 4, info.tiny, -info.tiny, info.max, -info.max,
                            float("inf"), float("-inf"), float("nan")], dtype=torch.float64).to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    pick = torch.rand(shape, generator=g) < 0.35
    x[pick] = special[torch.randint(len(special), (int(pick.sum()),), generator=g)]
    return x
