"""The ``bnnkit`` command line: one module per subcommand, each with ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from bnnkit.artifacts import ArtifactError
from bnnkit.version import __version__

COMMANDS = ("train", "summary", "demo", "export", "validate", "predict", "plot", "bench", "study")

# Errors caused by what the user asked for: shown as one line, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError,
               ArtifactError, ImportError, NotImplementedError)

# Errors of the file system a command writes to: one line saying what happened and how to go on.
# Every write is atomic (a temporary name, then one rename), so the state on disk is the last good one.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EFBIG: "a file grew past the size limit",
                  errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only"}
_GO_ON = {
    "train": "the run keeps its files up to its last finished epoch; make room, then run the same command with "
             "--resume to continue",
    "export": "nothing was written to --out (an export is renamed into place only when complete); make room and "
              "export again",
}


def one_line(text: str) -> str:
    """``text`` on one line: a message that quotes a file's content cannot break the line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def storage_error_line(command: str, e: OSError) -> str:
    """One line for a write that failed for lack of room or permission on the file system."""
    where = f" writing {e.filename!r}" if e.filename else ""
    go_on = _GO_ON.get(command, "the file was not written (files are replaced in one rename, never half-written); "
                                "make room or choose another path, then run the command again")
    return f"bnnkit {command}: error: {STORAGE_ERRNOS[e.errno]}{where}; {go_on}"


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
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            print(one_line(storage_error_line(args.command, e)), file=sys.stderr)
            return 2
        if isinstance(e, USER_ERRORS):
            print(one_line(f"bnnkit {args.command}: error: {e}"), file=sys.stderr)
            return 2
        raise
    except USER_ERRORS as e:
        print(one_line(f"bnnkit {args.command}: error: {e}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = (f"; the epochs finished so far are saved in {args.out}: run the same command with --resume "
                    "to continue")
        print(f"bnnkit {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
