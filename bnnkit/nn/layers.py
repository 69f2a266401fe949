"""BinaryConv2d and BinaryLinear: nn.Conv2d / nn.Linear whose weights (and, by default,
inputs) are binarized to {-1, +1} in the forward pass and trained with a straight-through
estimator in the backward pass.

Forward, as in the ReSTE reference code::

    w_b = alpha * binarize(w)       # alpha = mean |w| (scale="tensor"), per channel, or 1
    x_b = binarize(x)               # or x itself when input_estimator is None (1/32 models)
    y   = conv2d(x_b, w_b, bias)    # zero padding: padded taps contribute 0, not -1

The estimator attributes ``o`` and ``t`` are floats that :class:`bnnkit.OSchedule` sets once
per epoch. They shape only the backward pass, so they are not part of the state dict (the
forward, and therefore a trained model, does not depend on them). ``o`` is held in a 0-d CPU
tensor that the forward passes to the ops, so that ``torch.compile`` does not recompile the
model each time the schedule changes it (see :mod:`bnnkit.ops`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.estimators import Estimator, check_estimator, check_o, threshold_for
from bnnkit.functional import binarize_weight, sign_estimator
from bnnkit.kernels.weight_binarize import check_scale_mode


class BinaryLayer:
    """Mixin holding what every binary layer shares: estimators, scale mode, o and t."""

    weight_estimator: Estimator
    input_estimator: Estimator | None
    scale: str
    t: float | None
    _o: torch.Tensor

    def _init_binary(self, weight_estimator: Estimator, input_estimator: Estimator | None, scale: str,
                     o: float, t: float | None) -> None:
        self.weight_estimator = check_estimator(weight_estimator, what="weight_estimator")
        self.input_estimator = check_estimator(input_estimator, allow_none=True, what="input_estimator")
        self.scale = check_scale_mode(scale)
        # A plain attribute, not a buffer: it stays on the CPU when the model moves to a GPU
        # (the ops read it on the host) and stays out of the state dict.
        self._o = torch.tensor(1.0, dtype=torch.float64)
        self.o = o
        self.t = None if t is None else float(t)  # None: each estimator's default (threshold_for)

    @property
    def o(self) -> float:
        """ReSTE's power ``o >= 1`` (set each epoch by :class:`bnnkit.OSchedule`)."""
        return float(self._o)

    @o.setter
    def o(self, value: float) -> None:
        with torch.no_grad():
            self._o.fill_(check_o(value))

    @property
    def binary_input(self) -> bool:
        """True when inputs are binarized (1w1a), False for real-valued inputs (1w32a)."""
        return self.input_estimator is not None

    def quantized_weight(self) -> torch.Tensor:
        """``alpha * binarize(weight)`` with the weight estimator's gradient."""
        return binarize_weight(self.weight, self.scale, self.weight_estimator, self._o,
                               threshold_for(self.weight_estimator, self.t))

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """``binarize(x)`` with the input estimator's gradient, or ``x`` for real-valued inputs."""
        if self.input_estimator is None:
            return x
        return sign_estimator(x, self.input_estimator, self._o, threshold_for(self.input_estimator, self.t))

    def _binary_repr(self) -> str:
        def name(e):
            return e if isinstance(e, str) or e is None else getattr(e, "__name__", type(e).__name__)

        return (f"weight_estimator={name(self.weight_estimator)}, input_estimator={name(self.input_estimator)}, "
                f"scale={self.scale}, o={self.o:g}, t={'default' if self.t is None else format(self.t, 'g')}")


class BinaryConv2d(BinaryLayer, nn.Conv2d):
    """2-D convolution with binary weights and (by default) binary inputs.

    Args are those of :class:`torch.nn.Conv2d` (``padding_mode`` must be ``"zeros"``), plus
    ``weight_estimator`` / ``input_estimator``: a name (``"reste"``, ``"clipped_ste"``,
    ``"identity_ste"``, ``"approx_sign"``) or a callable; ``input_estimator=None`` keeps real
    inputs. ``scale``: ``"tensor"``, ``"channel"`` or ``"none"``. ``o``, ``t``: estimator
    parameters (``t=None``: each estimator's default, 1.5 for ReSTE, 1 for the clipped STE).
    Input ``(N, C_in, H, W)``, output ``(N, C_out, H_out, W_out)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 weight_estimator: Estimator = "reste", input_estimator: Estimator | None = "reste",
                 scale: str = "tensor", o: float = 1.0, t: float | None = None) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"BinaryConv2d supports padding_mode='zeros' only (padded taps contribute 0), "
                             f"got {padding_mode!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self._init_binary(weight_estimator, input_estimator, scale, o, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


class BinaryLinear(BinaryLayer, nn.Linear):
    """Linear layer with binary weights and (by default) binary inputs.

    Args are those of :class:`torch.nn.Linear` plus the estimator arguments of
    :class:`BinaryConv2d`. Input ``(..., in_features)``, output ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 weight_estimator: Estimator = "reste", input_estimator: Estimator | None = "reste",
                 scale: str = "tensor", o: float = 1.0, t: float | None = None) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(weight_estimator, input_estimator, scale, o, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._binary_repr()}"


def binary_layers(model: nn.Module) -> Iterator[tuple[str, BinaryLayer]]:
    """``(name, module)`` for every binary layer of ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, BinaryLayer):
            yield name, module
