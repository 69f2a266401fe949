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


from bnnkit.errors import ArtifactError  # noqa: E402  (re-exported: bnnkit.artifacts.ArtifactError)


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


def json_bytes(obj: Any, *, indent: int | None = 2) -> bytes:
    """``obj`` as the JSON text :func:`write_json` writes (``indent=None``: compact, one line)."""
    return (json.dumps(obj, indent=indent, sort_keys=False, separators=None if indent else (",", ":"))
            + "\n").encode()


def write_json(path: str, obj: Any, *, indent: int | None = 2) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; returns the file's sha256 (hex)."""
    return write_bytes(path, json_bytes(obj, indent=indent))


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
        where = "" if probe_dir == full else f" in {probe_dir!r}, the nearest existing directory, where it would go"
        raise ValueError(f"{what} {path!r} cannot be created: no file can be created{where} ({e.strerror})") from None


def parse_json(data: bytes, what: str, path: str) -> Any:
    """The JSON document ``data`` (the bytes of ``path``); malformed or absurdly nested text is
    an :class:`ArtifactError` naming ``what`` it should have been."""
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path!r} is not valid JSON: {e}") from None
    except RecursionError:
        raise ArtifactError(f"{what} {path!r} is nested too deeply to be a bnnkit file") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's digit limit
        raise ArtifactError(f"{what} {path!r} cannot be read as JSON: {e}") from None


def read_json(path: str, what: str = "file", *, max_bytes: int | None = None) -> Any:
    """Parse the JSON file ``path`` (a regular file of at most ``max_bytes``, default
    :data:`bnnkit.reading.MAX_JSON_BYTES`, read once); a missing, oversized, malformed or
    absurdly nested file, or one that is not a regular file, is an :class:`ArtifactError`
    naming ``what`` it should have been."""
    from bnnkit.reading import MAX_JSON_BYTES, read_regular

    return parse_json(read_regular(path, what, max_bytes=MAX_JSON_BYTES if max_bytes is None else max_bytes),
                      what, path)


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


def read_tensors(path: str, what: str = "tensor file", *, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (a regular file, of at most ``max_bytes`` when given,
    read once), on CPU; a missing or corrupt file raises :class:`ArtifactError`."""
    from bnnkit.reading import read_regular

    return tensors_from_bytes(read_regular(path, what, max_bytes=max_bytes), what, path)


def tensors_from_bytes(data: bytes, what: str, path: str) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file whose bytes are ``data`` (read from ``path``)."""
    from safetensors.torch import load

    tensor_table_from_bytes(data, what, path)  # the header's own consistency, with bnnkit's messages
    try:
        return load(data)
    except Exception as e:  # safetensors raises its own error types for corrupt headers and data
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: {e}") from None


def sha256_file(path: str) -> str:
    """SHA-256 (hex) of the regular file ``path``."""
    from bnnkit.reading import file_size, sha256_regular

    return sha256_regular(path, "file", size=file_size(path, "file"))


def check_destination(directory: str, overwrite: bool) -> None:
    """``directory`` may be written when it does not exist or is an empty directory; an existing
    non-empty one only with ``overwrite`` (and it must be a directory)."""
    if os.path.lexists(directory):
        if not os.path.isdir(directory) or os.path.islink(directory):
            raise FileExistsError(f"{directory!r} exists and is not a directory; choose another path")
        if os.listdir(directory) and not overwrite:
            raise FileExistsError(f"{directory!r} already exists and is not empty; pass --overwrite (overwrite=True in "
                                  "Python) to replace it")


@contextlib.contextmanager
def staged_directory(directory: str, *, overwrite: bool = False) -> Iterator[str]:
    """Build the directory ``directory`` under a temporary name and rename it into place.

    Yields a path beside ``directory`` (same file system) that does not exist yet; the caller
    creates it and fills it. When the block ends without an error, that path takes the place of
    ``directory`` in one rename; on an error (or a kill) nothing of it is visible at
    ``directory``, which is untouched.

    ``directory`` may be absent or an empty directory; an existing non-empty one is replaced
    only with ``overwrite=True``, and then by one atomic exchange (never a moment without
    either). Without ``overwrite``, a ``directory`` that another writer created meanwhile is
    never replaced: the final rename fails with :class:`FileExistsError` naming it. Scratch
    directories of writers that were killed are removed on the next start."""
    from bnnkit.renames import exchange, rename_no_replace

    directory = os.path.abspath(directory)
    check_destination(directory, overwrite)
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    remove_temporaries(parent, [base])  # scratch of a writer that was killed
    scratch = tempfile.mkdtemp(prefix=temporary_prefix(directory), suffix=TEMPORARY_SUFFIX, dir=parent)
    staging = os.path.join(scratch, "new")
    try:
        yield staging
        if not os.path.isdir(staging):
            raise RuntimeError(f"nothing was written for {directory!r}")
        os.chmod(staging, 0o777 & ~_umask())
        if os.path.isdir(directory) and not os.path.islink(directory) and os.listdir(directory) and overwrite:
            exchange(staging, directory)  # the old directory is now at staging, removed with the scratch
        elif os.path.isdir(directory) and not os.path.islink(directory):
            try:
                os.rename(staging, directory)  # replaces an empty directory; fails if it was filled meanwhile
            except OSError as e:
                raise FileExistsError(f"{directory!r} was filled by another writer while this one was being "
                                      f"written ({e.strerror}); nothing was replaced") from None
        else:
            try:
                rename_no_replace(staging, directory)
            except FileExistsError:
                raise FileExistsError(f"{directory!r} was created by another writer while this one was being "
                                      "written; nothing was replaced") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def list_files(directory: str) -> list[str]:
    """Every regular file under ``directory``, as sorted ``/``-separated relative paths."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory)
            found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def write_artifact_files(directory: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], *,
                         kind: str, version: int, tensor_file: str = "model.safetensors",
                         manifest_file: str = "manifest.json") -> dict[str, Any]:
    """Write ``tensor_file`` and ``manifest_file`` into the existing directory ``directory`` (a
    staging directory: call inside :func:`staged_directory`). The manifest holds ``kind``,
    ``format_version``, ``bnnkit_version``, ``tensor_file``, ``files`` (the SHA-256 and size of
    every file under ``directory`` but the manifest itself, including files the caller wrote
    there before),
    the tensor table ``tensors`` (name -> dtype, shape) and ``manifest``'s fields. Returns it."""
    from bnnkit.version import __version__

    write_tensors(os.path.join(directory, tensor_file), tensors)
    files = {rel: file_entry(os.path.join(directory, rel)) for rel in list_files(directory) if rel != manifest_file}
    header = {"kind": kind, "format_version": version, "bnnkit_version": __version__, "tensor_file": tensor_file,
              "files": files, "tensors": tensor_table(tensors)}
    full = {**header, **manifest}
    write_json(os.path.join(directory, manifest_file), full, indent=None)  # compact: it is part of the artifact size
    return full


def write_artifact(directory: str, tensors: dict[str, torch.Tensor], manifest: dict[str, Any], *,
                   kind: str, version: int, tensor_file: str = "model.safetensors",
                   manifest_file: str = "manifest.json", overwrite: bool = False) -> None:
    """Write a directory artifact (:func:`write_artifact_files`) under a temporary name and rename
    it into place (:func:`staged_directory`): ``directory`` may be absent or empty; a non-empty
    one is replaced only with ``overwrite=True``."""
    with staged_directory(directory, overwrite=overwrite) as staging:
        os.mkdir(staging)
        write_artifact_files(staging, tensors, manifest, kind=kind, version=version, tensor_file=tensor_file,
                             manifest_file=manifest_file)


def tensor_table(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """name -> ``{"dtype": "float32", "shape": [...]}`` of each tensor."""
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)} for k, v in tensors.items()}


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                         "BOOL": 1}
MAX_HEADER_BYTES = 16 << 20


def safetensors_header(read, what: str, path: str) -> tuple[dict[str, dict[str, Any]], int, dict[str, str]]:
    """``(tensor table, file size the header describes, metadata)`` of a safetensors file, from its
    first bytes (``read(n)`` returns the next ``n`` bytes): the 8-byte header length, then
    the JSON header (at most :data:`MAX_HEADER_BYTES`). A malformed header, or tensors whose
    byte ranges do not match their shapes, is an :class:`ArtifactError`."""
    head = read(8)
    n = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 0 < n <= MAX_HEADER_BYTES:
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file (header length {n})")
    raw = read(n)
    if len(raw) != n:
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file (the file ends inside its header)")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: header is not an object")
    table, end, metadata = {}, 0, {}
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: malformed __metadata__")
            metadata = entry
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _SAFETENSORS_DTYPES
              and isinstance(entry.get("shape"), list) and len(entry["shape"]) <= 16
              and all(type(d) is int and 0 <= d < 2**62 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(type(o) is int for o in entry["data_offsets"]))
        if not ok:
            raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: malformed entry {name!r}")
        begin, stop = entry["data_offsets"]
        itemsize = _SAFETENSORS_ITEMSIZE[entry["dtype"]]
        numel = 1
        for d in entry["shape"]:
            numel *= d
        if not 0 <= begin <= stop or stop - begin != numel * itemsize:
            raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: tensor {name!r} has "
                                f"{stop - begin} bytes for shape {entry['shape']}")
        end = max(end, stop)
        table[name] = {"dtype": _SAFETENSORS_DTYPES[entry["dtype"]], "shape": entry["shape"]}
    return table, 8 + n + end, metadata


def tensor_table_from_bytes(data: bytes, what: str, path: str) -> dict[str, dict[str, Any]]:
    """The tensor table of the safetensors file whose bytes are ``data``; the bytes must be
    exactly what its header describes."""
    view = memoryview(data)
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position:position + n])
        position += len(chunk)
        return chunk

    table, size, _ = safetensors_header(read, what, path)
    if len(data) != size:
        raise ArtifactError(f"{what} {path!r} is not a readable safetensors file: {len(data)} bytes, the header "
                            f"describes {size}")
    return table


def file_entry(path: str) -> dict[str, Any]:
    """What a manifest's ``files`` table records of the file ``path``: ``{"sha256", "bytes"}``."""
    from bnnkit.reading import file_size, sha256_regular

    size = file_size(path, "file")
    return {"sha256": sha256_regular(path, "file", size=size), "bytes": size}


def files_table(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """The checked ``files`` table of a manifest: relative path -> ``{"sha256", "bytes"}``."""
    from bnnkit import schema

    entry = schema.record({"sha256": schema.sha256, "bytes": lambda v, w: schema.integer(v, w, 0, schema.MAX_INT)})
    return schema.dict_of(entry, key=schema.relative_path, max_len=MAX_LISTED_FILES)(value, where)


MAX_LISTED_FILES = 10_000


def verify_files(directory, files: dict[str, dict[str, Any]], what: str, *, read: str | None = None) -> bytes | None:
    """Check every entry of ``files`` (relative path -> ``{"sha256", "bytes"}``) against the
    regular file it names inside ``directory`` (a path or an open
    :class:`~bnnkit.reading.Directory`; no link is followed): first every file's size (nothing
    is read while one differs), then every digest. With ``read``, that file's bytes are
    returned: the bytes that were hashed. Otherwise an :class:`ArtifactError` names the file."""
    from bnnkit.reading import Directory, MissingFile

    if not isinstance(directory, Directory):
        with Directory(directory, "artifact directory") as d:
            return verify_files(d, files, what, read=read)
    for rel, entry in files.items():
        try:
            size = directory.size(rel, "listed file")
        except MissingFile:
            raise ArtifactError(f"{what}: file {rel!r} listed in the manifest is missing") from None
        except ArtifactError as e:
            raise ArtifactError(f"{what}: {e}") from None
        if size != entry["bytes"]:
            raise ArtifactError(f"{what}: file {rel!r} is {size:,} bytes, the manifest records {entry['bytes']:,}; "
                                "the artifact is corrupt or was modified")
    kept = None
    for rel, entry in files.items():
        if rel == read:
            kept = directory.read(rel, "listed file", size=entry["bytes"])
            digest = hashlib.sha256(kept).hexdigest()
        else:
            digest = directory.sha256(rel, "listed file", size=entry["bytes"])
        if digest != entry["sha256"]:
            raise ArtifactError(f"{what}: checksum mismatch for {rel!r}: manifest says {entry['sha256']}, file has "
                                f"{digest}; the artifact is corrupt or was modified")
    return kept


def read_listed_file(directory: str, files: dict[str, dict[str, Any]], rel: str, what: str) -> bytes:
    """The bytes of ``rel`` inside the artifact ``directory`` whose checked ``files`` table is
    ``files``: listed, of the recorded size, with the recorded SHA-256, hashed and returned
    from one read (what a reader parses is what was checked). A file that is not listed is
    refused without being opened."""
    if rel not in files:
        raise ArtifactError(f"{what}: the file {rel!r} is not listed under files; refused (an export lists every "
                            "file it wrote; add a file of your own when saving: "
                            f"packed.save(DIR, extra_files={{{rel!r}: PATH}}))")
    return verify_files(directory, {rel: files[rel]}, what, read=rel)


def read_artifact(directory: str, *, kind: str, versions: tuple[int, ...], manifest_file: str = "manifest.json",
                  retired: dict[int, str] | None = None, check_manifest=None, check_tensors=None,
                  load_tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check an artifact written by :func:`write_artifact`: ``(manifest, tensors)``.

    In order, before anything is built or loaded: the manifest (a regular file of at most
    :data:`bnnkit.reading.MAX_JSON_BYTES`), its JSON, ``kind`` and ``format_version``; its
    ``files`` table (every listed file a regular file inside the directory, reached without
    following a link, of the recorded size, then with the recorded SHA-256; the tensor file
    must be listed; nothing unlisted is ever opened); ``check_manifest(manifest)`` (the
    caller's schema; may return a cleaned manifest); the tensor table against the tensor
    file's header; ``check_tensors(manifest)`` (e.g. what a model built on the meta device
    would hold). Only then are the tensors made, from the same bytes that were hashed
    (``load_tensors=False``: an empty dict is returned instead). Every failure is an
    :class:`ArtifactError` naming the problem; ``retired`` maps format versions no longer
    read to what the user should do.
    """
    from bnnkit import schema
    from bnnkit.reading import MAX_JSON_BYTES, Directory

    where = f"manifest of {directory!r}"
    with Directory(directory, "artifact directory") as d:
        manifest = parse_json(d.read(manifest_file, "manifest", max_bytes=MAX_JSON_BYTES), "manifest",
                              os.path.join(directory, manifest_file))
        if not isinstance(manifest, dict) or manifest.get("kind") != kind:
            raise ArtifactError(f"{directory!r} is not a {kind} artifact (manifest kind: "
                                f"{_show_kind(manifest)})")
        version = manifest.get("format_version")
        if type(version) is not int or version not in versions:
            hint = (retired or {}).get(version) if type(version) is int else None
            raise ArtifactError(f"{directory!r} has {kind} format version {schema.show(version)}; this bnnkit reads "
                                f"versions {', '.join(map(str, versions))}" + (f": {hint}" if hint else ""))
        files = files_table(manifest.get("files"), f"{where}: files")
        tensor_file = schema.relative_path(manifest.get("tensor_file"), f"{where}: tensor_file")
        if tensor_file not in files:
            raise ArtifactError(f"{where}: the tensor file {tensor_file!r} is not listed under files; refused")
        tensor_bytes = verify_files(d, files, where, read=tensor_file)
    if check_manifest is not None:
        manifest = check_manifest(manifest) or manifest
    manifest["files"] = files
    table = schema.dict_of(schema.record({"dtype": lambda v, w: schema.string(v, w, tuple(_SAFETENSORS_DTYPES.values())),
                                          "shape": schema.shape}),
                           max_len=1_000_000)(manifest.get("tensors"), f"{where}: tensors")
    tensor_path = os.path.join(directory, *tensor_file.split("/"))
    _check_tensor_table(table, tensor_table_from_bytes(tensor_bytes, "tensor file", tensor_path), directory)
    if check_tensors is not None:
        check_tensors(manifest)
    return manifest, tensors_from_bytes(tensor_bytes, "tensor file", tensor_path) if load_tensors else {}


def _show_kind(manifest: Any) -> str:
    from bnnkit import schema

    return schema.show(manifest.get("kind")) if isinstance(manifest, dict) else "none: not a JSON object"


def _check_tensor_table(table: dict[str, Any], on_disk: dict[str, dict[str, Any]], directory: str) -> None:
    """The manifest's tensor table (name -> dtype, shape) must describe the tensor file exactly."""
    if set(table) != set(on_disk):
        extra, missing = sorted(set(table) - set(on_disk)), sorted(set(on_disk) - set(table))
        raise ArtifactError(f"manifest of {directory!r} does not list the tensors of its file: listed but absent "
                            f"{extra[:5]}, present but unlisted {missing[:5]}")
    for name, entry in on_disk.items():
        want = {"dtype": table[name]["dtype"], "shape": list(table[name]["shape"])}
        if want != entry:
            raise ArtifactError(f"manifest of {directory!r} says tensor {name!r} is {want}; the file holds "
                                f"{entry}: the manifest was modified")
