"""Packed layers: a binary conv / linear with its fused epilogue, as an ``nn.Module``.

They hold only buffers (packed weights and per-channel epilogue parameters) and call the
ops of :mod:`bnnkit.export.runtime.ops`, which hand the buffers to the Triton kernel as they
are: the buffers are the kernels' layout, so a forward is one kernel launch with nothing to
prepare per call. Activations between PyTorch modules stay NCHW tensors in
channels_last memory format, which is NHWC in memory, so moving in and out of the NHWC
kernels is a free ``permute``. Between two packed layers that only need signs the tensor is
the packed bits themselves: ``(N, H, W, ceil(C/32))`` int32 for convolutions, ``(...,
ceil(K/32))`` for linear layers.
"""

from __future__ import annotations

import torch
from torch import nn

from bnnkit.kernels.bitpack import num_words
from bnnkit.kernels.kinds import InputKind, OutputKind
from bnnkit.kernels.weight_pack import pack_conv_weight, pack_linear_weight

from . import ops  # registers torch.ops.bnnkit.*

LAYER_INPUT_KINDS = (InputKind.BINARIZE, InputKind.PACKED, InputKind.REAL)
"""What a packed layer reads: real values it binarizes, the packed bits of the previous packed
layer, or real values it uses as they are (1w32a)."""
LAYER_OUTPUT_KINDS = (OutputKind.FLOAT, OutputKind.PACKED)
"""What a packed layer writes: float values, or packed sign bits for a following packed layer."""


def _layer_kind(value: str, accepted: tuple, name: str):
    if isinstance(value, str):
        for kind in accepted:
            if value == kind.value:
                return kind
    raise ValueError(f"{name} must be one of {', '.join(k.value for k in accepted)}, got {value!r}")


class PackedLayer(nn.Module):
    """What packed conv and linear layers share: the epilogue buffers and the encodings.

    Persistent buffers (the artifact format): ``weight_bits`` (packed int32 words); ``epilogue``
    ``(4, C_out)`` float32 rows ``scale, bias, post_scale, post_bias`` (float outputs), or
    ``thresholds`` ``(2, C_out)`` int32 ``lo, hi`` (packed outputs: ``bit = lo <= acc <= hi``).
    The stage a layer does not use is an empty non-persistent placeholder under the same name
    (what the ops take for "not used").

    Nothing is derived from the buffers' values: the ops hand them to the kernel as they are
    (:class:`~bnnkit.kernels.epilogue.KernelStage`), so filling them in place (``copy_``, as
    ``pack`` does, or ``load_state_dict``) needs no rebuild. Moving the layer (``.to(device)``,
    ``.cuda()``) moves every buffer; dtype conversions (``.half()``, ``.to(torch.bfloat16)``)
    leave them as they are, since their dtypes are the format the kernels read.
    """

    weight_bits: torch.Tensor
    epilogue: torch.Tensor
    thresholds: torch.Tensor

    def _init_buffers(self, weight_bits: torch.Tensor, out_channels: int, input_kind: str, output_kind: str,
                      relu: bool, residual: bool) -> None:
        input_kind = _layer_kind(input_kind, LAYER_INPUT_KINDS, "input_kind")
        output_kind = _layer_kind(output_kind, LAYER_OUTPUT_KINDS, "output_kind")
        if output_kind == OutputKind.PACKED and residual:
            raise ValueError("a packed output cannot take a residual (the threshold form is per channel)")
        self.input_kind = input_kind
        self.output_kind = output_kind
        self.relu = bool(relu)
        self.residual = bool(residual)
        self.register_buffer("weight_bits", weight_bits.contiguous())
        if output_kind == OutputKind.PACKED:
            self.register_buffer("thresholds", torch.zeros(2, out_channels, dtype=torch.int32))
            self.register_buffer("epilogue", torch.zeros(0, out_channels), persistent=False)
        else:
            epilogue = torch.zeros(4, out_channels)
            epilogue[0::2] = 1.0  # scale 1, bias 0, post_scale 1, post_bias 0 (no torch.stack: slow on meta)
            self.register_buffer("epilogue", epilogue)
            self.register_buffer("thresholds", torch.zeros(2, 0, dtype=torch.int32), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # buffers follow device moves but keep their dtypes: the kernels read float32 epilogue
        # rows and int32 words whatever the model's float dtype (.half() must not round them)
        before = dict(self._buffers)
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = self._buffers[name]
            if old is not None and new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return self

    def _out_dtype(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.dtype:
        if x.is_floating_point():
            return x.dtype
        if residual is not None:
            return residual.dtype
        return torch.float32

    def _check_input(self, x: torch.Tensor) -> None:
        if self.input_kind == InputKind.PACKED and x.dtype != torch.int32:
            raise TypeError(f"{type(self).__name__} expects packed int32 bits from the previous packed layer, "
                            f"got {x.dtype}")
        if self.input_kind != InputKind.PACKED and not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects a float input, got {x.dtype}")

    def encoding(self) -> dict:
        """How this layer's tensors and activations are encoded (for the artifact manifest)."""
        return {"input": self.input_kind.value, "output": self.output_kind.value, "relu": self.relu,
                "residual": self.residual}


class PackedConv2d(PackedLayer):
    """A binary convolution (zero padding) with its fused epilogue.

    ``forward(x, residual=None)``: ``x`` is ``(N, C_in, H, W)`` float (NCHW; channels_last is
    free) or, for ``input_kind="packed"``, ``(N, H, W, ceil(C_in/32))`` int32. Returns
    ``(N, C_out, OH, OW)`` float in channels_last memory format, or ``(N, OH, OW,
    ceil(C_out/32))`` int32 packed bits for ``output_kind="packed"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, *, input_kind: str = "binarize", output_kind: str = "float", relu: bool = False,
                 residual: bool = False) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (int(kh), int(kw))
        self.stride, self.padding = int(stride), int(padding)
        words = torch.zeros(out_channels, kh, kw, num_words(in_channels), dtype=torch.int32)
        self._init_buffers(words, out_channels, input_kind, output_kind, relu, residual)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, stride: int, padding: int, **kinds) -> "PackedConv2d":
        """Pack a float OIHW ``weight`` (signs only: ``w >= 0`` -> +1)."""
        co, ci, kh, kw = weight.shape
        layer = cls(ci, co, (kh, kw), stride, padding, **kinds)
        layer.weight_bits.copy_(pack_conv_weight(weight.detach().float().cpu()))
        return layer

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        if (residual is not None) != self.residual:
            raise ValueError(f"this PackedConv2d was packed {'with' if self.residual else 'without'} a residual")
        nhwc = x if self.input_kind == InputKind.PACKED else x.permute(0, 2, 3, 1)
        res = residual.permute(0, 2, 3, 1) if residual is not None else None
        op = ops.run_packed_conv2d if ops.eager_call(x) else torch.ops.bnnkit.packed_conv2d
        out = op(nhwc, self.weight_bits, self.epilogue, self.thresholds, res, self.in_channels, self.stride,
                 self.padding, self.input_kind == InputKind.REAL, self.relu, self.output_kind.value,
                 self._out_dtype(x, residual))
        return out if self.output_kind == OutputKind.PACKED else out.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, input={self.input_kind.value}, output={self.output_kind.value}, "
                f"relu={self.relu}, "
                f"residual={self.residual}")


class PackedLinear(PackedLayer):
    """A binary linear layer with its fused epilogue.

    ``forward(x, residual=None)``: ``x`` is ``(..., in_features)`` float or, for
    ``input_kind="packed"``, ``(..., ceil(in_features/32))`` int32. Returns ``(...,
    out_features)`` float, or ``(..., ceil(out_features/32))`` int32 for packed outputs.
    """

    def __init__(self, in_features: int, out_features: int, *, input_kind: str = "binarize",
                 output_kind: str = "float", relu: bool = False, residual: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        words = torch.zeros(out_features, num_words(in_features), dtype=torch.int32)
        self._init_buffers(words, out_features, input_kind, output_kind, relu, residual)

    @classmethod
    def from_weight(cls, weight: torch.Tensor, **kinds) -> "PackedLinear":
        layer = cls(weight.shape[1], weight.shape[0], **kinds)
        layer.weight_bits.copy_(pack_linear_weight(weight.detach().float().cpu()))
        return layer

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        if (residual is not None) != self.residual:
            raise ValueError(f"this PackedLinear was packed {'with' if self.residual else 'without'} a residual")
        op = ops.run_packed_linear if ops.eager_call(x) else torch.ops.bnnkit.packed_linear
        return op(x, self.weight_bits, self.epilogue, self.thresholds, residual, self.in_features,
                  self.input_kind == InputKind.REAL, self.relu, self.output_kind.value, self._out_dtype(x, residual))

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, input={self.input_kind.value}, "
                f"output={self.output_kind.value}, "
                f"relu={self.relu}, residual={self.residual}")
