"""argparse ``type=`` checks for numbers, so a bad value stops at parsing with one line
(``bnnkit CMD: error: argument --X: ...``), before any work."""

from __future__ import annotations

import argparse
import math


def _finite(text: str, accepted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (nan and inf refused)."""
    value = _finite(text, "a finite number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (nan and inf refused)."""
    value = _finite(text, "a finite number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


THREADS_HELP = ("CPU threads of PyTorch (intra-op) and ONNX Runtime (default: PyTorch's, one per physical core); "
                "on a small machine shared with other jobs, 1 can be several times faster")


def add_threads_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--threads N`` (default None: PyTorch's own choice)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N", help=THREADS_HELP + what)


def apply_threads(threads: int | None) -> None:
    """Set PyTorch's intra-op threads (which ONNX Runtime sessions of bnnkit follow) when given."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
