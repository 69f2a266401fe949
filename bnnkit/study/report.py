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

from .estimators import RECORD_FILE, StudySpec, read_record, runs_of

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
            runs = runs_of(record, model, arm)
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


# Student's t quantile t(0.975, df) for a two-sided 95% interval; beyond df = 30 the df = 30
# value is used, which is conservative (the quantile falls toward 1.96 as df grows).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` >= 1 degrees of freedom (df > 30: df = 30's)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[min(df, len(_T975)) - 1]


def paired_difference(arm_values: list[float], base_values: list[float]) -> dict[str, float]:
    """Seed-by-seed differences ``arm - base`` (same seed: same initial weights and batches):
    ``mean``, the half-width ``ci95`` of its 95% interval (Student's t; NaN for one seed),
    and how many seeds the arm is ahead, level, behind."""
    diffs = [a - b for a, b in zip(arm_values, base_values, strict=True)]
    n = len(diffs)
    ci = t_quantile_975(n - 1) * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": statistics.fmean(diffs), "ci95": ci, "ahead": sum(d > 0 for d in diffs),
            "level": sum(d == 0 for d in diffs), "behind": sum(d < 0 for d in diffs), "seeds": n}


def verdict(d: dict[str, float]) -> str:
    """``ahead`` / ``behind`` when the 95% interval of the mean difference excludes 0, else
    ``within the spread``."""
    if math.isnan(d["ci95"]):
        return "one seed: no verdict"
    if d["mean"] - d["ci95"] > 0:
        return "ahead"
    if d["mean"] + d["ci95"] < 0:
        return "behind"
    return "within the spread"


def comparisons(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every arm against the spec's baseline arm, per model, on the seeds both ran: the paired
    difference (:func:`paired_difference`) of the best and of the final test accuracy."""
    spec = StudySpec.from_json(record["spec"])
    base = spec.baseline_arm()
    out = []
    if base is None:
        return out
    for model in spec.models:
        base_runs = {r["seed"]: r for r in runs_of(record, model, base)}
        for arm in spec.arms():
            if arm == base:
                continue
            pairs = [(r, base_runs[r["seed"]]) for r in runs_of(record, model, arm) if r["seed"] in base_runs]
            if not pairs:
                continue
            out.append({"model": model, "arm": arm, "baseline": base, **{
                key: paired_difference([a[f"{key}_test_acc"] for a, _ in pairs],
                                       [b[f"{key}_test_acc"] for _, b in pairs])
                for key in ("best", "final")}})
    return out


def _points(d: dict[str, float]) -> str:
    ci = "" if math.isnan(d["ci95"]) else f" ± {100 * d['ci95']:.2f}"
    return f"{100 * d['mean']:+.2f}{ci}"


def comparison_table(record: dict[str, Any]) -> str:
    """The Markdown table of :func:`comparisons` (empty when the study has no baseline arm)."""
    rows = comparisons(record)
    if not rows:
        return ""
    lines = [f"Against the baseline `{rows[0]['baseline'].label}`, seed by seed (points of test accuracy; mean ± "
             "half-width of its 95% interval; seeds ahead/level/behind; the verdict says whether the interval "
             "excludes 0):", "",
             "| model | estimator | best acc. difference | seeds a/l/b | verdict (best) | final acc. difference "
             "| verdict (final) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, f = r["best"], r["final"]
        lines.append(f"| {r['model']} | {r['arm'].label} | {_points(b)} | {b['ahead']}/{b['level']}/{b['behind']} "
                     f"| {verdict(b)} | {_points(f)} | {verdict(f)} |")
    return "\n".join(lines) + "\n"


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
    resumed = record.get("resumed_runs", 0)
    times = [r["time_s"] for r in record["runs"]]
    if resumed:
        # the invocation that wrote the record read back (or continued) runs of earlier ones, made under
        # other loads and numbers of runs at a time: its own load and wall time say little about them
        how = (f"{record['threads_per_job']} thread each; {resumed} of the {len(times)} runs read back or "
               f"continued from earlier invocations, whose load and runs at a time varied")
        cost = (f"the runs took {min(times):.0f}-{max(times):.0f} s each ({sum(times) / 60:.0f} min in all) on the "
                "shared machine")
    else:
        how = f"{record['jobs']} runs at a time, {record['threads_per_job']} thread each{load}"
        cost = f"{len(times)} runs in {record['wall_s'] / 60:.1f} min"
    return (f"**{record['device']}** ({record['device_type']}, {how}), recorded {record['date'][:10]} at commit "
            f"{record['commit'][:10]}; {versions}; {cost}. "
            f"Recipe: {spec.epochs} epoch{'s' if spec.epochs > 1 else ''} of batch {spec.batch_size}, SGD lr {spec.lr:g} (momentum "
            f"{spec.momentum:g}, weight decay {spec.weight_decay:g}), {warmup}{spec.lr_schedule} lr schedule, "
            f"t = {spec.t:g} for ReSTE and {spec.clipped_ste_t:g} for the clipped STE (the paper's STE); seeds "
            f"0-{spec.seeds - 1}. Accuracy: mean ± std (min-max) over seeds; the run's mean estimating error and total "
            f"gradient stability: means over seeds; the last column: median over seeds and epochs. Per-seed figures "
            f"depend on the CPU and the thread count (float summation order); the spread over seeds does not.\n\n"
            + table(record) + ("\n" + comparison_table(record) if comparisons(record) else ""))


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
    except (ValueError, OSError) as e:  # an ArtifactError is a ValueError
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
