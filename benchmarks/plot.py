"""PNG plots from recorded rows (``benchmarks/results``): speedup per shape, % of the ceilings.

    python -m bnnkit.benchmarks.plot [--results-dir DIR] [--out DIR]

Per device (the latest recorded run of each suite), into ``OUT/<device>/``:

- ``speedup-<suite>-<case>.png``: for each baseline of the case, the speedup of every other
  implementation per shape (grouped bars; 1x marked);
- ``pct-of-ceiling.png``: roofline-style, every non-ceiling row's percentage of the
  nearer roof measured in the same run (copy bandwidth or the matmul peak of its dtype).

Needs matplotlib: ``pip install "bnnkit[plot]"``. The data each plot shows is computed by
:func:`speedup_series` and :func:`ceiling_bars`, which need no matplotlib.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .ceilings import SUITE as CEILINGS_SUITE
from .environment import device_slug
from .recording import default_results_dir, latest_rows, load_results_dir, row_variant


def speedup_series(rows: list[dict]) -> dict[tuple[str, str], dict[str, dict[str, dict[str, float]]]]:
    """``{(suite, case): {baseline: {impl: {shape_label: speedup}}}}`` over rows with ``speedup_vs_*``.

    ``shape_label`` is the shape, plus the dtype and variant (e.g. the pass) when the case
    has several; an implementation is never plotted against itself.
    """
    out: dict[tuple[str, str], dict[str, dict[str, dict[str, float]]]] = {}
    for r in rows:
        if r["suite"] == CEILINGS_SUITE:
            continue
        extras = [str(r.get("dtype", "")), row_variant(r)]
        label = " ".join(x for x in [str(r.get("shape", "")), *extras] if x)
        for key, value in r.items():
            if not key.startswith("speedup_vs_") or value is None:
                continue
            baseline = key.removeprefix("speedup_vs_")
            if baseline == r["impl"]:
                continue
            out.setdefault((r["suite"], r["case"]), {}).setdefault(baseline, {}).setdefault(r["impl"], {})[label] = value
    return out


def ceiling_bars(rows: list[dict]) -> list[tuple[str, float, str]]:
    """``(label, pct_of_ceiling, bound)`` for every non-ceiling row that has a ratio to a ceiling."""
    bars = []
    for r in rows:
        if r["suite"] == CEILINGS_SUITE or r.get("pct_of_ceiling") is None:
            continue
        variant = row_variant(r)
        label = f"{r['suite']}/{r['case']} {r['impl']} {r.get('shape', '')} {r.get('dtype', '')}"
        bars.append((label + (f" ({variant})" if variant else ""), float(r["pct_of_ceiling"]), str(r.get("bound"))))
    return bars


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def plot_device(doc: dict, out_dir: str) -> list[str]:
    """Write the PNGs of one results file into ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = latest_rows(doc["rows"])
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for (suite, case), by_baseline in speedup_series(rows).items():
        fig, axes = plt.subplots(len(by_baseline), 1, figsize=(10, 3.2 * len(by_baseline)), squeeze=False)
        for ax, (baseline, by_impl) in zip(axes[:, 0], by_baseline.items()):
            labels = list(dict.fromkeys(label for series in by_impl.values() for label in series))
            width = 0.8 / len(by_impl)
            for i, (impl, series) in enumerate(by_impl.items()):
                xs = [j + i * width for j, label in enumerate(labels) if label in series]
                ax.bar(xs, [series[label] for label in labels if label in series], width, label=impl)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=20, ha="right",
                          fontsize=7)
            ax.set_ylabel(f"speedup vs {baseline}")
            ax.legend(fontsize=7)
        axes[0, 0].set_title(f"{suite}/{case} on {doc['device']}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"speedup-{_file_part(suite)}-{_file_part(case)}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    bars = ceiling_bars(rows)
    if bars:
        fig, ax = plt.subplots(figsize=(10, 1.5 + 0.22 * len(bars)))
        bounds = sorted({b for _, _, b in bars})
        colors = {b: f"C{i}" for i, b in enumerate(bounds)}
        ax.barh(range(len(bars)), [p for _, p, _ in bars], color=[colors[b] for _, _, b in bars])
        ax.set_yticks(range(len(bars)), [label for label, _, _ in bars], fontsize=6)
        ax.invert_yaxis()
        ax.axvline(100.0, color="black", linewidth=0.8)
        ax.set_xlabel("% of the nearer measured ceiling (color: which roof)")
        ax.set_title(f"% of ceiling on {doc['device']}")
        for b in bounds:
            ax.bar(0, 0, color=colors[b], label=b)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, "pct-of-ceiling.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnkit.benchmarks.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results of this checkout")
    parser.add_argument("--out", default=None, help="default: RESULTS_DIR/plots")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('plot: error: matplotlib is not installed; pip install "bnnkit[plot]"', file=sys.stderr)
        return 2
    try:
        results_dir = args.results_dir or default_results_dir()
        docs = load_results_dir(results_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(results_dir, "plots")
    for doc in docs:
        paths = plot_device(doc, os.path.join(out, device_slug(doc["device"])))
        print("\n".join(paths) if paths else f"{doc['device']}: nothing to plot (no speedups and no rows besides "
                                                "the ceilings recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
