"""One trainer's hold on its run directory: claimed under a lock, written epoch by epoch,
rebuilt from the checkpoint on ``--resume`` (file formats: :mod:`bnnkit.train.checkpoint`).

What a process killed at any instant leaves behind, and what the next start does with it:

- the directory, maybe empty or with only its lock file: ``--resume`` trains from the
  beginning (with the options given; with those of ``config.json`` once it exists);
- temporaries (``.NAME.PID.XXXX.tmp``): removed by the next trainer, which holds the lock;
- a checkpoint one epoch ahead of the derived files (or the reverse): ``--resume`` trusts
  the checkpoint alone (one file, verified by the sha256 it records) and rewrites
  ``metrics.jsonl``, ``model.safetensors``, ``config.json`` and the manifest from it.

Two trainers on one directory: the lock (``fcntl.flock`` on ``DIR/.lock``, released by the
kernel when its holder dies) lets one in; the other stops with an error naming the directory.
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
from bnnkit.train.checkpoint import (CHECKPOINT_FILE, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE, RUN_FILES,
                                     Checkpoint, Progress, checkpoint_options, checkpoint_tensors, manifest,
                                     read_checkpoint)

LOCK_FILE = ".lock"


def holds_run(directory: str) -> bool:
    """Whether ``directory`` holds a file of a training run (finished or not)."""
    return any(os.path.exists(os.path.join(directory, name)) for name in RUN_FILES)


def check_destination(directory: str, resume: bool) -> None:
    """Before any work: ``--out`` can be written, exists for ``--resume``, and holds no run
    for a new one (checked again under the lock)."""
    check_writable(directory, "--out", directory=True)
    if resume and not os.path.isdir(directory):
        raise FileNotFoundError(f"--resume: run directory {directory!r} does not exist")
    if not resume and holds_run(directory):
        raise FileExistsError(f"{directory!r} already holds a training run; pass --resume to continue it "
                              "or choose another --out")


def saved_options(directory: str) -> dict[str, Any] | None:
    """The training options (:meth:`TrainConfig.to_json`) the run in ``directory`` was started
    with: its checkpoint's when it has one (read from the header; the whole file is verified
    when the run resumes), else its ``config.json``'s; None when it has neither."""
    checkpoint = os.path.join(directory, CHECKPOINT_FILE)
    if os.path.isfile(checkpoint):
        return checkpoint_options(checkpoint)
    config = os.path.join(directory, CONFIG_FILE)
    if os.path.isfile(config):
        saved = read_json(config, "run config")
        if not isinstance(saved, dict) or not isinstance(saved.get("train"), dict):
            raise ArtifactError(f"run config {config!r} has no 'train' options")
        return saved["train"]
    return None


def read_checkpoint_if_any(directory: str) -> Checkpoint | None:
    """The verified checkpoint of ``directory``, or None before its first finished epoch."""
    path = os.path.join(directory, CHECKPOINT_FILE)
    return read_checkpoint(path) if os.path.exists(path) else None


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
        """Create ``directory`` if needed and take its lock; then remove the temporaries a
        killed trainer left. Raises :class:`FileExistsError` naming the directory when
        another trainer holds it, or when a new run (``resume=False``) finds a run there."""
        parent = os.path.dirname(os.path.abspath(directory))
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(directory)
            write_event("mkdir", directory)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise FileExistsError(f"--out {directory!r} is a file, not a directory") from None
        import fcntl  # POSIX

        lock = os.path.join(directory, LOCK_FILE)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        write_event("create", lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FileExistsError(f"another bnnkit train is writing {directory!r} (it holds {lock!r}); wait for "
                                  "it to finish or choose another --out") from None
        write_event("locked", lock)
        writer = cls(directory, fd)
        remove_temporaries(directory, RUN_FILES, only_dead_owners=False)  # we hold the lock: all are stale
        if not resume and holds_run(directory):
            writer.close()
            raise FileExistsError(f"{directory!r} already holds a training run; pass --resume to continue it "
                                  "or choose another --out")
        return writer

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would let two trainers lock two files)."""
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
        write = not (only_if_changed and os.path.isfile(path) and sha256_file(path) == digest)
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
        best_is_current = progress.best["epoch"] == progress.epoch
        tensors, metadata = checkpoint_tensors(model, optimizer, progress, None if best_is_current else best_state)
        self._put(CHECKPOINT_FILE, tensor_bytes(tensors, metadata))
        self._put(METRICS_FILE, _metrics_bytes(progress.metrics))
        if config is not None:
            self._put(MODEL_FILE, tensor_bytes(best_state))
            self._put(CONFIG_FILE, json_bytes(config))
        self._put_manifest()
