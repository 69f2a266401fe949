"""The ``bnnkit`` command line: one module per subcommand, each with ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from bnnkit.artifacts import ArtifactError
from bnnkit.version import __version__

COMMANDS = ("train", "summary", "demo", "export", "validate", "predict", "plot", "bench", "study")

# Errors caused by what the user asked for: shown as one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError,
               ArtifactError, ImportError, NotImplementedError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnnkit",
        description="Binary neural networks for PyTorch: train with ReSTE, export packed models, "
                    "validate them against ONNX Runtime, benchmark the GPU kernels.",
    )
    parser.add_argument("--version", action="version", version=f"bnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"bnnkit.cli.{name}_cmd").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as e:
        print(f"bnnkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = (f"; the epochs finished so far are saved in {args.out}: run the same command with --resume "
                    "to continue")
        print(f"bnnkit {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
