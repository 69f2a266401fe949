"""The activation packing kernel against pack_signs_reference (bits are compared exactly)."""

import pytest
import torch

pytest.importorskip("triton")
from bnnkit.kernels.pack_signs import pack_signs, pack_signs_reference  # noqa: E402
from kernel_testing import assert_equal, kernel_device, poisoned, sign_edge_values  # noqa: E402

DEVICE = kernel_device()


@pytest.mark.parametrize("shape", [(1, 1), (3, 31), (17, 32), (5, 300), (2, 3, 65)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8])
def test_pack_signs_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    x[torch.rand(shape, generator=g) < 0.2] = 0.0
    if dtype == torch.int8:
        x = torch.where(x >= 0, 1, -1)
    else:
        x.view(-1)[0] = float("nan")  # NaN -> bit 0
    x = x.to(dtype).to(DEVICE)
    out = poisoned((*shape[:-1], (shape[-1] + 31) // 32), torch.int32, DEVICE)
    assert_equal(pack_signs(x, out=out).cpu(), pack_signs_reference(x.cpu()), f"pack {shape} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_pack_signs_edge_values_and_strided_views(dtype):
    x = sign_edge_values((6, 100), dtype, seed=5)
    for view in (x, x[:, 3:70], x.t().contiguous().t(), x[::2]):
        assert_equal(pack_signs(view.to(DEVICE)).cpu(), pack_signs_reference(view), f"{dtype} {tuple(view.shape)}")


def test_pack_signs_empty():
    for shape in [(0, 40), (3, 0, 5)]:
        got = pack_signs(torch.zeros(shape, device=DEVICE))
        assert got.shape == (*shape[:-1], (shape[-1] + 31) // 32) and got.dtype == torch.int32


def test_pack_signs_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32/float16/bfloat16/int8"):
        pack_signs(torch.zeros(2, 3, dtype=torch.int64, device=DEVICE))
