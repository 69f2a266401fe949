"""Weight layouts of the kernels: OHWI packed along input channels, and their inverses."""

import pytest
import torch

from bnnkit.kernels.bitpack import unpack_signs_reference
from bnnkit.kernels.weight_pack import aligned_words, expand_weight_int8, pack_conv_weight, pack_linear_weight


def test_conv_layout_is_ohwi_packed_along_input_channels():
    w = torch.randn(5, 37, 3, 3)
    w[0, :, 1, 2] = 0.0
    words = pack_conv_weight(w)
    assert words.shape == (5, 3, 3, 2) and words.dtype == torch.int32
    # tap (kh=1, kw=2) of output channel 0: 37 channels of +1 (bit 1), 27 zero padding bits
    assert words[0, 1, 2].tolist() == [-1, 0b11111]
    assert torch.equal(unpack_signs_reference(words[3, 2, 0], 37), torch.where(w[3, :, 2, 0] >= 0, 1.0, -1.0))
    assert torch.equal(unpack_signs_reference(words, 37).permute(0, 3, 1, 2), torch.where(w >= 0, 1.0, -1.0))


def test_linear_roundtrip_and_int8_expansion():
    w = torch.randn(7, 70)
    words = pack_linear_weight(w)
    assert words.shape == (7, 3)
    signs = torch.where(w >= 0, 1.0, -1.0)
    assert torch.equal(unpack_signs_reference(words, 70), signs)
    assert torch.equal(expand_weight_int8(words, 70), signs.to(torch.int8))


def test_aligned_words_pads_rows_to_16_bytes():
    words = pack_linear_weight(torch.randn(3, 70))
    view = aligned_words(words)
    assert torch.equal(view, words) and view.stride(0) == 4
    assert aligned_words(pack_linear_weight(torch.randn(3, 128))).stride(0) == 4


def test_bad_shapes():
    with pytest.raises(ValueError, match="4-D"):
        pack_conv_weight(torch.randn(3, 3))
    with pytest.raises(ValueError, match="2-D"):
        pack_linear_weight(torch.randn(3, 3, 3))
