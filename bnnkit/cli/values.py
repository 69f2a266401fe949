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
