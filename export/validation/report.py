"""Cross-runtime validation of an export directory: every runtime against the trained model.

:func:`validate` (or :func:`validate_artifact`, which reads the trained model from the export
directory) runs the reference, the trained model in float64 (:mod:`.reference`), and each
runtime of :data:`~bnnkit.export.validation.runtimes.RUNTIMES` on the same inputs, batch by
batch, and compares the outputs (:mod:`.compare`): max abs / relative difference, top-1
agreement, flips at near-ties, accuracy when labels are given, and the median latency per
batch (after one warm-up batch). A runtime fails when it disagrees on a sample that no
near-tie explains, or when its files exist but do not load or run; a runtime whose files or
provider are absent is skipped, unless it was asked for by name.

Without a trained model (an export of a model outside the zoo, validated from the command
line), the packed model is the reference of the other runtimes, and the report says so.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from torch import nn

from .compare import RELATIVE_TOLERANCE, Comparison, compare_outputs
from .reference import NEAR_TIE_MARGIN, Float64Reference
from .runtimes import REFERENCE, RUNTIMES, RuntimeUnavailable, load_trained_model


@dataclasses.dataclass
class RuntimeResult:
    """One runtime's row. ``status``: ``reference``, ``ok``, ``mismatch``, ``error`` or ``skipped``."""

    runtime: str
    status: str
    device: str | None = None
    detail: str | None = None
    comparison: Comparison | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    message: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "error")

    def to_json(self) -> dict[str, Any]:
        row = dataclasses.asdict(self)
        row["comparison"] = None if self.comparison is None else self.comparison.to_json()
        return row


@dataclasses.dataclass
class ValidationReport:
    """What :func:`validate` found. ``reference``: the runtime the others are compared with
    (``"trained"``, the trained model in float64, or ``"packed"`` when there is no trained
    model); ``reference_note``: why, when it is not the trained model."""

    artifact_dir: str
    data: str
    samples: int
    batch_size: int
    tolerance: float
    results: list[RuntimeResult]
    reference: str = REFERENCE
    reference_note: str | None = None
    near_tie_margin: float | None = NEAR_TIE_MARGIN

    @property
    def ok(self) -> bool:
        """No runtime failed and at least one ran besides the reference."""
        return not any(r.failed for r in self.results) and any(r.status == "ok" for r in self.results)

    def failures(self) -> list[str]:
        """One line per failed runtime, naming it and the first disagreeing sample."""
        lines = []
        for r in self.results:
            if r.status == "mismatch":
                c = r.comparison
                ties = " no near-tie explains it;" if self.near_tie_margin is not None else ""
                lines.append(f"{r.runtime} disagrees with {self.reference}: first disagreeing sample "
                             f"{c.first_disagreement} (relative difference {c.rel_diff:.3g}, tolerance "
                             f"{c.tolerance:g};{ties} top-1 agreement {c.top1_agreement:.2%})")
            elif r.status == "error":
                lines.append(f"{r.runtime} failed: {r.message}")
        if not any(r.status == "ok" for r in self.results) and not lines:
            lines.append(f"no runtime to compare with the {self.reference} model ran: "
                         + "; ".join(f"{r.runtime}: {r.message}" for r in self.results if r.status == "skipped"))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"artifact_dir": self.artifact_dir, "data": self.data, "samples": self.samples,
                "batch_size": self.batch_size, "tolerance": self.tolerance, "reference": self.reference,
                "reference_note": self.reference_note, "near_tie_margin": self.near_tie_margin, "ok": self.ok,
                "failures": self.failures(), "runtimes": [r.to_json() for r in self.results]}

    def to_text(self) -> str:
        what = "the trained model in float64" if self.reference == REFERENCE else f"the {self.reference} model"
        head = (f"{self.artifact_dir}: {self.samples} samples of {self.data}, batch {self.batch_size}; "
                f"differences are to {what}, relative to its largest |output| (tolerance {self.tolerance:g})")
        if self.reference_note:
            head += f"\n{self.reference_note}"
        columns = ["runtime", "device", "max abs diff", "rel diff", "top-1 agree", "tie flips", "accuracy", "ms/batch",
                   "status"]
        rows, flips = [], []
        for r in self.results:
            c = r.comparison
            rows.append([r.runtime, r.device or "-",
                         "-" if c is None else f"{c.max_abs_diff:.3g}", "-" if c is None else f"{c.rel_diff:.3g}",
                         "-" if c is None else f"{c.top1_agreement:.2%}",
                         "-" if c is None else str(len(c.tie_flips)),
                         "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                         "-" if r.latency_ms is None else f"{r.latency_ms:.3f}",
                         r.status + (f": {r.message}" if r.message and r.status != "ok" else "")])
            flips += [f"{r.runtime}: {flip.describe()}" for flip in (c.tie_flips if c is not None else ())]
        widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        if flips:
            lines.append(f"flips at near-ties (binarization inputs within {self.near_tie_margin:g} of their layer "
                         "input's largest |value|; not errors):")
            lines += [f"  {line}" for line in flips]
        return "\n".join(lines)


def _run_batches(runtime, inputs: torch.Tensor, batch_size: int, warmup: bool = True) -> tuple[torch.Tensor, float]:
    """Outputs of all batches and the median ms per batch (after one warm-up batch, not timed)."""
    batches = list(inputs.split(batch_size))
    if warmup:
        runtime.run(batches[0])
    outputs, times = [], []
    for batch in batches:
        t0 = time.perf_counter()
        outputs.append(runtime.run(batch))
        times.append((time.perf_counter() - t0) * 1e3)
    return torch.cat(outputs), statistics.median(times)


def _accuracy(outputs: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    if labels is None or outputs.dim() != 2:
        return None
    return float((outputs.argmax(dim=1) == labels).double().mean())


def validate(model: nn.Module | None, artifact_dir: str, inputs: torch.Tensor, labels: torch.Tensor | None = None,
             *, runtimes: list[str] | None = None, batch_size: int = 64, tolerance: float = RELATIVE_TOLERANCE,
             data: str = "inputs") -> ValidationReport:
    """Compare the runtimes of ``artifact_dir`` with the trained ``model`` on ``inputs``.

    Args:
        model: the trained model (any ``nn.Module``, e.g. one you packed yourself); it is
            evaluated in float64, in eval mode, on a copy. ``None``: the model in
            ``ARTIFACT_DIR/trained`` (what ``bnnkit export`` writes); when there is none, the
            packed model is the reference of the other runtimes (no near-tie analysis).
        artifact_dir: the directory holding the packed artifact (``pack(model).save(dir)``)
            and/or ``model.onnx`` (``to_onnx(model, dir + "/model.onnx", x)``).
        inputs: float ``(N, ...)``; ``labels``: ``(N,)`` int64 or ``None`` (for accuracy).
        runtimes: names from :data:`RUNTIMES` (default: all, skipping those whose files or
            providers are absent; a named one that is absent fails).
        tolerance: the largest relative difference accepted on a sample.
    """
    if runtimes is not None:
        unknown = [r for r in runtimes if r not in RUNTIMES]
        if unknown:
            raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; choose from {', '.join(RUNTIMES)}")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 2 or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty floating-point tensor (N, ...)")
    if labels is not None and labels.shape != (len(inputs),):
        raise ValueError(f"labels must have shape ({len(inputs)},), got {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be the trained nn.Module (or None), got {type(model).__name__}")
    artifact_dir = str(artifact_dir)
    inputs = inputs.detach().to("cpu", torch.float32)
    candidates = list(runtimes) if runtimes is not None else list(RUNTIMES)

    note = None
    if model is None:
        try:
            model = load_trained_model(artifact_dir)
        except RuntimeUnavailable as e:
            note = f"{e}: the packed model is the reference (no trained model, so no near-tie analysis)"
    results: list[RuntimeResult] = []
    if model is not None:
        reference = Float64Reference(model)
        reference_name, margin = REFERENCE, reference.margin
        explain = reference.explain
    else:
        reference_name, margin, explain = "packed", None, None
        try:
            reference = RUNTIMES["packed"](artifact_dir)
        except RuntimeUnavailable as e:
            raise FileNotFoundError(f"nothing to validate {artifact_dir!r} against: no trained model ({note}) and "
                                    f"{e}; pass the trained model to validate(model, ...)") from None
        candidates = [c for c in candidates if c != "packed"]
    # the float64 reference records each sample's near-ties as it runs: no warm-up batch
    expected, ref_ms = _run_batches(reference, inputs, batch_size, warmup=model is None)
    results.append(RuntimeResult(reference_name, "reference", str(reference.device), reference.detail,
                                 accuracy=_accuracy(expected, labels), latency_ms=ref_ms))
    for name in candidates:
        try:
            runtime = RUNTIMES[name](artifact_dir)
        except RuntimeUnavailable as e:
            status = "error" if runtimes is not None else "skipped"
            results.append(RuntimeResult(name, status, message=str(e)))
            continue
        except Exception as e:  # a present but unreadable file fails the validation
            results.append(RuntimeResult(name, "error", message=f"{type(e).__name__}: {e}"))
            continue
        try:
            outputs, ms = _run_batches(runtime, inputs, batch_size)
            comparison = compare_outputs(expected, outputs, tolerance, explain=explain)
        except Exception as e:
            results.append(RuntimeResult(name, "error", str(runtime.device), runtime.detail,
                                         message=f"{type(e).__name__}: {e}"))
            continue
        results.append(RuntimeResult(name, "ok" if comparison.ok else "mismatch", str(runtime.device), runtime.detail,
                                     comparison, _accuracy(outputs, labels), ms))
    return ValidationReport(artifact_dir, data, len(inputs), batch_size, tolerance, results,
                            reference=reference_name, reference_note=note, near_tie_margin=margin)


def validate_artifact(artifact_dir: str, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
                      runtimes: list[str] | None = None, batch_size: int = 64,
                      tolerance: float = RELATIVE_TOLERANCE, data: str = "inputs") -> ValidationReport:
    """:func:`validate` with the trained model of ``ARTIFACT_DIR/trained`` (``bnnkit export``)."""
    return validate(None, artifact_dir, inputs, labels, runtimes=runtimes, batch_size=batch_size,
                    tolerance=tolerance, data=data)
