"""How two runtimes' outputs are compared: difference, top-1 agreement, the tolerance.

The relative difference is ``max |candidate - reference| / max |reference|`` over the whole
batch: relative to the scale of the outputs (an elementwise ratio is meaningless for logits
near 0). Top-1 agreement compares ``argmax`` over the last dim per sample.
"""

from __future__ import annotations

import dataclasses

import torch

#: The default bound on the relative difference in float32.
RELATIVE_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One candidate against the reference on the same inputs.

    ``first_disagreement``: index of the first sample whose top-1 differs or whose own relative
    difference exceeds the tolerance, ``None`` when all agree.
    """

    samples: int
    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    first_disagreement: int | None
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.first_disagreement is None and self.rel_diff <= self.tolerance

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}


def _as_float(t, what: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {t.dtype}")
    return t.detach().to("cpu", torch.float64)


def compare_outputs(reference, candidate, tolerance: float = RELATIVE_TOLERANCE) -> Comparison:
    """Compare ``candidate`` with ``reference`` (tensors or arrays ``(N, ...)`` of the same shape;
    top-1 over the last dim). A NaN anywhere in the candidate counts as a disagreement."""
    ref = _as_float(reference, "reference output")
    cand = _as_float(candidate, "candidate output")
    if ref.shape != cand.shape:
        raise ValueError(f"outputs differ in shape: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}")
    if ref.dim() == 0 or ref.shape[0] == 0:
        raise ValueError(f"outputs need a non-empty batch dim, got shape {tuple(ref.shape)}")
    n = ref.shape[0]
    diff = (cand - ref).abs().nan_to_num(nan=float("inf")).reshape(n, -1)
    scale = ref.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    per_sample_bad = diff.amax(dim=1) > tolerance * scale
    if ref.dim() >= 2:
        same_top1 = ref.argmax(dim=-1) == cand.nan_to_num(nan=-float("inf")).argmax(dim=-1)
        same_top1 = same_top1.reshape(n, -1).all(dim=1)
    else:
        same_top1 = torch.ones(n, dtype=torch.bool)
    bad = per_sample_bad | ~same_top1
    first = int(bad.nonzero()[0, 0]) if bad.any() else None
    max_abs = float(diff.max())
    return Comparison(samples=n, max_abs_diff=max_abs, rel_diff=max_abs / float(scale),
                      top1_agreement=float(same_top1.double().mean()), first_disagreement=first,
                      tolerance=tolerance)
