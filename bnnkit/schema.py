"""Checks of values read from files (manifests, run configs): the type and range of each field,
checked once where the value enters, before anything is built from it.

JSON parses numbers of any size, ``true`` where an int is expected and strings anywhere; every
reader of a bnnkit file goes through these checks so that a malformed or hostile file is an
:class:`~bnnkit.artifacts.ArtifactError` naming the field, never a ``TypeError`` or an
allocation deep inside the code. ``where`` is the field's path for the message, e.g.
``"manifest of 'dir': input_shape[0]"``.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable
from typing import Any

from bnnkit.errors import ArtifactError

#: Largest integer a count or size field may hold (sizes beyond this are not real models).
MAX_INT = 2**53
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SHA256 = re.compile(r"[0-9a-f]{64}")

Check = Callable[[Any, str], Any]


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxlong, r.maxother = 3, 6, 6, 6, 50, 40, 50
    r.repr_int = lambda x, level: f"an integer of {x.bit_length()} bits" if x.bit_length() > 128 else repr(x)
    return r


_REPR = _short_repr()


def show(value: Any) -> str:
    """A short one-line ``repr`` of a value read from a file, for an error message: at most 60
    characters, computed without walking more than a few levels and items of a container or
    printing all digits of a huge integer."""
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(where: str, expected: str, value: Any) -> ArtifactError:
    return ArtifactError(f"{where} must be {expected}, got {show(value)}")


def integer(value: Any, where: str, lo: int = -MAX_INT, hi: int = MAX_INT) -> int:
    """An int (not a bool) in ``[lo, hi]``."""
    if type(value) is not int or not lo <= value <= hi:
        raise fail(where, f"an integer in [{lo}, {hi}]", value)
    return value


def number(value: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite int or float (not a bool) in ``[lo, hi]`` (an int beyond float's range is not)."""
    if type(value) is int and abs(value) >= 2**1024:
        raise fail(where, f"a finite number in [{lo:g}, {hi:g}]", value)
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise fail(where, f"a finite number in [{lo:g}, {hi:g}]", value)
    return float(value)


def boolean(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise fail(where, "true or false", value)
    return value


def string(value: Any, where: str, choices: tuple[str, ...] | None = None, max_len: int = 4096) -> str:
    if type(value) is not str or len(value) > max_len:
        raise fail(where, f"a string of at most {max_len} characters", value)
    if choices is not None and value not in choices:
        raise fail(where, f"one of {', '.join(choices)}", value)
    return value


def optional(check: Check) -> Check:
    """``check``, or ``None``."""
    return lambda value, where: None if value is None else check(value, where)


def list_of(item: Check, min_len: int = 0, max_len: int = 1_000_000) -> Check:
    def check(value: Any, where: str) -> list:
        if type(value) is not list or not min_len <= len(value) <= max_len:
            raise fail(where, f"a list of {min_len} to {max_len} items", value)
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return check


def dict_of(value_check: Check, key: Check | None = None, max_len: int = 1_000_000) -> Check:
    """An object with any keys (checked by ``key``, default: any string) and checked values."""
    def check(value: Any, where: str) -> dict:
        if type(value) is not dict or len(value) > max_len:
            raise fail(where, f"an object of at most {max_len} entries", value)
        out = {}
        for k, v in value.items():
            (key or string)(k, f"{where} key")
            out[k] = value_check(v, f"{where}[{k!r}]")
        return out
    return check


def record(required: dict[str, Check], optional_fields: dict[str, Check] | None = None) -> Check:
    """An object with exactly these fields (``optional_fields`` may be absent); unknown fields are
    refused by name, so a field this version does not know cannot be silently ignored."""
    optional_fields = optional_fields or {}

    def check(value: Any, where: str) -> dict:
        if type(value) is not dict:
            raise fail(where, "an object", value)
        missing = [k for k in required if k not in value]
        if missing:
            raise ArtifactError(f"{where} lacks the field(s) {', '.join(missing)}")
        unknown = [k for k in value if k not in required and k not in optional_fields]
        if unknown:
            raise ArtifactError(f"{where} has unknown field(s) {', '.join(map(repr, unknown[:5]))}; known: "
                                f"{', '.join([*required, *optional_fields])}")
        sep = " " if where.endswith(":") else "."  # "manifest of 'd': input_shape", "...: graph.nodes"
        out = {k: c(value[k], f"{where}{sep}{k}") for k, c in required.items()}
        out.update({k: c(value[k], f"{where}{sep}{k}") for k, c in optional_fields.items() if k in value})
        return out
    return check


def shape(value: Any, where: str, max_dims: int = 8, max_size: int = 2**31 - 1) -> tuple[int, ...]:
    """A tensor shape: a list of non-negative ints."""
    return tuple(list_of(lambda v, w: integer(v, w, 0, max_size), 0, max_dims)(value, where))


def input_shape(value: Any, where: str) -> tuple[int, ...]:
    """One input's shape without the batch dim: 1 to 4 positive sizes, each below 2**20."""
    return tuple(list_of(lambda v, w: integer(v, w, 1, 2**20), 1, 4)(value, where))


def sha256(value: Any, where: str) -> str:
    if type(value) is not str or not SHA256.fullmatch(value):
        raise fail(where, "a SHA-256 digest (64 lowercase hex digits)", value)
    return value


def relative_path(value: Any, where: str) -> str:
    """A path inside a directory: ``/``-separated names, none empty, ``.`` or ``..``, no
    backslash or NUL; so it cannot leave the directory it is joined to."""
    text = string(value, where, max_len=1024)
    parts = text.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
        raise fail(where, "a relative path inside the directory (no '..', no leading '/')", value)
    return text


def json_value(value: Any, where: str, depth: int = 4) -> Any:
    """Plain JSON data (null, bool, finite number, string, lists and string-keyed objects)
    nested at most ``depth`` levels: model constructor arguments and the like."""
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        return integer(value, where)
    if type(value) is float:
        return number(value, where)
    if depth > 0 and type(value) is list:
        return [json_value(v, f"{where}[{i}]", depth - 1) for i, v in enumerate(value)]
    if depth > 0 and type(value) is dict:
        return {string(k, f"{where} key"): json_value(v, f"{where}[{k!r}]", depth - 1) for k, v in value.items()}
    raise fail(where, f"plain JSON data nested at most {depth} levels", value)
