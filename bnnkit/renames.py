"""Renames that never clobber: the last step of every directory bnnkit writes.

``os.rename`` / ``os.replace`` silently replace a target that appeared after the caller
checked for it, so two writers started together both "succeed" and the second one's output
replaces the first. These use Linux's ``renameat2`` (through ctypes):

- :func:`rename_no_replace`: ``RENAME_NOREPLACE``, fails with :class:`FileExistsError` if the
  target exists at the instant of the rename;
- :func:`exchange`: ``RENAME_EXCHANGE``, swaps two existing paths in one step, so replacing a
  directory never passes through a moment where neither the old nor the new one is there.

Where ``renameat2`` is missing (not Linux, or a file system without the flags) they fall back
to the closest POSIX behaviour and say so in their docstrings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
_UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP)


def _call(src: str, dst: str, flags: int) -> bool:
    """True when renameat2 did it; False when it is unavailable here; raises its OSError otherwise."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), dst)


def rename_no_replace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``; :class:`FileExistsError` if ``dst`` exists (atomically checked).

    Fallback without renameat2: ``os.mkdir(dst)`` claims the name (atomic, fails if it exists),
    then ``src`` is renamed onto that empty directory (directories only)."""
    try:
        if _call(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, f"{dst!r} appeared while it was being written", dst) from None
        raise
    if not os.path.isdir(src):
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, f"{dst!r} exists", dst)
        os.link(src, dst)  # fails if dst exists
        os.unlink(src)
        return
    try:
        os.mkdir(dst)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"{dst!r} appeared while it was being written", dst) from None
    os.rename(src, dst)


def exchange(a: str, b: str) -> None:
    """Swap the existing paths ``a`` and ``b`` in one step.

    Fallback without renameat2: two renames through a temporary name beside ``b``; a crash
    between them leaves ``b``'s old content under that temporary name."""
    if _call(a, b, _RENAME_EXCHANGE):
        return
    parked = f"{b}.old-{os.getpid()}"
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)
