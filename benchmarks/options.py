"""The options of ``bnnkit bench`` and ``python -m benchmarks``, without torch: the command line
builds its parser from them before anything is measured (see :mod:`bnnkit.benchmarks.runner`)."""

from __future__ import annotations

import argparse

from bnnkit.cli.values import add_threads_argument, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bnnkit bench`` and ``python -m benchmarks``."""
    parser.add_argument("--suite", nargs="+", action="extend", default=None, metavar="SUITE",
                        help="suites to run (default: all; --list names them and their cases); the ceilings are always "
                             "measured")
    parser.add_argument("--case", nargs="+", action="extend", default=None, metavar="GLOB",
                        help="run only cases whose name matches one of these glob patterns")
    parser.add_argument("--quick", action="store_true",
                        help="fewer shapes and repetitions (the GPU check's mode); on a 2-core CPU shared with "
                             "other jobs it took 83 s and 150 s (measured, 45-60 s of CPU time)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="device to measure (default: cuda when available, else cpu)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the run file (rows, ceilings, suite status) to PATH, rewritten after every case")
    parser.add_argument("--repeats", type=positive_int, default=None, metavar="N",
                        help="run the whole selection N times, interleaved; each row is the median repeat with the "
                             "spread of all, and a row whose repeats or samples disagree, or that claims several "
                             "times a ceiling measured in the same run, is marked unreliable (not a result) "
                             "(default: 2 with --quick, else 3)")
    parser.add_argument("--budget-s", type=positive_float, default=None, metavar="SECONDS",
                        help="per suite: skip the cases not started after this many seconds")
    parser.add_argument("--ceilings-from", default=None, metavar="RUN_JSON",
                        help="take the ceilings from an earlier run file of the same device instead of measuring")
    parser.add_argument("--list", action="store_true", help="list the suites and cases, run nothing")
    parser.add_argument("--no-table", action="store_true", help="do not print the table of rows at the end")
    add_threads_argument(parser, "; every row records the count (cpu_threads)")
