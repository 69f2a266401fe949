"""Files bnnkit writes: safetensors for tensors, JSON for everything else. No pickles.

Every write goes to a temporary name in the destination directory and is renamed into
place (``os.replace``, atomic on POSIX), so an interrupted or failed write leaves either the
old file or nothing, never half a file. :func:`write_artifact` / :func:`read_artifact`
pair a tensor file with a versioned manifest that records the file's sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch


class ArtifactError(ValueError):
    """A file bnnkit reads is missing, corrupt, of the wrong version or inconsistent."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


WriteHook = Callable[[str, str], None]
_write_hook: WriteHook | None = None


def set_write_hook(hook: WriteHook | None) -> WriteHook | None:
    """Call ``hook(event, path)`` at every step of every write bnnkit makes (crash tests kill
    the process there); returns the previous hook. Events: ``"create"`` (a temporary file or
    a lock file now exists), ``"written"`` (a temporary file holds its full content),
    ``"rename"`` (a file was renamed into place), ``"mkdir"`` (a directory was created),
    ``"locked"`` (a lock was taken)."""
    global _write_hook
    previous, _write_hook = _write_hook, hook
    return previous


def write_event(event: str, path: str) -> None:
    """Report a write step to the hook of :func:`set_write_hook` (nothing without one)."""
    if _write_hook is not None:
        _write_hook(event, path)


TEMPORARY_SUFFIX = ".tmp"


def temporary_prefix(path: str) -> str:
    """File-name prefix of the temporaries written for ``path``: ``.NAME.PID.`` (the random
    part and :data:`TEMPORARY_SUFFIX` follow), so a later process can tell whose they are."""
    return f".{os.path.basename(path)}.{os.getpid()}."


def remove_temporaries(directory: str, names: Iterable[str], *, only_dead_owners: bool = True) -> list[str]:
    """Remove the temporaries left in ``directory`` for the files ``names`` by processes that
    died while writing them (``only_dead_owners=False``: by any process, for a caller that
    holds the directory's lock); returns the removed paths."""
    removed = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for entry in entries:
        for name in names:
            prefix = f".{name}."
            if not (entry.startswith(prefix) and entry.endswith(TEMPORARY_SUFFIX)):
                continue
            owner = entry[len(prefix):].split(".", 1)[0]
            if only_dead_owners and (not owner.isdigit() or _process_alive(int(owner))):
                continue
            path = os.path.join(directory, entry)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
                removed.append(path)
            break
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary file name beside ``path`` to write to; when the block ends without an error
    its content is flushed to disk (fsync) and it is renamed to ``path`` (one ``os.replace``),
    otherwise it is removed. A process killed at any instant leaves the old ``path`` or the
    new one, plus at worst a temporary that :func:`remove_temporaries` recognizes."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=directory)
    os.close(fd)
    try:
        write_event("create", tmp)
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data reaches the disk before the name does
        finally:
            os.close(fd)
        write_event("written", tmp)
        os.replace(tmp, path)
        write_event("rename", path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns its sha256 (hex)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON text :func:`write_json` writes."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def write_json(path: str, obj: Any) -> str:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the file's sha256 (hex)."""
    return write_bytes(path, json_bytes(obj))


def check_writable(path: str, what: str, *, directory: bool) -> None:
    """Check, before any work, that ``path`` (a directory with ``directory=True``, else a
    file) can be created or replaced; raise :class:`ValueError` naming ``what`` (e.g.
    ``"--out"``) and the reason: a file where a directory is needed or the reverse, or a
    directory that cannot be written. Creates nothing that stays."""
    full = os.path.abspath(path)
    if os.path.isdir(full) and not directory:
        raise ValueError(f"{what} {path!r} is a directory; give a file path")
    if os.path.exists(full) and not os.path.isdir(full) and directory:
        raise ValueError(f"{what} {path!r} is a file, not a directory")
    probe_dir = full if directory and os.path.isdir(full) else os.path.dirname(full)
    while not os.path.exists(probe_dir):
        probe_dir = os.path.dirname(probe_dir)
    if not os.path.isdir(probe_dir):
        raise ValueError(f"{what} {path!r} cannot be created: {probe_dir!r} is a file, not a directory")
    try:  # an unnamed file where the system has O_TMPFILE: a kill leaves nothing behind
        with tempfile.TemporaryFile(dir=probe_dir):
            pass
    except OSError as e:
        raise ValueError(f"{what} {path!r} cannot be written: {probe_dir!r}: {e.strerror}") from None


def read_json(path: str, what: str = "file") -> Any:
    if not os.path.isfile(path):
        raise ArtifactError(f"{what} {path!r} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path!r} is not valid JSON: {e}") from None


def read_versioned_json(path: str, what: str, *, fmt: str, version: int) -> dict[str, Any]:
    """A JSON object whose ``format`` is ``fmt`` and ``version`` is ``version``; anything else
    is an :class:`ArtifactError` naming ``what`` was expected."""
    doc = read_json(path, what)
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise ArtifactError(f"{path!r} is not a bnnkit {what} (format {fmt!r} expected)")
    if doc.get("version") != version:
        raise ArtifactError(f"{what} {path!r} has version {doc.get('version')!r}; this bnnkit reads version {version}")
    return doc


def write_tensors(path: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` (contiguous CPU copies are made) to a safetensors file atomically;
    returns the file's sha256 (hex)."""
    return write_bytes(path, tensor_bytes(tensors, metadata))


def tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file :func:`write_tensors` writes, as bytes (contiguous CPU copies of
    ``tensors``; ``metadata``: the header's string table)."""
    from safetensors.torch import save

    return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)


def read_tensors(path: str, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on CPU; a missing or corrupt file raises :class:`ArtifactError`."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ArtifactError(f"{what} {path!r} does not exist")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers and data
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: {e}") from None


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def staged_directory(directory: str, *, overwrite: bool = False) -> Iterator[str]:
    """Build the directory ``directory`` under a temporary name and rename it into place.

    Yields a path beside ``directory`` (same file system) that does not exist yet; the caller
    creates it and fills it. When the block ends without an error, that path replaces
    ``directory``; on an error nothing is left behind and ``directory`` is untouched. An
    existing ``directory`` is replaced only with ``overwrite=True``."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise FileExistsError(f"{directory!r} already exists; pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    staging = os.path.join(scratch, "new")
    try:
        yield staging
        if not os.path.isdir(staging):
            raise RuntimeError(f"nothing was written for {directory!r}")
        if os.path.exists(directory):
            os.replace(directory, os.path.join(scratch, "old"))
        os.replace(staging, directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_artifact(directory: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], *,
                   kind: str, version: int, tensor_file: str = "model.safetensors",
                   manifest_file: str = "manifest.json", overwrite: bool = False,
                   extra_files: dict[str, bytes] | None = None) -> None:
    """Write a directory artifact: ``tensor_file`` + ``manifest_file`` (JSON with ``kind``,
    ``format_version``, ``bnnkit_version``, the tensor file's ``sha256`` and ``manifest``'s
    fields). ``extra_files`` (name -> bytes, no pickles) are written beside them and their
    sha256 recorded under ``files``. The directory is built under a temporary name and
    renamed into place (:func:`staged_directory`); an existing ``directory`` is replaced only
    with ``overwrite=True``."""
    from bnnkit.version import __version__

    with staged_directory(directory, overwrite=overwrite) as staging:
        os.mkdir(staging)
        write_tensors(os.path.join(staging, tensor_file), tensors)
        header = {"kind": kind, "format_version": version, "bnnkit_version": __version__,
                  "tensor_file": tensor_file, "sha256": sha256_file(os.path.join(staging, tensor_file))}
        if extra_files:
            header["files"] = {}
            for name, data in extra_files.items():
                if os.path.basename(name) != name or name in (tensor_file, manifest_file):
                    raise ValueError(f"extra file name {name!r} must be a plain file name other than the "
                                     "tensor file and the manifest")
                with open(os.path.join(staging, name), "wb") as f:
                    f.write(data)
                header["files"][name] = sha256_file(os.path.join(staging, name))
        write_json(os.path.join(staging, manifest_file), {**header, **manifest})


def read_artifact(directory: str, *, kind: str, versions: tuple[int, ...],
                  manifest_file: str = "manifest.json") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check an artifact written by :func:`write_artifact`: ``(manifest, tensors)``.

    Raises :class:`ArtifactError` naming the problem: not a directory, missing manifest, wrong
    kind, unsupported format version, missing tensor file or sha256 mismatch.
    """
    if not os.path.isdir(directory):
        raise ArtifactError(f"artifact directory {directory!r} does not exist")
    manifest = read_json(os.path.join(directory, manifest_file), "manifest")
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise ArtifactError(f"{directory!r} is not a {kind} artifact (manifest kind: "
                            f"{manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") not in versions:
        raise ArtifactError(f"{directory!r} has {kind} format version {manifest.get('format_version')!r}; "
                            f"this bnnkit reads versions {', '.join(map(str, versions))}")
    for name in [manifest.get("tensor_file", "model.safetensors"), *(manifest.get("files") or {})]:
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ArtifactError(f"manifest of {directory!r} names the file {name!r}; only plain file names inside "
                                "the artifact directory are accepted")
    tensor_path = os.path.join(directory, manifest.get("tensor_file", "model.safetensors"))
    if not os.path.isfile(tensor_path):
        raise ArtifactError(f"tensor file {tensor_path!r} named by the manifest is missing")
    digest = sha256_file(tensor_path)
    if digest != manifest.get("sha256"):
        raise ArtifactError(f"checksum mismatch for {tensor_path!r}: manifest says {manifest.get('sha256')}, "
                            f"file has {digest}; the artifact is corrupt or was modified")
    for name, expected in (manifest.get("files") or {}).items():
        path = os.path.join(directory, os.path.basename(name))
        if not os.path.isfile(path):
            raise ArtifactError(f"file {path!r} named by the manifest is missing")
        if sha256_file(path) != expected:
            raise ArtifactError(f"checksum mismatch for {path!r}: the artifact is corrupt or was modified")
    tensors = read_tensors(tensor_path)
    _check_tensor_table(manifest.get("tensors"), tensors, directory)
    return manifest, tensors


def _check_tensor_table(table: Any, tensors: dict[str, torch.Tensor], directory: str) -> None:
    """The manifest's optional ``tensors`` table (name -> dtype, shape) must describe the file."""
    if table is None:
        return
    if not isinstance(table, dict):
        raise ArtifactError(f"manifest of {directory!r}: 'tensors' must map names to dtype and shape")
    if set(table) != set(tensors):
        extra, missing = sorted(set(table) - set(tensors)), sorted(set(tensors) - set(table))
        raise ArtifactError(f"manifest of {directory!r} does not list the tensors of its file: listed but absent "
                            f"{extra[:5]}, present but unlisted {missing[:5]}")
    for name, t in tensors.items():
        entry = table[name]
        want = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
        if not isinstance(entry, dict) or {k: entry.get(k) for k in want} != want:
            raise ArtifactError(f"manifest of {directory!r} says tensor {name!r} is {entry!r}; the file holds "
                                f"{want}: the manifest was modified")
