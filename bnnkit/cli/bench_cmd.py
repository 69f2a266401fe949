"""``bnnkit bench``: run the benchmark suites of ``bnnkit.benchmarks`` (see its ``runner`` module)."""

from __future__ import annotations

import argparse

from bnnkit.cli import COMMANDS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help=COMMANDS["bench"],
        description="Run the benchmark suites on one device and print a table of rows; --json writes the run file "
                    "(every row with suite, case, shape, dtype, device, library versions, git commit, date, median "
                    "and p20/p80 ms, GB/s or TOPS, percent of the ceilings measured in the same run, speedup over "
                    "each baseline). A suite whose module is absent, or whose cases run on another device only, is "
                    "reported as skipped; a failing case is reported and the others still run (exit code 1). "
                    "Record a run with 'python -m bnnkit.benchmarks.recording merge RUN.json'.",
    )
    from bnnkit.benchmarks.options import add_arguments

    add_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.benchmarks.runner import run_from_args

    return run_from_args(args)
