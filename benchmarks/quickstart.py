"""The README's quick-start figure: the main command's training run over several seeds.

    python -m bnnkit.benchmarks.quickstart train --runs-dir DIR [--seeds 5] [--threads 1] [--jobs 2]
    python -m bnnkit.benchmarks.quickstart record --runs-dir DIR [--record FILE]
    python -m bnnkit.benchmarks.quickstart readme [--record FILE] [--readme README.md] [--check]

``train`` runs ``bnnkit train --model digits_mlp --dataset digits --seed S --threads T`` (the
run ``bnnkit demo`` trains, at seed S) for seeds ``0 .. seeds-1`` into ``DIR/seedS``, ``jobs``
at a time, skipping seeds whose run is finished and resuming interrupted ones. ``record``
reads those runs back and writes the record (``benchmarks/results/quickstart/digits.json``,
:data:`FORMAT` version :data:`VERSION`)::

    {"format": "bnnkit-quickstart", "version": 1, "command": "bnnkit train ...",
     "cpu": "AMD EPYC", "cpu_capability": "AVX2", "threads": 1, "torch": ..., "python": ...,
     "commit": ..., "dirty": false, "date": ..., "load_avg": 7.9,
     "seeds": [{"seed": 0, "best_test_acc": ..., "best_epoch": ..., "final_test_acc": ...,
                "epochs": 40, "train_s": ...}, ...]}

(``cpu``, ``cpu_capability``, ``threads`` and ``torch`` are those every epoch of every run
recorded; ``load_avg`` is the 1-minute load average when the record was written).
``readme`` writes the figure between ``<!-- quickstart-figure -->`` and
``<!-- /quickstart-figure -->`` from the record only; ``--check`` exits 1 when it is out of
date. Per-seed figures depend on the CPU and the thread count (float summation order): the
record gives the mean and range over seeds, and says where it was measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

FORMAT = "bnnkit-quickstart"
VERSION = 1
MODEL = "digits_mlp"
BEGIN = "<!-- quickstart-figure -->"
END = "<!-- /quickstart-figure -->"
PLACE_FIELDS = ("cpu", "cpu_capability", "threads", "torch")  # recorded by every metrics row


def default_record_path() -> str:
    from bnnkit.benchmarks.recording import default_results_dir

    return os.path.join(default_results_dir(), "quickstart", "digits.json")


def command(seed: int | str, threads: int | str) -> list[str]:
    """The main command's training run (``bnnkit demo`` trains this, at seed 0)."""
    return ["bnnkit", "train", "--model", MODEL, "--dataset", "digits", "--seed", str(seed), "--threads",
            str(threads), "--no-progress"]


def _rows(run_dir: str) -> list[dict[str, Any]]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _finished(run_dir: str) -> bool:
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            epochs = json.load(f)["train"]["epochs"]
        return len(_rows(run_dir)) == epochs
    except (OSError, KeyError, ValueError):
        return False


def train_seeds(runs_dir: str, seeds: int, threads: int, jobs: int) -> None:
    """Train the seeds not yet finished in ``runs_dir`` (``--resume`` for interrupted ones)."""
    def one(seed: int) -> int:
        out = os.path.join(runs_dir, f"seed{seed}")
        if _finished(out):
            return 0
        resume = ["--resume"] if os.path.exists(os.path.join(out, "config.json")) else []
        with open(os.path.join(runs_dir, f"seed{seed}.log"), "a") as log:
            return subprocess.run([*command(seed, threads), "--out", out, *resume], stdout=log,
                                  stderr=subprocess.STDOUT).returncode

    os.makedirs(runs_dir, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        failed = [s for s, rc in zip(range(seeds), pool.map(one, range(seeds))) if rc != 0]
    if failed:
        raise RuntimeError(f"training failed for seeds {failed}; see {runs_dir}/seedS.log")


def read_runs(runs_dir: str) -> dict[str, Any]:
    """The record of the finished runs ``runs_dir/seedS`` (see the module docstring)."""
    from bnnkit.benchmarks.environment import git_commit

    seeds, places = [], set()
    names = sorted((n for n in os.listdir(runs_dir) if n.startswith("seed") and n[4:].isdigit()),
                   key=lambda n: int(n[4:]))
    for name in names:
        run_dir = os.path.join(runs_dir, name)
        if not _finished(run_dir):
            raise ValueError(f"{run_dir} is not a finished run")
        rows = _rows(run_dir)
        places |= {tuple(r.get(k) for k in PLACE_FIELDS) for r in rows}
        with open(os.path.join(run_dir, "config.json")) as f:
            best = json.load(f)["best"]  # the model the run saved: its epoch and test accuracy
        seeds.append({"seed": int(name[4:]), "best_test_acc": best["test_acc"], "best_epoch": best["epoch"],
                      "final_test_acc": rows[-1]["test_acc"], "epochs": len(rows),
                      "train_s": round(sum(r["time_s"] for r in rows), 1)})
    if not seeds:
        raise ValueError(f"{runs_dir} holds no runs named seedS")
    if len(places) != 1:
        raise ValueError(f"the runs were not all made at one place ({', '.join(PLACE_FIELDS)}): {sorted(places)}")
    commit, dirty = git_commit()
    return {"format": FORMAT, "version": VERSION, "command": " ".join(command("S", "T")),
            **dict(zip(PLACE_FIELDS, places.pop())), "python": platform.python_version(), "commit": commit,
            "dirty": dirty, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_avg": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None, "seeds": seeds}


def read_record(path: str) -> dict[str, Any]:
    from bnnkit.artifacts import ArtifactError, read_versioned_json

    doc = read_versioned_json(path, "quick-start record", fmt=FORMAT, version=VERSION)
    seeds = doc.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, dict) and {"seed", "best_test_acc", "best_epoch", "final_test_acc", "epochs"} <= set(s)
            for s in seeds):
        raise ArtifactError(f"quick-start record {path!r} has no valid 'seeds' list")
    missing = [k for k in (*PLACE_FIELDS, "commit", "date") if k not in doc]
    if missing:
        raise ArtifactError(f"quick-start record {path!r} lacks {missing}")
    return doc


def _pct(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f}% (range {100 * min(values):.1f}-{100 * max(values):.1f}%)"


def figure(record: dict[str, Any]) -> str:
    """The README's quick-start figure, from the record only."""
    s = record["seeds"]
    ids = [x["seed"] for x in s]
    seeds = f"seeds {min(ids)}-{max(ids)}" if ids == list(range(min(ids), max(ids) + 1)) else f"seeds {ids}"
    epochs = sorted({x["epochs"] for x in s})
    per_epoch = [x["train_s"] / x["epochs"] for x in s if x.get("train_s")]
    timing = (f"; an epoch took {min(per_epoch):.1f}-{max(per_epoch):.1f} s there, the machine shared with other jobs "
              f"(load average {record['load_avg']:g} when recorded)" if per_epoch and record.get("load_avg") is not None
              else "")
    threads = f"{record['threads']} thread{'s' if record['threads'] != 1 else ''}"
    return (f"The main command's training run, `bnnkit train --model {MODEL} --dataset digits` (what `bnnkit demo` "
            f"trains, at seed 0), over {len(s)} {seeds} ({'/'.join(map(str, epochs))} epochs each, the default "
            f"settings: 1-bit weights and activations in the two hidden layers, ReSTE with o rising from 1 toward 3) "
            f"reaches a best held-out accuracy of **{_pct([x['best_test_acc'] for x in s])}**, and "
            f"{_pct([x['final_test_acc'] for x in s])} after the last epoch. Measured on **{record['cpu']}** "
            f"(ATen kernels {record['cpu_capability']}) at {threads} per run, torch {record['torch']}, "
            f"{record['date'][:10]}, commit {record['commit'][:10]}{timing}. Per-seed figures depend on the CPU "
            f"and the thread count, not only on the seed (they change the order of float sums, and a binary "
            f"network's trajectory diverges from the first epoch): expect a figure near the range, not the mean "
            f"exactly (5 seeds do not bound it: `bnnkit demo` at its default 2 threads on the same machine reached "
            f"97.1%); the tests assert only what every seed reaches. Recorded in "
            f"`benchmarks/results/quickstart/digits.json` with `python -m bnnkit.benchmarks.quickstart train "
            f"--runs-dir DIR --seeds {len(s)} --threads {record['threads']} --jobs 2`, then `record --runs-dir DIR` "
            f"and `readme`.\n")


def main(argv: list[str] | None = None) -> int:
    from bnnkit.benchmarks.readme_table import check_or_write, replace_section
    from bnnkit.benchmarks.recording import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m bnnkit.benchmarks.quickstart",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train", help="train the seeds")
    t.add_argument("--runs-dir", required=True)
    t.add_argument("--seeds", type=int, default=5)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--jobs", type=int, default=2)
    r = sub.add_parser("record", help="write the record from the runs")
    r.add_argument("--runs-dir", required=True)
    r.add_argument("--record", default=None, help="default: benchmarks/results/quickstart/digits.json")
    m = sub.add_parser("readme", help="write the README's figure from the record")
    m.add_argument("--record", default=None, help="default: benchmarks/results/quickstart/digits.json")
    m.add_argument("--readme", default=os.path.join(REPO_ROOT, "README.md"))
    m.add_argument("--check", action="store_true", help="exit 1 if the README's figure is out of date")
    args = parser.parse_args(argv)
    try:
        if args.action == "train":
            if args.seeds < 1 or args.threads < 1 or args.jobs < 1:
                parser.error("--seeds, --threads and --jobs must be >= 1")
            train_seeds(args.runs_dir, args.seeds, args.threads, args.jobs)
            return 0
        path = args.record or default_record_path()
        if args.action == "record":
            from bnnkit.artifacts import atomic_path

            record = read_runs(args.runs_dir)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with atomic_path(path) as tmp, open(tmp, "w") as f:
                json.dump(record, f, indent=2)
                f.write("\n")
            print(figure(record))
            return 0
        with open(args.readme) as f:
            readme = f.read()
        updated = replace_section(readme, figure(read_record(path)), begin=BEGIN, end=END)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"quickstart: error: {e}", file=sys.stderr)
        return 2
    return check_or_write(args.readme, readme, updated, args.check, "quick-start figure",
                          "python -m bnnkit.benchmarks.quickstart readme")


if __name__ == "__main__":
    sys.exit(main())
