"""Recorded results: ``benchmarks/results/<device>.json``, one file per device, rows of every run.

A results file (:data:`RESULTS_FORMAT`, version :data:`RESULTS_VERSION`)::

    {"format": "bnnkit-bench-results", "version": 1, "device": "NVIDIA H100 80GB HBM3", "rows": [...]}

Merging a run file appends its rows; rows already recorded for the same commit and suite
(on that device) are replaced, so rerunning a commit updates its figures instead of
duplicating them. Command line::

    python -m bnnkit.benchmarks.recording merge RUN.json [RUN.json ...] [--results-dir DIR] [--commit SHA]
    python -m bnnkit.benchmarks.recording combine PART.json [PART.json ...] --out RUN.json

``combine`` joins run files of one device (the GPU check runs each suite in its own
process) into one run file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

from bnnkit.artifacts import ArtifactError, read_versioned_json, write_json

from .environment import REPO_ROOT, UNKNOWN_COMMIT, device_slug
from .runner import RUN_FORMAT, RUN_VERSION, format_rows, read_run_file

RESULTS_FORMAT = "bnnkit-bench-results"
RESULTS_VERSION = 1

# fields of a row that describe the run or the measurement, not which variant of a case it is
RUN_FIELDS = ("device", "device_type", "torch", "triton", "onnxruntime", "cuda", "numba", "python", "commit", "dirty",
              "date", "quick", "run_id", "cpu_threads", "cpu_cores", "cpu_isa", "load_avg", "load_avg_end", "repeats")
ROW_FIELDS = ("suite", "case", "impl", "shape", "dtype", "timer", "ceiling", "bound", "ceiling_dtype", "unreliable")


def default_results_dir() -> str:
    """``benchmarks/results`` of the source checkout bnnkit runs from (an editable install)."""
    if not os.path.isfile(os.path.join(REPO_ROOT, "pyproject.toml")):
        raise FileNotFoundError(f"bnnkit is not installed from a source checkout ({REPO_ROOT} has no pyproject.toml); "
                                "pass --results-dir")
    return os.path.join(REPO_ROOT, "benchmarks", "results")


def results_path(results_dir: str, device: str) -> str:
    return os.path.join(results_dir, f"{device_slug(device)}.json")


def read_results(path: str) -> dict:
    """A results file, checked; a missing file is an error (see :func:`load_results_dir`)."""
    doc = read_versioned_json(path, "benchmark results file", fmt=RESULTS_FORMAT, version=RESULTS_VERSION)
    if not isinstance(doc.get("device"), str) or not isinstance(doc.get("rows"), list):
        raise ArtifactError(f"benchmark results file {path!r} lacks its device name or its rows list")
    return doc


def load_results_dir(results_dir: str) -> list[dict]:
    """Every results file of ``results_dir``, sorted by device name."""
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"results directory {results_dir!r} does not exist")
    docs = [read_results(os.path.join(results_dir, name)) for name in sorted(os.listdir(results_dir))
            if name.endswith(".json")]
    return sorted(docs, key=lambda d: d["device"])


def merge_run(run: dict, results_dir: str, commit: str | None = None) -> tuple[str, int, int]:
    """Merge one run file's rows into the device's results file; ``(path, added, replaced)``.

    Rows of the same commit and suite already recorded are replaced. ``commit`` fills in
    rows whose commit is ``"unknown"`` (a run in a copy of the tree without ``.git``);
    such rows are refused without it.
    """
    rows = [dict(r) for r in run["rows"]]
    if not rows:
        raise ValueError("the run file holds no rows to record")
    devices = {r.get("device") for r in rows}
    if len(devices) != 1 or None in devices:
        raise ValueError(f"a run file records one device; its rows name {sorted(map(str, devices))}")
    (device,) = devices
    for r in rows:
        if r.get("commit") in (None, "", UNKNOWN_COMMIT):
            if commit is None:
                raise ValueError(f"rows of the run on {device!r} have no git commit (measured in a tree without "
                                 ".git); pass --commit SHA, the commit that tree was copied from")
            r["commit"] = commit
    path = results_path(results_dir, device)
    doc = read_results(path) if os.path.exists(path) else {"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
                                                           "device": device, "rows": []}
    if doc["device"] != device:
        raise ArtifactError(f"{path!r} records device {doc['device']!r}, not {device!r} (same file name)")
    incoming = {(r["commit"], r["suite"]) for r in rows}
    kept = [r for r in doc["rows"] if (r.get("commit"), r.get("suite")) not in incoming]
    replaced = len(doc["rows"]) - len(kept)
    doc["rows"] = kept + rows
    write_json(path, doc)
    return path, len(rows), replaced


def combine_runs(runs: list[dict]) -> dict:
    """One run file from several of one device: suites and rows joined, ceilings from the first that has them."""
    if not runs:
        raise ValueError("nothing to combine: no run files given")
    devices = {r["run"].get("device") for r in runs}
    if len(devices) != 1:
        raise ValueError(f"run files to combine must be of one device; they name {sorted(map(str, devices))}")
    with_ceilings = [r for r in runs if r.get("ceilings")]
    ceiling_source = with_ceilings[0] if with_ceilings else None
    rows, suites = [], []
    for r in runs:
        own_ceiling_rows = r is ceiling_source
        rows += [row for row in r["rows"] if row.get("suite") != "ceilings" or own_ceiling_rows]
        suites += [s for s in r["suites"] if s["suite"] != "ceilings" or own_ceiling_rows]
    return {"format": RUN_FORMAT, "version": RUN_VERSION, "run": runs[0]["run"],
            "ceilings": ceiling_source["ceilings"] if ceiling_source else {}, "suites": suites, "rows": rows}


def row_variant(row: dict) -> str:
    """What tells a row apart within its case besides impl, shape and dtype (e.g. ``pass=forward``)."""
    parts = [f"{k}={v}" for k, v in row.items()
             if isinstance(v, str) and k not in RUN_FIELDS and k not in ROW_FIELDS]
    return ", ".join(parts)


def latest_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows of the most recent run of each (suite, case) (by date), in recorded order: a run of
    some cases of a suite replaces those cases' rows and keeps the others'."""
    rows = list(rows)
    newest: dict[tuple[str, str], tuple[str, str]] = {}
    for r in rows:
        key, when = (r["suite"], r.get("case", "")), (r.get("date", ""), r.get("run_id", ""))
        if key not in newest or when > newest[key]:
            newest[key] = when
    return [r for r in rows if (r.get("date", ""), r.get("run_id", "")) == newest[r["suite"], r.get("case", "")]]


def _merge_cmd(args: argparse.Namespace) -> int:
    results_dir = args.results_dir or default_results_dir()
    os.makedirs(results_dir, exist_ok=True)
    for path in args.runs:
        run = read_run_file(path)
        failed = [s["suite"] for s in run["suites"] if s["status"] in ("failed", "partial")]
        if any(r.get("dirty") for r in run["rows"]):
            print(f"note: {path} was measured in a tree with uncommitted changes", file=sys.stderr)
        if failed:
            print(f"note: {path}: suites {', '.join(failed)} had failures; recording the rows that exist",
                  file=sys.stderr)
        out, added, replaced = merge_run(run, results_dir, args.commit)
        print(f"{path}: {added} rows recorded in {out} ({replaced} earlier rows of the same commit replaced)")
    return 0


def _combine_cmd(args: argparse.Namespace) -> int:
    runs = []
    for path in args.parts:
        try:
            runs.append(read_run_file(path))
        except ArtifactError as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
    combined = combine_runs(runs)
    write_json(args.out, combined)
    if args.table:
        print(format_rows(combined["rows"]))
        print("ceilings:", ", ".join(f"{k} {v:.4g}" for k, v in combined["ceilings"].items()) or "none")
    print(f"combined {len(runs)} run files into {args.out}: {len(combined['rows'])} rows")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnkit.benchmarks.recording",
                                     description="Record benchmark run files into benchmarks/results/<device>.json.")
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser("merge", help="append a run's rows to its device's results file")
    merge.add_argument("runs", nargs="+", metavar="RUN_JSON", help="run files written by 'bnnkit bench --json'")
    merge.add_argument("--results-dir", default=None, help="default: benchmarks/results of this checkout")
    merge.add_argument("--commit", default=None, help="commit for rows measured without .git (e.g. on a lent GPU)")
    merge.set_defaults(run=_merge_cmd)
    combine = sub.add_parser("combine", help="join run files of one device into one (unreadable parts are skipped)")
    combine.add_argument("parts", nargs="+", metavar="RUN_JSON")
    combine.add_argument("--out", required=True, help="the combined run file")
    combine.add_argument("--table", action="store_true", help="also print the table of the combined rows")
    combine.set_defaults(run=_combine_cmd)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"recording: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
