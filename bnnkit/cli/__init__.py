"""The ``bnnkit`` command line: one module per subcommand, each with ``add_parser(subparsers)``.

Only the chosen subcommand's module is imported, and only its parser is built: ``bnnkit
--version`` and ``bnnkit --help`` import neither torch nor the subcommands, and each
subcommand imports torch, ONNX Runtime or Triton only when it runs (its parser takes its
choices from the torch-free :mod:`bnnkit.choices`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Iterable

from bnnkit.version import __version__

COMMANDS: dict[str, str] = {
    "train": "train a model with ReSTE",
    "summary": "per-layer table of a model: bits, parameters, packed memory, MACs",
    "demo": "train a binary network on the embedded digits set, export it (packed + ONNX), validate it and predict "
            "held-out digits saved as PNG",
    "export": "pack a trained run (1 bit per binary weight), optionally with an ONNX graph",
    "validate": "compare the trained model, the packed model and ONNX Runtime on the same inputs",
    "predict": "run an export on your own images or .npy arrays; print the top classes",
    "plot": "draw a run's training curves (loss, accuracy, lr, o, indicators) to a PNG",
    "bench": "run the benchmark suites (quantize, gemm, conv, model, train, onnx) with measured ceilings",
    "study": "recorded studies of the paper's claims (the estimator study on the digits models)",
}
"""Every subcommand and its one-line help (module ``bnnkit.cli.<name>_cmd``)."""

# Errors caused by what the user asked for: shown as one line, without a traceback.
# (bnnkit.artifacts.ArtifactError is a ValueError.)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError,
               ImportError, NotImplementedError)

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


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``bnnkit`` parser with the full parsers of ``commands`` (default: every command);
    the other commands are listed with their help only (their modules are not imported)."""
    full = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(
        prog="bnnkit",
        description="Binary neural networks for PyTorch: train with ReSTE, export packed models, "
                    "validate them against ONNX Runtime, benchmark the GPU kernels.",
    )
    parser.add_argument("--version", action="version", version=f"bnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if name in full:
            importlib.import_module(f"bnnkit.cli.{name}_cmd").add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def chosen_command(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names (its first word, ``bnnkit`` having no other positional)."""
    return argv[0] if argv and argv[0] in COMMANDS else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = chosen_command(argv)
    parser = build_parser([] if command is None else [command])
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
