"""``bnnkit validate``: compare the trained model, the packed model and ONNX Runtime (not built yet)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="compare the trained model, the packed model and ONNX Runtime (not built yet)",
                              description="Compare the trained model, the packed model and ONNX Runtime. Not built yet: it lands with issue 5 (ONNX export and validation).")
    p.add_argument("args", nargs=argparse.REMAINDER, help="ignored until the command is built")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("'bnnkit validate' is not built yet; it lands with issue 5 (ONNX export and validation)")
