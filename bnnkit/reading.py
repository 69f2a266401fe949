"""Readers that open only what they expect: regular files, with a size known before reading.

Every file bnnkit reads (manifests, tensor files, checkpoints, run files, ``.npy`` arrays,
images, ONNX graphs) goes through :func:`open_regular`: the path is checked with ``stat``
before it is opened (a FIFO, socket, device or directory is refused by name without being
opened), opened with ``O_NONBLOCK`` (opening a FIFO swapped in meanwhile cannot block) and
checked again with ``fstat`` on the descriptor, which is what is then read. A file's size is
compared with what the caller expects (a size a manifest records, or a fixed cap) before a
byte of it is read or hashed, and a file is read once: what is hashed is what is parsed.

:class:`Directory` reads files inside one directory relative to its descriptor, never
through a symbolic link (every path component is opened with ``O_NOFOLLOW``), so a listed
file cannot lead outside the directory and the directory cannot be swapped mid-read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat

from bnnkit.errors import ArtifactError

#: Largest JSON file bnnkit parses (manifests, run configs): parsing holds about 20x the
#: text in Python objects at worst, so this bounds the parser's memory too.
MAX_JSON_BYTES = 16 << 20
_CHUNK = 1 << 20


class MissingFile(ArtifactError, FileNotFoundError):
    """A file bnnkit was asked to read does not exist."""
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse_unless_regular(st: os.stat_result, what: str, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{what} {path!r} is {_kind(st.st_mode)}, not a regular file; refused")


def open_regular(path: str, what: str, *, dir_fd: int | None = None, follow_symlinks: bool = True,
                 shown: str | None = None) -> int:
    """A read-only descriptor of the regular file ``path`` (relative to ``dir_fd`` when given).

    Anything else is an :class:`~bnnkit.artifacts.ArtifactError` naming ``what`` it should
    have been and the file (``shown``, default ``path``): a missing file, a link (with
    ``follow_symlinks=False``), a FIFO, socket, device or directory (refused before it is
    opened, and checked again on the descriptor)."""
    path_shown = path if shown is None else shown
    file_size(path, what, dir_fd=dir_fd, follow_symlinks=follow_symlinks, shown=path_shown)  # refused unopened
    flags = _FLAGS | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise MissingFile(f"{what} {path_shown!r} does not exist") from None
    except OSError as e:
        raise ArtifactError(f"{what} {path_shown!r} cannot be opened: {e.strerror}") from None
    try:
        _refuse_unless_regular(os.fstat(fd), what, path_shown)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, size: int, what: str, path: str) -> bytes:
    """Exactly ``size`` bytes of ``fd`` from its start; a file that is not ``size`` bytes long
    by the time it is read (it changed meanwhile) is refused."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = bytearray()
    while len(data) <= size:
        chunk = os.read(fd, min(_CHUNK, size + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) != size:
        raise ArtifactError(f"{what} {path!r} changed while it was read ({len(data):,} bytes read, {size:,} expected)")
    return bytes(data)


def _check_size(actual: int, what: str, path: str, max_bytes: int | None, size: int | None) -> None:
    if size is not None and actual != size:
        raise ArtifactError(f"{what} {path!r} is {actual:,} bytes; its manifest records {size:,}: the file was "
                            "modified or replaced")
    if max_bytes is not None and actual > max_bytes:
        raise ArtifactError(f"{what} {path!r} is {actual:,} bytes; bnnkit reads a {what} of at most "
                            f"{max_bytes:,} bytes")


def read_regular(path: str, what: str, *, max_bytes: int | None = None, size: int | None = None,
                 dir_fd: int | None = None, follow_symlinks: bool = True, shown: str | None = None) -> bytes:
    """The content of the regular file ``path``, read once. Its size is checked first, before
    anything is read: it must equal ``size`` when given and be at most ``max_bytes`` when
    given (a reader of a file it did not write passes one of them)."""
    shown = path if shown is None else shown
    fd = open_regular(path, what, dir_fd=dir_fd, follow_symlinks=follow_symlinks, shown=shown)
    try:
        actual = os.fstat(fd).st_size
        _check_size(actual, what, shown, max_bytes, size)
        return read_fd(fd, actual, what, shown)
    finally:
        os.close(fd)


def sha256_regular(path: str, what: str, *, size: int, dir_fd: int | None = None,
                   follow_symlinks: bool = True, shown: str | None = None) -> str:
    """SHA-256 (hex) of the regular file ``path``, which must be ``size`` bytes (checked before
    hashing, and again by counting what is read)."""
    shown = path if shown is None else shown
    fd = open_regular(path, what, dir_fd=dir_fd, follow_symlinks=follow_symlinks, shown=shown)
    try:
        _check_size(os.fstat(fd).st_size, what, shown, None, size)
        h, n = hashlib.sha256(), 0
        while n <= size:
            chunk = os.read(fd, min(_CHUNK, size + 1 - n))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        if n != size:
            raise ArtifactError(f"{what} {shown!r} changed while it was read ({n:,} bytes read, {size:,} expected)")
        return h.hexdigest()
    finally:
        os.close(fd)


def file_size(path: str, what: str, *, dir_fd: int | None = None, follow_symlinks: bool = True,
              shown: str | None = None) -> int:
    """The size of the regular file ``path`` (``stat`` only: nothing is opened)."""
    shown = path if shown is None else shown
    try:
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise MissingFile(f"{what} {shown!r} does not exist") from None
    except OSError as e:
        raise ArtifactError(f"{what} {shown!r} cannot be read: {e.strerror}") from None
    _refuse_unless_regular(st, what, shown)
    return st.st_size


class Directory:
    """An open directory whose files are read relative to its descriptor, each path component
    opened without following links: ``rel`` (``/``-separated, as a manifest lists it) cannot
    leave the directory, and renaming or replacing the directory meanwhile changes nothing
    about what is read. Use as a context manager."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        self.what = what
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise MissingFile(f"{what} {path!r} does not exist") from None
        except NotADirectoryError:
            raise ArtifactError(f"{what} {path!r} is not a directory") from None
        except OSError as e:
            raise ArtifactError(f"{what} {path!r} cannot be read: {e.strerror}") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Directory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _parent(self, rel: str) -> tuple[int, str]:
        """``(descriptor of the directory holding rel, its last component)``; the caller closes
        the descriptor when it is not :attr:`fd`."""
        *dirs, name = rel.split("/")
        fd = self.fd
        try:
            for part in dirs:
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                                  dir_fd=fd)
                except FileNotFoundError:
                    raise MissingFile(f"{self.what} {self.path!r}: {rel!r} does not exist") from None
                except OSError as e:
                    why = "a link or not a directory" if e.errno in (errno.ENOTDIR, errno.ELOOP) else e.strerror
                    raise ArtifactError(f"{self.what} {self.path!r}: {rel!r} cannot be read ({part!r} is {why}); "
                                        "refused") from None
                if fd != self.fd:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        return fd, name

    def _call(self, rel: str, fn, *args, **kwargs):
        fd, name = self._parent(rel)
        try:
            return fn(name, *args, dir_fd=fd, follow_symlinks=False, shown=os.path.join(self.path, *rel.split("/")),
                      **kwargs)
        finally:
            if fd != self.fd:
                os.close(fd)

    def open(self, rel: str, what: str) -> int:
        """:func:`open_regular` of ``rel`` inside the directory (no link followed); the caller
        closes the descriptor."""
        return self._call(rel, open_regular, what)

    def read(self, rel: str, what: str, *, max_bytes: int | None = None, size: int | None = None) -> bytes:
        """:func:`read_regular` of ``rel`` inside the directory (no link followed)."""
        return self._call(rel, read_regular, what, max_bytes=max_bytes, size=size)

    def sha256(self, rel: str, what: str, *, size: int) -> str:
        """:func:`sha256_regular` of ``rel`` inside the directory (no link followed)."""
        return self._call(rel, sha256_regular, what, size=size)

    def size(self, rel: str, what: str) -> int:
        """:func:`file_size` of ``rel`` inside the directory (no link followed)."""
        return self._call(rel, file_size, what)


def pread_stream(fd: int):
    """``read(n)``: the next ``n`` bytes of ``fd`` from its start (``os.pread``: the file
    position is left alone), for parsers that read a header piece by piece."""
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = os.pread(fd, n, position)
        position += len(chunk)
        return chunk

    return read


def read_safetensors_checked(fd: int, what: str, path: str, check_table) -> bytes:
    """The bytes of the safetensors file open at ``fd``, read once, after its header alone was
    read and its tensor table (name -> dtype, shape) passed ``check_table(table)`` (e.g. the
    tensors the model the reader is about to build holds), and its size on disk matched the
    size the header describes: a header cannot make the reader read more than ``check_table``
    accepted."""
    from bnnkit.artifacts import safetensors_header

    table, size, _ = safetensors_header(pread_stream(fd), what, path)
    check_table(table)
    actual = os.fstat(fd).st_size
    if actual != size:
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: {actual:,} bytes on disk, the header "
                            f"describes {size:,}")
    return read_fd(fd, size, what, path)
