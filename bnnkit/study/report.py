"""Statistics over seeds and the README's study table, generated from a record only.

    python -m bnnkit.study.report [--record FILE] [--readme README.md] [--check]

(or ``bnnkit study readme``) rewrites the text between ``<!-- study-table -->`` and
``<!-- /study-table -->`` in the README from the recorded estimator study
(``benchmarks/results/studies/estimators.json``). ``--check`` changes nothing and exits 1
when the README is out of date.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from typing import Any

from bnnkit.artifacts import ArtifactError

from .estimators import RECORD_FILE, Arm, StudySpec, read_record

BEGIN = "<!-- study-table -->"
END = "<!-- /study-table -->"


def default_record_path() -> str:
    """``benchmarks/results/studies/estimators.json`` of the source checkout bnnkit runs from."""
    from bnnkit.benchmarks.recording import default_results_dir

    return os.path.join(default_results_dir(), "studies", RECORD_FILE)


def spread(values: list[float]) -> dict[str, float]:
    """``mean``, ``std`` (sample, n - 1; NaN for one value), ``min``, ``max``."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else math.nan,
            "min": min(values), "max": max(values)}


def summarize(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, arm), in the spec's order: the seeds, the final and best test
    accuracy over seeds (:func:`spread`), the run's mean estimating error and total gradient
    stability averaged over seeds, and the median of the per-epoch gradient stability over
    all seeds and epochs (robust to the single epochs whose last step has a huge variance)."""
    spec = StudySpec.from_json(record["spec"])
    rows = []
    for model in spec.models:
        for arm in spec.arms():
            runs = [r for r in record["runs"] if r["model"] == model and Arm(r["estimator"], r["o_end"]) == arm]
            if not runs:
                continue
            rows.append({
                "model": model, "arm": arm, "seeds": len(runs),
                "final": spread([r["final_test_acc"] for r in runs]),
                "best": spread([r["best_test_acc"] for r in runs]),
                "mean_estimating_error": statistics.fmean(r["mean_estimating_error"] for r in runs),
                "total_gradient_stability": statistics.fmean(r["total_gradient_stability"] for r in runs),
                "median_gradient_stability": statistics.median(
                    v for r in runs for v in r["epochs"]["gradient_stability"]),
            })
    return rows


def _pct(s: dict[str, float]) -> str:
    std = "" if math.isnan(s["std"]) else f" ± {100 * s['std']:.2f}"
    return f"{100 * s['mean']:.2f}{std} ({100 * s['min']:.2f}-{100 * s['max']:.2f})"


def table(record: dict[str, Any]) -> str:
    """The Markdown table of :func:`summarize`."""
    lines = ["| model | estimator | final test acc. % | best test acc. % | mean est. error | total grad. stability "
             "| grad. stability, median epoch |",
             "|---|---|---|---|---|---|---|"]
    for r in summarize(record):
        lines.append(f"| {r['model']} | {r['arm'].label} | {_pct(r['final'])} | {_pct(r['best'])} "
                     f"| {r['mean_estimating_error']:.3g} | {r['total_gradient_stability']:.3g} "
                     f"| {r['median_gradient_stability']:.3g} |")
    return "\n".join(lines) + "\n"


def section(record: dict[str, Any]) -> str:
    """What goes between the README markers: where and how it was measured, then the table."""
    spec = StudySpec.from_json(record["spec"])
    versions = ", ".join(f"{lib} {record[lib]}" for lib in ("torch", "python") if record.get(lib))
    load = f", load average {record['load_avg']:g} at the start" if record.get("load_avg") is not None else ""
    warmup = f"{spec.warmup_epochs}-epoch warm-up, " if spec.warmup_epochs else ""
    return (f"**{record['device']}** ({record['device_type']}, {record['jobs']} runs at a time, "
            f"{record['threads_per_job']} thread each{load}), measured {record['date'][:10]} at commit "
            f"{record['commit'][:10]}; {versions}; {len(record['runs'])} runs in {record['wall_s'] / 60:.1f} min. "
            f"Recipe: {spec.epochs} epoch{'s' if spec.epochs > 1 else ''} of batch {spec.batch_size}, SGD lr {spec.lr:g} (momentum "
            f"{spec.momentum:g}, weight decay {spec.weight_decay:g}), {warmup}{spec.lr_schedule} lr schedule, "
            f"t = {spec.t:g}; seeds 0-{spec.seeds - 1}. Accuracy: mean ± std (min-max) over seeds; the run's mean "
            f"estimating error and total gradient stability: means over seeds; the last column: median over seeds "
            f"and epochs.\n\n" + table(record))


def replace_section(readme: str, body: str) -> str:
    from bnnkit.benchmarks.readme_table import replace_section as replace

    return replace(readme, body, begin=BEGIN, end=END)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnkit.study.report", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", default=None, help="default: benchmarks/results/studies/estimators.json")
    parser.add_argument("--readme", default=None, help="default: README.md of this checkout")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's study table is out of date")


def run(args: argparse.Namespace) -> int:
    from bnnkit.benchmarks.environment import REPO_ROOT

    readme_path = args.readme or os.path.join(REPO_ROOT, "README.md")
    try:
        record = read_record(args.record or default_record_path())
        with open(readme_path) as f:
            readme = f.read()
        updated = replace_section(readme, section(record))
    except (ValueError, OSError, ArtifactError) as e:
        print(f"study report: error: {e}", file=sys.stderr)
        return 2
    if args.check:
        if updated != readme:
            print(f"{readme_path}: the estimator study table is out of date; run bnnkit study readme", file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        with open(readme_path, "w") as f:
            f.write(updated)
    print(f"{readme_path}: estimator study table {'updated' if updated != readme else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
