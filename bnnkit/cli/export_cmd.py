"""``bnnkit export``: export a trained run as a packed artifact (not built yet)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained run as a packed artifact (not built yet)",
                              description="Export a trained run as a packed artifact. Not built yet: it lands with issue 4 (packed export).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="ignored until the command is built")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("'bnnkit export' is not built yet; it lands with issue 4 (packed export)")
