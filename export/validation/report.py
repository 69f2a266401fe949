"""Cross-runtime validation of an export directory: every runtime against the trained model.

:func:`validate_artifact` runs the reference (``trained``) and each other runtime of
:data:`bnnkit.export.validation.runtimes.RUNTIMES` on the same inputs, batch by batch, and compares the
outputs (:mod:`bnnkit.export.validation.compare`): max abs / relative difference, top-1 agreement,
accuracy when labels are given, and the median latency per batch (after one warm-up batch).
A runtime fails when it disagrees beyond the tolerance, or when its files exist but do not
load or run; a runtime whose files or provider are absent is skipped, unless it was asked
for by name.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from .compare import RELATIVE_TOLERANCE, Comparison, compare_outputs
from .runtimes import REFERENCE, RUNTIMES, RuntimeUnavailable


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
    artifact_dir: str
    data: str
    samples: int
    batch_size: int
    tolerance: float
    results: list[RuntimeResult]

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
                lines.append(f"{r.runtime} disagrees with {REFERENCE}: first disagreeing sample {c.first_disagreement} "
                             f"(relative difference {c.rel_diff:.3g}, tolerance {c.tolerance:g}; top-1 agreement "
                             f"{c.top1_agreement:.2%})")
            elif r.status == "error":
                lines.append(f"{r.runtime} failed: {r.message}")
        if not any(r.status == "ok" for r in self.results) and not lines:
            lines.append("no runtime to compare with the trained model ran: "
                         + "; ".join(f"{r.runtime}: {r.message}" for r in self.results if r.status == "skipped"))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"artifact_dir": self.artifact_dir, "data": self.data, "samples": self.samples,
                "batch_size": self.batch_size, "tolerance": self.tolerance, "reference": REFERENCE, "ok": self.ok,
                "failures": self.failures(), "runtimes": [r.to_json() for r in self.results]}

    def to_text(self) -> str:
        head = (f"{self.artifact_dir}: {self.samples} samples of {self.data}, batch {self.batch_size}; "
                f"differences are to the {REFERENCE} model, relative to its largest |output| "
                f"(tolerance {self.tolerance:g})")
        columns = ["runtime", "device", "max abs diff", "rel diff", "top-1 agree", "accuracy", "ms/batch", "status"]
        rows = []
        for r in self.results:
            c = r.comparison
            rows.append([r.runtime, r.device or "-",
                         "-" if c is None else f"{c.max_abs_diff:.3g}", "-" if c is None else f"{c.rel_diff:.3g}",
                         "-" if c is None else f"{c.top1_agreement:.2%}",
                         "-" if r.accuracy is None else f"{r.accuracy:.2%}",
                         "-" if r.latency_ms is None else f"{r.latency_ms:.3f}",
                         r.status + (f": {r.message}" if r.message and r.status != "ok" else "")])
        widths = [max(len(str(x)) for x in col) for col in zip(columns, *rows)]
        lines = [head, "  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
        lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines)


def _run_batches(runtime, inputs: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, float]:
    """Outputs of all batches and the median ms per batch (one warm-up batch not timed)."""
    batches = list(inputs.split(batch_size))
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


def validate_artifact(artifact_dir: str, inputs: torch.Tensor, labels: torch.Tensor | None = None, *,
                      runtimes: list[str] | None = None, batch_size: int = 64,
                      tolerance: float = RELATIVE_TOLERANCE, data: str = "inputs") -> ValidationReport:
    """Compare the runtimes of ``artifact_dir`` on ``inputs`` (float ``(N, ...)``; ``labels``
    ``(N,)`` int64 or None).

    ``runtimes``: names from :data:`RUNTIMES` to compare with the trained model (default: all,
    skipping those whose files or providers are absent; a named one that is absent fails).
    """
    if runtimes is not None:
        unknown = [r for r in runtimes if r not in RUNTIMES or r == REFERENCE]
        if unknown:
            raise ValueError(f"unknown runtime(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(r for r in RUNTIMES if r != REFERENCE)}")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 2 or len(inputs) == 0:
        raise ValueError("inputs must be a non-empty floating-point tensor (N, ...)")
    if labels is not None and labels.shape != (len(inputs),):
        raise ValueError(f"labels must have shape ({len(inputs)},), got {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = inputs.detach().to("cpu", torch.float32)
    candidates = runtimes if runtimes is not None else [r for r in RUNTIMES if r != REFERENCE]

    reference = RUNTIMES[REFERENCE](artifact_dir)
    expected, ref_ms = _run_batches(reference, inputs, batch_size)
    results = [RuntimeResult(REFERENCE, "reference", str(reference.device), reference.detail,
                             accuracy=_accuracy(expected, labels), latency_ms=ref_ms)]
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
            comparison = compare_outputs(expected, outputs, tolerance)
        except Exception as e:
            results.append(RuntimeResult(name, "error", str(runtime.device), runtime.detail,
                                         message=f"{type(e).__name__}: {e}"))
            continue
        results.append(RuntimeResult(name, "ok" if comparison.ok else "mismatch", str(runtime.device), runtime.detail,
                                     comparison, _accuracy(outputs, labels), ms))
    return ValidationReport(artifact_dir, data, len(inputs), batch_size, tolerance, results)
