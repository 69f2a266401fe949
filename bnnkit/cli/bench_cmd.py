"""``bnnkit bench``: run the benchmark suites (not built yet)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run the benchmark suites (not built yet)",
                              description="Run the benchmark suites. Not built yet: it lands with issue 6 (benchmark suite).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="ignored until the command is built")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("'bnnkit bench' is not built yet; it lands with issue 6 (benchmark suite)")
