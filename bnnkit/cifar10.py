"""CIFAR-10 files, read without unpickling: images ``(N, 32, 32, 3)`` uint8 (HWC) and labels.

Two layouts are read from a data directory, the first found:

- ``cifar-10-batches-bin/`` (the "binary version", what ``--download`` fetches): each
  ``data_batch_{1..5}.bin`` / ``test_batch.bin`` is a run of 3073-byte records, one label
  byte then 1024 red, 1024 green and 1024 blue bytes, rows of 32; read with numpy.
- ``cifar-10-batches-py/`` (the "python version", torchvision's download): each batch is a
  Python 2 pickle of a dict. It is not unpickled. :func:`read_python_batch` walks its
  opcodes (``pickletools.genops``, which only parses) with a small interpreter that builds
  dicts, lists, strings and numbers, keeps any global or call as an inert description,
  and accepts exactly one structure for ``data``: numpy's ``_reconstruct`` of a uint8
  ``(N, 3072)`` array from raw bytes. Nothing named in the file is imported or called.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickletools
import tarfile
import tempfile
from typing import Any

import numpy as np

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BINARY_DIR = "cifar-10-batches-bin"
PYTHON_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published beside the archive on the dataset's page
IMAGE_BYTES = 3 * 32 * 32


class CifarFormatError(ValueError):
    """A CIFAR-10 file is not in the layout it should have."""


def find_layout(root: str) -> tuple[str, str] | None:
    """``("binary" | "python", directory)`` of the CIFAR-10 files under ``root``, or ``None``."""
    for kind, name, probe in (("binary", BINARY_DIR, TEST_BATCH + ".bin"), ("python", PYTHON_DIR, TEST_BATCH)):
        directory = os.path.join(root, name)
        if os.path.isfile(os.path.join(directory, probe)):
            return kind, directory
    return None


def read_cifar10(root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 32, 32, 3) uint8, labels (N,) int64)`` of the train (50,000) or test
    (10,000) split under ``root``."""
    layout = find_layout(root)
    if layout is None:
        raise FileNotFoundError(f"CIFAR-10 not found in {root!r} (neither {BINARY_DIR}/ nor {PYTHON_DIR}/); "
                                "pass --download to fetch it")
    kind, directory = layout
    names = TRAIN_BATCHES if train else (TEST_BATCH,)
    read = read_binary_batch if kind == "binary" else read_python_batch
    parts = [read(os.path.join(directory, n + (".bin" if kind == "binary" else ""))) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


#: Largest CIFAR-10 batch file read (a real one is about 30 MB).
MAX_BATCH_BYTES = 256 << 20


def _read_batch(path: str) -> bytes:
    """The bytes of a batch file: a regular file (a FIFO is refused, never waited on) of at
    most :data:`MAX_BATCH_BYTES`."""
    from bnnkit.reading import MissingFile, read_regular

    try:
        return read_regular(path, "CIFAR-10 batch", max_bytes=MAX_BATCH_BYTES)
    except MissingFile:
        raise FileNotFoundError(f"CIFAR-10 batch {path!r} is missing") from None


def read_binary_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One ``.bin`` batch: ``(images (N, 32, 32, 3) uint8, labels (N,) int64)``."""
    raw = np.frombuffer(_read_batch(path), dtype=np.uint8)
    if raw.size == 0 or raw.size % (1 + IMAGE_BYTES):
        raise CifarFormatError(f"{path}: {raw.size} bytes is not a whole number of 3073-byte CIFAR-10 records")
    records = raw.reshape(-1, 1 + IMAGE_BYTES)
    return _checked(path, records[:, 1:], records[:, 0].astype(np.int64))


def _checked(path: str, flat: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CifarFormatError(f"{path}: labels outside 0..9 (found {int(labels.min())}..{int(labels.max())})")
    images = np.ascontiguousarray(flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


# --- the python version, without unpickling -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclasses.dataclass
class _Call:
    func: Any
    args: Any
    state: Any = None


_MARK = object()


def parse_pickle_data(data: bytes, what: str) -> Any:
    """The plain data of a pickle (dicts, lists, tuples, str, bytes, numbers, None, bools);
    globals and calls stay inert :class:`_Global` / :class:`_Call` descriptions. Python 2
    ``str`` (BINSTRING) comes back as bytes."""
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        for k in range(len(stack) - 1, -1, -1):
            if stack[k] is _MARK:
                items = stack[k + 1:]
                del stack[k:]
                return items
        raise CifarFormatError(f"{what}: malformed pickle (no MARK)")

    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise CifarFormatError(f"{what}: malformed pickle (stack of {len(stack)} at STOP)")
                return stack[0]
            if name == "MARK":
                stack.append(_MARK)
            elif name in ("EMPTY_DICT", "EMPTY_LIST", "EMPTY_TUPLE"):
                stack.append({"EMPTY_DICT": {}, "EMPTY_LIST": [], "EMPTY_TUPLE": ()}[name])
            elif name in ("DICT", "LIST", "TUPLE"):
                items = since_mark()
                stack.append(dict(zip(items[::2], items[1::2])) if name == "DICT" else
                             list(items) if name == "LIST" else tuple(items))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = since_mark()
                stack[-1].update(zip(items[::2], items[1::2]))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = since_mark()
                stack[-1].extend(items)
            elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
                          "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE",
                          "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"):
                stack.append(arg)
            elif name in ("BINSTRING", "SHORT_BINSTRING", "STRING"):
                stack.append(arg.encode("latin-1") if isinstance(arg, str) else arg)
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                stack.append(memo[int(arg)])
            elif name == "GLOBAL":
                module, _, attr = arg.partition(" ")
                stack.append(_Global(module, attr))
            elif name == "STACK_GLOBAL":
                attr, module = stack.pop(), stack.pop()
                stack.append(_Global(module, attr))
            elif name in ("REDUCE", "NEWOBJ"):
                args, func = stack.pop(), stack.pop()
                stack.append(_Call(func, args))
            elif name == "BUILD":
                state = stack.pop()
                if not isinstance(stack[-1], _Call):
                    raise CifarFormatError(f"{what}: unexpected BUILD on {type(stack[-1]).__name__}")
                stack[-1].state = state
            else:
                raise CifarFormatError(f"{what}: pickle opcode {name} is not part of a CIFAR-10 batch")
    except (IndexError, KeyError, TypeError, AttributeError, ValueError) as e:
        if isinstance(e, CifarFormatError):
            raise
        raise CifarFormatError(f"{what}: malformed pickle ({type(e).__name__}: {e})") from None
    raise CifarFormatError(f"{what}: the pickle ends without STOP")


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _uint8_array(obj: Any, what: str) -> np.ndarray:
    """The uint8 array described by numpy's pickled form ``_reconstruct(ndarray, (0,), b'b')``
    + BUILD ``(1, shape, dtype('u1'), fortran, raw bytes)``; anything else is refused."""
    expected = f"{what}: 'data' is not the uint8 numpy array of a CIFAR-10 batch"
    if not (isinstance(obj, _Call) and obj.func in [_Global(m, "_reconstruct") for m in _NUMPY_MODULES]
            and isinstance(obj.args, tuple) and len(obj.args) == 3 and obj.args[0] == _Global("numpy", "ndarray")):
        raise CifarFormatError(expected)
    state = obj.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise CifarFormatError(expected)
    _, shape, dtype, fortran, raw = state
    if not (isinstance(dtype, _Call) and dtype.func == _Global("numpy", "dtype") and isinstance(dtype.args, tuple)
            and dtype.args[:1] in (("u1",), (b"u1",))):
        raise CifarFormatError(f"{expected} (dtype is not uint8)")
    if isinstance(raw, _Call) and raw.func == _Global("_codecs", "encode") and isinstance(raw.args, tuple) \
            and len(raw.args) == 2 and isinstance(raw.args[0], str):
        raw = raw.args[0].encode("latin-1")  # how Python 3 writes bytes at protocol 2
    if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(d, int) for d in shape)
            and shape[1] == IMAGE_BYTES and isinstance(raw, bytes) and len(raw) == shape[0] * shape[1]
            and fortran is False):
        raise CifarFormatError(f"{expected} (shape {shape!r})")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def read_python_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the python version: ``(images (N, 32, 32, 3) uint8, labels (N,) int64)``."""
    doc = parse_pickle_data(_read_batch(path), path)
    if not isinstance(doc, dict):
        raise CifarFormatError(f"{path}: not a CIFAR-10 batch (a dict with 'data' and 'labels')")
    data = doc.get(b"data", doc.get("data"))
    labels = doc.get(b"labels", doc.get("labels"))
    if data is None or not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise CifarFormatError(f"{path}: not a CIFAR-10 batch (needs 'data' and a list of int 'labels')")
    flat = _uint8_array(data, path)
    if len(labels) != flat.shape[0]:
        raise CifarFormatError(f"{path}: {flat.shape[0]} images but {len(labels)} labels")
    return _checked(path, flat, np.asarray(labels, dtype=np.int64))


# --- download ---------------------------------------------------------------------------------
def _md5(path: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract_binary_archive(archive: str, root: str) -> str:
    """Copy the batches out of the binary-version archive into ``root/cifar-10-batches-bin``
    (only those regular-file members, by name: no path from the archive is used), built under
    a temporary name and renamed. Returns the directory."""
    from bnnkit.artifacts import staged_directory

    wanted = {f"{BINARY_DIR}/{n}.bin" for n in (*TRAIN_BATCHES, TEST_BATCH)} | {f"{BINARY_DIR}/batches.meta.txt"}
    target = os.path.join(root, BINARY_DIR)
    with tarfile.open(archive, "r:gz") as tar, staged_directory(target, overwrite=True) as staging:
        os.mkdir(staging)
        found = set()
        for member in tar:
            if member.name in wanted and member.isfile():
                source = tar.extractfile(member)
                with open(os.path.join(staging, os.path.basename(member.name)), "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                found.add(member.name)
        if found != wanted:
            raise CifarFormatError(f"{archive}: lacks {sorted(wanted - found)}")
    return target


def download_cifar10(root: str, *, url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5, progress: bool = True) -> str:
    """Fetch the binary version into ``root`` (unless ``root/cifar-10-binary.tar.gz`` is already
    there), check its MD5 and extract it. Returns the batches' directory."""
    import urllib.request

    from tqdm.auto import tqdm

    os.makedirs(root, exist_ok=True)
    archive = os.path.join(root, ARCHIVE_NAME)
    if not os.path.isfile(archive):
        fd, tmp = tempfile.mkstemp(prefix=f".{ARCHIVE_NAME}.", dir=root)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="CIFAR-10", disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            os.replace(tmp, archive)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    digest = _md5(archive)
    if digest != md5:
        os.unlink(archive)
        raise CifarFormatError(f"{archive}: MD5 {digest} is not the published {md5} (a corrupt or different "
                               "download; it was removed, run again)")
    return extract_binary_archive(archive, root)
