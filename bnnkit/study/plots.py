"""The estimator study's figures, from a record (needs matplotlib: ``pip install "bnnkit[plot]"``).

- ``estimators-accuracy.png``: per model, the best and the final test accuracy of every seed
  for each estimator, with the mean and one standard deviation.
- ``estimators-tradeoff.png``: per model, ReSTE's estimating error against its gradient
  stability over training (medians over seeds, one point per epoch: one seed's unstable epoch
  would dominate a mean), one curve per o_end: the paper's trade-off figure.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from bnnkit.artifacts import atomic_path

from .estimators import StudySpec, runs_of

ACCURACY_PNG = "estimators-accuracy.png"
TRADEOFF_PNG = "estimators-tradeoff.png"


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError('the study plots need matplotlib: pip install "bnnkit[plot]"') from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epoch_medians(runs: list[dict[str, Any]], field: str) -> list[float]:
    """The median over ``runs`` of ``field`` at each epoch."""
    return [statistics.median(values) for values in zip(*(r["epochs"][field] for r in runs))]


def _save(plt, fig, path: str) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def accuracy_figure(record: dict[str, Any], path: str) -> str:
    plt = _pyplot()
    spec = StudySpec.from_json(record["spec"])
    arms = spec.arms()
    fig, axes = plt.subplots(1, len(spec.models), figsize=(5.5 * len(spec.models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], spec.models):
        for i, arm in enumerate(arms):
            runs = runs_of(record, model, arm)
            for offset, key, marker, color in ((-0.15, "best_test_acc", "o", "tab:blue"),
                                               (0.15, "final_test_acc", "s", "tab:orange")):
                values = [100 * r[key] for r in runs]
                if not values:
                    continue
                ax.scatter([i + offset] * len(values), values, s=14, marker=marker, color=color, alpha=0.55,
                           label=("best" if key.startswith("best") else "final") if i == 0 else None)
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                ax.errorbar(i + offset + 0.08, statistics.fmean(values), yerr=std, fmt="_", color=color, capsize=3)
        labels = [a.label.replace(" o_end=", "\no=").replace(" t=", "\nt=") for a in arms]
        ax.set_xticks(range(len(arms)), labels, fontsize=8)
        ax.set_title(f"{model}: test accuracy over {spec.seeds} seeds")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return _save(plt, fig, path)


def tradeoff_figure(record: dict[str, Any], path: str) -> str:
    plt = _pyplot()
    spec = StudySpec.from_json(record["spec"])
    arms = [a for a in spec.arms() if a.estimator == "reste"]
    fig, axes = plt.subplots(1, len(spec.models), figsize=(5.5 * len(spec.models), 4.2), squeeze=False)
    colors = plt.get_cmap("viridis")
    for ax, model in zip(axes[0], spec.models):
        for i, arm in enumerate(arms):
            runs = runs_of(record, model, arm)
            if not runs:
                continue
            error, stability = epoch_medians(runs, "estimating_error"), epoch_medians(runs, "gradient_stability")
            color = colors(i / max(len(arms) - 1, 1))
            ax.plot(stability, error, "-o", markersize=2.5, color=color, label=f"o_end = {arm.o_end:g}")
            ax.plot(stability[-1], error[-1], "*", markersize=11, color=color)
        ax.set_xscale("log")
        ax.set_xlabel("gradient stability: sum of var(|grad w|) (log)")
        ax.set_ylabel("estimating error: sum of ||f_o_end(w) - sign(w)||")
        ax.set_title(f"{model}: ReSTE over training (median of {spec.seeds} seeds; star: last epoch)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def write_plots(record: dict[str, Any], out_dir: str) -> list[str]:
    """Write both figures into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [accuracy_figure(record, os.path.join(out_dir, ACCURACY_PNG))]
    if any(a.estimator == "reste" for a in StudySpec.from_json(record["spec"]).arms()):
        paths.append(tradeoff_figure(record, os.path.join(out_dir, TRADEOFF_PNG)))
    return paths
