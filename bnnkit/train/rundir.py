"""One trainer's hold on its run directory: claimed under a lock, written epoch by epoch,
rebuilt from the checkpoint on ``--resume`` (file formats: :mod:`bnnkit.train.checkpoint`).

What a process killed at any instant leaves behind, and what the next start does with it:

- the directory, maybe empty or with only its lock file: ``--resume`` trains from the
  beginning (with the options given; with those of ``config.json`` once it exists);
- temporaries (``.NAME.PID.XXXX.tmp``): removed by the next trainer, which holds the lock;
- a checkpoint one epoch ahead of the derived files (or the reverse): ``--resume`` trusts
  the checkpoint alone (one file, verified by the sha256 it records) and rewrites
  ``metrics.jsonl``, ``model.safetensors``, ``config.json`` and the manifest from it.

Two trainers on one directory: the lock (``fcntl.flock`` on the directory itself, released by
the kernel when its holder dies; no lock file that could be deleted) lets one in; the other
stops with an error naming the directory. A trainer checks before every epoch's writes that
the path still names the directory it locked (a directory removed or replaced meanwhile
stops it rather than letting it write into another trainer's run).

Only a run is ever written into: ``--out`` naming an export directory, or a directory holding
files a run writes that are not a run's, is refused by name before any work (and again
under the lock), with or without ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bnnkit.artifacts import (ArtifactError, check_writable, json_bytes, read_json, remove_temporaries, sha256_file,
                              tensor_bytes, write_bytes, write_event)
from bnnkit.train import checks
from bnnkit.train.checkpoint import (CHECKPOINT_FILE, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE, RUN_FILES,
                                     Checkpoint, Progress, checkpoint_options, checkpoint_tensors, manifest,
                                     read_checkpoint)

LOCK_FILE = ".lock"
"""The lock file of earlier bnnkit versions (the directory itself is locked now); a stale one
is ignored."""


def holds_run(directory: str) -> bool:
    """Whether ``directory`` holds a file of a training run (finished or not)."""
    return any(os.path.lexists(os.path.join(directory, name)) for name in RUN_FILES)


def _is_run(directory: str) -> bool:
    """Whether ``directory`` is a bnnkit training run: its ``config.json`` says so, or its
    checkpoint is one (a run killed before its config, or whose config was damaged)."""
    config = os.path.join(directory, CONFIG_FILE)
    if os.path.lexists(config):
        try:
            doc = read_json(config, "run config")
            if isinstance(doc, dict) and doc.get("kind") == "bnnkit-run":
                return True
        except ArtifactError:
            pass
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    if os.path.lexists(checkpoint):
        try:
            checkpoint_options(checkpoint)
            return True
        except ArtifactError:
            pass
    return False


def check_run_directory(directory: str, resume: bool) -> None:
    """Refuse, naming it, a ``--out`` that is not a run but holds files a run would write: an
    export directory (``bnnkit export``), or a directory with a ``config.json``,
    ``model.safetensors``, ... that are not a run's; without ``resume``, also a run."""
    if not os.path.isdir(directory):
        return
    export = os.path.lexists(os.path.join(directory, "manifest.json"))
    if export and not _is_run(directory):
        raise FileExistsError(f"{directory!r} is an export directory (bnnkit export), not a training run: bnnkit train "
                              "never writes into one; choose another --out")
    if not holds_run(directory):
        return
    if not _is_run(directory):
        present = [name for name in RUN_FILES if os.path.lexists(os.path.join(directory, name))]
        raise FileExistsError(f"{directory!r} is not a bnnkit training run but holds {', '.join(present)} (no run "
                              "config or checkpoint of bnnkit); bnnkit train never writes over such files: choose "
                              "another --out")
    if not resume:
        raise FileExistsError(f"{directory!r} already holds a training run; pass --resume to continue it "
                              "or choose another --out")


def check_destination(directory: str, resume: bool) -> None:
    """Before any work: ``--out`` can be written, exists for ``--resume``, is not a directory
    of something else, and holds no run for a new one (all checked again under the lock)."""
    check_writable(directory, "--out", directory=True)
    if resume and not os.path.isdir(directory):
        raise FileNotFoundError(f"--resume: run directory {directory!r} does not exist")
    check_run_directory(directory, resume)


def saved_options(directory: str) -> dict[str, Any] | None:
    """The training options (:meth:`TrainConfig.to_json`) the run in ``directory`` was started
    with, checked field by field: its checkpoint's when it has one (read from the header; the
    whole file is verified when the run resumes), else its ``config.json``'s; None when it
    has neither."""
    check_run_directory(directory, True)
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    if os.path.lexists(checkpoint):
        return checkpoint_options(checkpoint)
    config = os.path.join(directory, CONFIG_FILE)
    if os.path.lexists(config):
        saved = read_json(config, "run config")
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
            raise ArtifactError(f"run config {config!r} has no 'train' options")
        return checks.train_options(saved["train"], f"run config {config!r}: train")
    return None


def read_checkpoint_if_any(directory: str, model: nn.Module | None = None,
                           optimizer: torch.optim.Optimizer | None = None) -> Checkpoint | None:
    """The verified checkpoint of ``directory`` (checked against ``model`` and ``optimizer``
    when given), or None before its first finished epoch."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    return read_checkpoint(path, model, optimizer) if os.path.lexists(path) else None


def _metrics_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class RunWriter:
    """The trainer's (rank 0's) hold on a run directory; every file goes through
    :func:`bnnkit.artifacts.write_bytes` (temporary name, fsync, one rename) and the run
    manifest, written last, records each file's sha256. Use :meth:`claim`, then
    :meth:`start` or :meth:`restore`, :meth:`save_epoch` per epoch, :meth:`close`."""

    def __init__(self, directory: str, lock_fd: int) -> None:
        self.directory = directory
        self._lock_fd: int | None = lock_fd
        self._digests: dict[str, str] = {}

    @classmethod
    def claim(cls, directory: str, *, resume: bool) -> RunWriter:
        """Create ``directory`` if needed and lock it (``flock`` on the directory itself); then
        remove the temporaries a killed trainer left. Raises :class:`FileExistsError` naming
        the directory when another trainer holds it, when it is not a run (an export, foreign
        files), or when a new run (``resume=False``) finds a run there."""
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(directory)
            write_event("mkdir", directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise FileExistsError(f"--out {directory!r} is a file, not a directory") from None
        import fcntl  # POSIX

        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(f"another bnnkit train is writing {directory!r} (it holds the directory's lock); "
                                  "wait for it to finish or choose another --out") from None
        write_event("locked", directory)
        writer = cls(directory, fd)
        try:
            writer.check_held()  # the path names the directory we locked (not one swapped in meanwhile)
            check_run_directory(directory, resume)
        except BaseException:
            writer.close()
            raise
        remove_temporaries(directory, RUN_FILES, only_dead_owners=False)  # we hold the lock: all are stale
        return writer

    def check_held(self) -> None:
        """Raise when ``directory`` no longer names the directory this writer locked (it was
        removed, renamed or replaced): writing by path would then write into another one."""
        try:
            now = os.stat(self.directory)
        except OSError:
            now = None
        held = os.fstat(self._lock_fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise FileExistsError(f"the run directory {self.directory!r} was removed or replaced while this trainer "
                                  "held it; stopped without writing into it (the epochs finished so far are in the "
                                  "directory that was locked)")

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _put(self, name: str, data: bytes, *, only_if_changed: bool = False) -> bool:
        """Write ``data`` as the run file ``name`` (with ``only_if_changed``: unless the file
        holds it already) and record its sha256 for the manifest; True when written."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(name)
        write = not (only_if_changed and os.path.lexists(path) and sha256_file(path) == digest)
        if write:
            write_bytes(path, data)
        if name != MANIFEST_FILE:
            self._digests[name] = digest
        return write

    def _put_manifest(self, *, only_if_changed: bool = False) -> None:
        self._put(MANIFEST_FILE, json_bytes(manifest(self._digests)), only_if_changed=only_if_changed)

    def start(self, config: dict[str, Any]) -> None:
        """A run from its first epoch: ``config.json`` (no best epoch yet) and the manifest;
        derived files of an earlier attempt that never reached a checkpoint go."""
        self.check_held()
        for name in (METRICS_FILE, MODEL_FILE):
            if os.path.exists(self._path(name)):
                os.unlink(self._path(name))
        self._digests = {}
        self._put(CONFIG_FILE, json_bytes(config))
        self._put_manifest()

    def restore(self, checkpoint: Checkpoint, config: dict[str, Any],
                log: Callable[[str], None] = print) -> None:
        """Make the derived files those of ``checkpoint`` (a kill may have left them an epoch
        behind or ahead of it, or a file may have been damaged): files that already match are
        left alone, the others are rewritten and named in a log line."""
        self.check_held()
        self._digests = {CHECKPOINT_FILE: sha256_file(self._path(CHECKPOINT_FILE))}
        derived = ((METRICS_FILE, _metrics_bytes(checkpoint.progress.metrics)),
                   (MODEL_FILE, tensor_bytes(checkpoint.best_state)),
                   (CONFIG_FILE, json_bytes(config)))
        rewritten = [name for name, data in derived if self._put(name, data, only_if_changed=True)]
        if rewritten:
            log(f"rewrote {', '.join(rewritten)} from the checkpoint of epoch {checkpoint.progress.epoch + 1}")
        self._put_manifest(only_if_changed=True)

    def save_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                   best_state: dict[str, torch.Tensor], config: dict[str, Any] | None) -> None:
        """After a finished epoch: the checkpoint (the commit point), ``metrics.jsonl``, and when
        this epoch is the best so far (``config`` given, ``best_state`` the model's state) the
        best model and ``config.json``; the manifest last."""
        self.check_held()
        best_is_current = progress.best["epoch"] == progress.epoch
        tensors, metadata = checkpoint_tensors(model, optimizer, progress, None if best_is_current else best_state)
        self._put(CHECKPOINT_FILE, tensor_bytes(tensors, metadata))
        self._put(METRICS_FILE, _metrics_bytes(progress.metrics))
        if config is not None:
            self._put(MODEL_FILE, tensor_bytes(best_state))
            self._put(CONFIG_FILE, json_bytes(config))
        self._put_manifest()
