"""A baseline only: ReSTE's quantizer written the way the paper's public training code writes it.

``torch.sign`` in the forward (so sign(0) = 0 here, unlike bnnkit) and a backward that builds
the slope by masked index writes into a zero tensor, one boolean mask and one gather/scatter
per branch. The benchmarks measure bnnkit's kernels against it; nothing else uses it.
"""

from __future__ import annotations

import torch

from bnnkit.kernels.sign_grad import RESTE_M


def _power(x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    """``sign(x) * |x|^(1/o)``, the function whose derivative ReSTE uses."""
    return torch.sign(x) * torch.pow(torch.abs(x), 1 / o)


class ReferenceStyleReste(torch.autograd.Function):
    """``y = torch.sign(x)``; backward: ReSTE's slope assembled branch by branch with masked writes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, t: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, t, o)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, t, o = ctx.saved_tensors
        m = RESTE_M
        slope = torch.zeros_like(x)
        upper = (x <= t) & (x > m)
        slope[upper] = (1 / o) * torch.pow(x[upper], (1 - o) / o)
        lower = (x >= -t) & (x < -m)
        slope[lower] = (1 / o) * torch.pow(-x[lower], (1 - o) / o)
        slope[(x <= m) & (x >= 0)] = _power(torch.tensor(m, device=x.device), o) / m
        slope[(x <= 0) & (x >= -m)] = -_power(torch.tensor(-m, device=x.device), o) / m
        return slope * grad_output.clone(), None, None


def reference_style_reste(x: torch.Tensor, o: float, t: float = 1.5) -> torch.Tensor:
    """Apply :class:`ReferenceStyleReste` with ``o`` and ``t`` held as tensors, as that code does."""
    return ReferenceStyleReste.apply(x, torch.tensor(t, device=x.device), torch.tensor(o, device=x.device))
