"""How two runtimes' outputs are compared: difference, top-1 agreement, the tolerance.

The relative difference is ``max |candidate - reference| / max |reference|`` over the whole
batch: relative to the scale of the outputs (an elementwise ratio is meaningless for logits
near 0). Top-1 agreement compares ``argmax`` over the last dim per sample. A sample
*disagrees* when its top-1 differs or its own ``max |candidate - reference|`` exceeds the
tolerance times that scale. With ``explain`` (see :mod:`.reference`), a disagreeing sample
that a flip at a near-tie explains is counted as a tie flip instead; the differences
reported are then those of the other samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .reference import TieFlip

#: The default bound on the relative difference in float32.
RELATIVE_TOLERANCE = 1e-4

#: ``explain(sample, candidate_row, reference_row, scale, tolerance) -> TieFlip | None``
Explainer = Callable[[int, torch.Tensor, torch.Tensor, float, float], TieFlip | None]


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One candidate against the reference on the same inputs.

    ``first_disagreement``: index of the first sample that disagrees and that no near-tie
    explains, ``None`` when there is none. ``disagreements``: samples that disagree (tie flips
    included; when an unexplained one is found, the samples after it are not examined).
    ``tie_flips``: the disagreements explained by near-ties. ``max_abs_diff`` / ``rel_diff``
    are over the samples that are not tie flips.
    """

    samples: int
    max_abs_diff: float
    rel_diff: float
    top1_agreement: float
    first_disagreement: int | None
    tolerance: float
    disagreements: int = 0
    tie_flips: tuple[TieFlip, ...] = ()

    @property
    def ok(self) -> bool:
        return self.first_disagreement is None and self.rel_diff <= self.tolerance

    def to_json(self) -> dict:
        row = dataclasses.asdict(self)
        row["tie_flips"] = [t.to_json() for t in self.tie_flips]
        return {**row, "ok": self.ok}


def _as_float(t, what: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        raise TypeError(f"{what} must be floating point, got {t.dtype}")
    return t.detach().to("cpu", torch.float64)


def compare_outputs(reference, candidate, tolerance: float = RELATIVE_TOLERANCE, *,
                    explain: Explainer | None = None) -> Comparison:
    """Compare ``candidate`` with ``reference`` (tensors or arrays ``(N, ...)`` of the same shape;
    top-1 over the last dim). A NaN anywhere in the candidate counts as a disagreement.
    ``explain``: tries to explain a disagreeing sample by a near-tie flip."""
    ref = _as_float(reference, "reference output")
    cand = _as_float(candidate, "candidate output")
    if ref.shape != cand.shape:
        raise ValueError(f"outputs differ in shape: reference {tuple(ref.shape)}, candidate {tuple(cand.shape)}")
    if ref.dim() == 0 or ref.shape[0] == 0:
        raise ValueError(f"outputs need a non-empty batch dim, got shape {tuple(ref.shape)}")
    n = ref.shape[0]
    diff = (cand - ref).abs().nan_to_num(nan=float("inf")).reshape(n, -1).amax(dim=1)
    scale = float(ref.abs().max().clamp_min(torch.finfo(torch.float32).tiny))
    if ref.dim() >= 2:
        same_top1 = ref.argmax(dim=-1) == cand.nan_to_num(nan=-float("inf")).argmax(dim=-1)
        same_top1 = same_top1.reshape(n, -1).all(dim=1)
    else:
        same_top1 = torch.ones(n, dtype=torch.bool)
    bad = (diff > tolerance * scale) | ~same_top1
    first, flips, examined = None, [], n
    for i in torch.nonzero(bad).flatten().tolist():
        flip = explain(i, cand[i], ref[i], scale, tolerance) if explain is not None else None
        if flip is None:
            first, examined = i, i + 1
            break
        flips.append(flip)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[[f.sample for f in flips]] = True
    kept = diff[~flipped]
    max_abs = float(kept.max()) if len(kept) else 0.0
    return Comparison(samples=n, max_abs_diff=max_abs, rel_diff=max_abs / scale,
                      top1_agreement=float(same_top1.double().mean()), first_disagreement=first,
                      tolerance=tolerance, disagreements=int(bad[:examined].sum()), tie_flips=tuple(flips))
