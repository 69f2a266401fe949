"""Training curves of one or more runs as one PNG (``bnnkit plot``).

Six panels, per epoch (counted from 1, as the console does) from each run's
``metrics.jsonl``: loss and accuracy (train solid, test dashed, the best test accuracy
marked), the learning rate, ReSTE's o, and the paper's two indicators, estimating error and
gradient stability. Several runs share the panels, one color each, to compare estimators or
seeds. Needs matplotlib (``pip install "bnnkit[plot]"``); :func:`read_metrics` and
:func:`run_curves` do not.
"""

from __future__ import annotations

import json
import os
from typing import Any

from bnnkit.artifacts import ArtifactError, atomic_path, check_writable, read_json

METRICS_FILE = "metrics.jsonl"
MAX_METRICS_BYTES = 256 << 20

#: (panel title, [(metrics.jsonl key, line style)]) in reading order, two rows of three.
PANELS = (
    ("loss (cross-entropy)", [("train_loss", "-"), ("test_loss", "--")]),
    ("accuracy", [("train_acc", "-"), ("test_acc", "--")]),
    ("learning rate", [("lr", "-")]),
    ("o (ReSTE)", [("o", "-")]),
    ("estimating error", [("estimating_error", "-")]),
    ("gradient stability", [("gradient_stability", "-")]),
)
KEYS = tuple(key for _, series in PANELS for key, _ in series)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl``, one per finished epoch, in epoch order.

    Raises ``FileNotFoundError`` for a directory without the file, :class:`ArtifactError`
    naming the line for one that is not a JSON object with the plotted keys, and
    ``ValueError`` for a run without a finished epoch.
    """
    from bnnkit.reading import read_regular

    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{run_dir!r} has no {METRICS_FILE}: not a training run (bnnkit train --out DIR)")
    try:
        text = read_regular(path, "metrics file", max_bytes=MAX_METRICS_BYTES).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path}: not UTF-8 text ({e})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:
            reason = "nested too deeply" if isinstance(e, RecursionError) else f"not valid JSON ({e})"
            raise ArtifactError(f"{path}, line {number}: {reason}") from None
        missing = [k for k in ("epoch", *KEYS) if not isinstance(row, dict) or k not in row]
        if missing:
            raise ArtifactError(f"{path}, line {number}: lacks {', '.join(missing)}")
        bad = [k for k in KEYS if not _is_number_or_none(row[k])]
        if type(row["epoch"]) is not int or not 0 <= row["epoch"] <= 2**53:
            bad.insert(0, "epoch")
        if bad:
            raise ArtifactError(f"{path}, line {number}: {', '.join(bad)} must be numbers")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no finished epoch yet")
    return sorted(rows, key=lambda r: r["epoch"])


def _is_number_or_none(v: Any) -> bool:
    if type(v) is int:
        return abs(v) <= 2**53
    return v is None or type(v) is float


def run_curves(run_dir: str) -> dict[str, list[float]]:
    """``{"epoch": [1, 2, ...], key: [value per epoch]}`` for every plotted key (``None`` -> NaN)."""
    rows = read_metrics(run_dir)
    curves = {"epoch": [r["epoch"] + 1 for r in rows]}
    for key in KEYS:
        curves[key] = [float("nan") if r[key] is None else float(r[key]) for r in rows]
    return curves


def run_labels(run_dirs: list[str]) -> list[str]:
    """Short distinct names: the directories' base names, or their paths below the common
    parent when two share a base name."""
    names = [os.path.basename(os.path.normpath(d)) or d for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
    return [os.path.relpath(os.path.abspath(d), common) if os.path.abspath(d) != common else d for d in run_dirs]


def _title(run_dirs: list[str]) -> str:
    if len(run_dirs) > 1:
        return f"{len(run_dirs)} training runs"
    config_path = os.path.join(run_dirs[0], "config.json")
    if os.path.isfile(config_path):
        try:
            config = read_json(config_path, "run config")
            return f"{config['model']} on {config['train']['dataset']} ({run_dirs[0]})"
        except (ArtifactError, KeyError, TypeError):
            pass
    return run_dirs[0]


def plot_runs(run_dirs: list[str], out: str, *, title: str | None = None, dpi: int = 100) -> str:
    """Draw the curves of ``run_dirs`` into the PNG file ``out`` (written atomically); returns ``out``."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if not out.lower().endswith(".png"):
        raise ValueError(f"the output file must end with .png, got {out!r}")
    check_writable(out, "the output file", directory=False)  # before any work, not after the drawing
    curves = [run_curves(d) for d in run_dirs]  # every run is read before anything is drawn
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError('bnnkit plot needs matplotlib: pip install "bnnkit[plot]" '
                          '(from a clone: pip install -e ".[plot]")') from None

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=dpi)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = run_labels(run_dirs)
    for (panel, series), ax in zip(PANELS, axes.flat):
        for run, (label, c) in enumerate(zip(labels, curves)):
            color = colors[run % len(colors)]
            for key, style in series:
                split = key.split("_")[0] if len(series) > 1 else ""
                name = split if len(run_dirs) == 1 else f"{label} {split}".strip()
                ax.plot(c["epoch"], c[key], style, color=color, label=name, linewidth=1.5)
            if panel == "accuracy":
                best = max(range(len(c["test_acc"])), key=lambda i: (c["test_acc"][i], -i))
                ax.plot([c["epoch"][best]], [c["test_acc"][best]], "o", color=color, markersize=5)
        ax.set_title(panel)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if len(series) > 1 or len(run_dirs) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title or _title(run_dirs))
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return out
