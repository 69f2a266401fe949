"""A run directory's files (run format 2), all safetensors + JSON (no pickles), each written
atomically (a temporary name, then one rename):

- ``checkpoint.safetensors``: everything the run is after its last finished epoch, in ONE
  file: model and optimizer tensors, the best model's tensors, and (in the safetensors
  header) the progress, the metrics of every finished epoch, the training options and a
  sha256 of all of it. It is written first after each epoch and is what ``--resume``
  trusts; the files below are derived from it and rewritten from it on ``--resume``.
- ``config.json``: the :class:`TrainConfig`, the model's constructor arguments, input shape
  and class count, and the best epoch so far: everything :func:`load_run` needs to rebuild
  the model.
- ``model.safetensors``: the model with the best test accuracy (state dict).
- ``metrics.jsonl``: one JSON object per finished epoch (the whole file is rewritten).
- ``run-manifest.json``: the sha256 of each file above, written last; every reader of a
  run (:func:`load_run`: ``summary``, ``export``, ``validate``'s ``trained/`` copy) checks
  the files it reads against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import torch
from torch import nn

from bnnkit.artifacts import (ArtifactError, build_for_tensors, read_json, read_safetensors_table, read_tensors,
                              sha256_file)
from bnnkit.train.config import RUN_FORMAT_VERSION, TrainConfig, saved_model_kwargs

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "run-manifest.json"
RUN_FILES = (CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, CONFIG_FILE, MANIFEST_FILE)
"""Every file a run writes, in the order an epoch writes them (the manifest last)."""

MANIFEST_KIND = "bnnkit-run-manifest"
CHECKPOINT_KIND = "bnnkit-checkpoint"
_HEADER_KEY, _DIGEST_KEY = "bnnkit_checkpoint", "sha256"


def run_config(config: TrainConfig, input_shape: tuple[int, ...], num_classes: int,
               best: dict[str, Any] | None = None, input_spec=None) -> dict[str, Any]:
    """The run's ``config.json``. ``input_spec`` (an :class:`~bnnkit.inputs.InputSpec`; by
    default the dataset's, :func:`bnnkit.data.dataset_input_spec`) is what ``bnnkit export``
    carries and ``bnnkit predict`` applies."""
    from bnnkit.data import dataset_input_spec
    from bnnkit.version import __version__

    if input_spec is None:
        input_spec = dataset_input_spec(config.dataset, config.data_dir, tuple(input_shape), num_classes)
    return {
        "kind": "bnnkit-run",
        "format_version": RUN_FORMAT_VERSION,
        "bnnkit_version": __version__,
        "model": config.model,
        "model_kwargs": {**config.model_kwargs, "num_classes": num_classes},
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "input_spec": None if input_spec is None else input_spec.to_json(),
        "train": config.to_json(),
        "best": best or {},
    }


@dataclasses.dataclass
class Progress:
    """A run after its last finished epoch: what a checkpoint holds besides tensors.

    ``epoch``: the last finished epoch (0-based); ``best``: ``{"test_acc", "epoch"}`` of the
    best epoch so far; ``metrics``: the ``metrics.jsonl`` rows of epochs ``0..epoch``;
    ``train``: the run's :meth:`TrainConfig.to_json`; ``grad_scaler``: the fp16 gradient
    scaler's state (None without one)."""

    epoch: int
    best: dict[str, Any]
    metrics: list[dict[str, Any]]
    train: dict[str, Any]
    grad_scaler: dict[str, Any] | None = None


def _tensor_digest(tensors: dict[str, torch.Tensor], header: str) -> str:
    """sha256 over ``header`` and every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": plain_state}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entries in plain.get("state", {}).items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": plain["param_groups"]}


def checkpoint_tensors(model: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
                       best_state: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and safetensors metadata of a checkpoint (see the module docstring).
    ``best_state``: the best model's state dict, or None when the best epoch is this one."""
    opt_tensors, opt_plain = _optimizer_to_files(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
    if best_state is not None:
        tensors |= {f"best.{k}": v for k, v in best_state.items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = json.dumps({"kind": CHECKPOINT_KIND, "format_version": RUN_FORMAT_VERSION, "optimizer": opt_plain,
                         **dataclasses.asdict(progress)})
    return tensors, {_HEADER_KEY: header, _DIGEST_KEY: _tensor_digest(tensors, header)}


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint read back and verified: its progress, the model state after its epoch,
    the best model's state and the optimizer state (as ``optimizer.load_state_dict`` takes it)."""

    progress: Progress
    model_state: dict[str, torch.Tensor]
    best_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]


def _read_header(path: str, *, with_tensors: bool) -> tuple[str, str | None, dict[str, torch.Tensor]]:
    """``(header JSON, recorded sha256, tensors)`` of the checkpoint ``path`` (tensors only
    ``with_tensors``); an unreadable or foreign file raises :class:`ArtifactError`."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers and data
        raise ArtifactError(f"checkpoint {path!r} is not a readable safetensors file: {e}") from None
    header = metadata.get(_HEADER_KEY)
    if header is None:
        raise ArtifactError(f"checkpoint {path!r} was not written by this bnnkit (run format {RUN_FORMAT_VERSION}); "
                            "an older run cannot be resumed: start a new one")
    return header, metadata.get(_DIGEST_KEY), tensors


def checkpoint_options(path: str) -> dict[str, Any]:
    """The training options recorded in the checkpoint ``path``, from its header alone (the
    content is verified when the checkpoint is read with :func:`read_checkpoint`)."""
    header, _, _ = _read_header(path, with_tensors=False)
    try:
        options = json.loads(header)["train"]
    except (ValueError, KeyError, TypeError, RecursionError):
        options = None
    if not isinstance(options, dict):
        raise ArtifactError(f"checkpoint {path!r} is corrupt: its header records no training options")
    return options


def read_checkpoint(path: str) -> Checkpoint:
    """Read and verify the checkpoint ``path``; a corrupt, foreign or older-format file raises
    :class:`ArtifactError` naming the problem."""
    header, digest, tensors = _read_header(path, with_tensors=True)
    if digest != _tensor_digest(tensors, header):
        raise ArtifactError(f"checkpoint {path!r} is corrupt: its content does not match the sha256 it records")
    state = json.loads(header)
    if state.get("kind") != CHECKPOINT_KIND or state.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"checkpoint {path!r} has kind {state.get('kind')!r}, format version "
                            f"{state.get('format_version')!r}; this bnnkit reads {CHECKPOINT_KIND!r} version "
                            f"{RUN_FORMAT_VERSION}")
    progress = Progress(**{f.name: state.get(f.name) for f in dataclasses.fields(Progress)})

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model_state = part("model.")
    best_state = part("best.") or model_state
    optimizer_state = _optimizer_from_files({k: v for k, v in tensors.items() if k.startswith("optimizer.")},
                                            state["optimizer"])
    return Checkpoint(progress, model_state, best_state, optimizer_state)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` after checking names and shapes (ArtifactError naming ``source``)."""
    check_state_shapes(model, {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict(state)


def check_state_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{source!r} does not match the model: missing {missing[:5]}"
                            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                            f"{'...' if len(unexpected) > 5 else ''}")
    for k, shape in shapes.items():
        if tuple(shape) != tuple(expected[k].shape):
            raise ArtifactError(f"{source!r}: tensor {k!r} has shape {tuple(shape)}, the model expects "
                                f"{tuple(expected[k].shape)}")


def manifest(digests: dict[str, str]) -> dict[str, Any]:
    """The run manifest recording ``digests`` (file name -> sha256)."""
    return {"kind": MANIFEST_KIND, "format_version": RUN_FORMAT_VERSION, "files": dict(sorted(digests.items()))}


def verify_run_files(run_dir: str, names: tuple[str, ...]) -> None:
    """Check the files ``names`` of ``run_dir`` against its manifest; raise :class:`ArtifactError`
    naming the first file that is missing, unlisted or changed."""
    path = os.path.join(run_dir, MANIFEST_FILE)
    doc = read_json(path, "run manifest")
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND or not isinstance(files, dict):
        raise ArtifactError(f"{path!r} is not a bnnkit run manifest (kind {MANIFEST_KIND!r} with a 'files' table)")
    if doc.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"run manifest {path!r} has format version {doc.get('format_version')!r}; "
                            f"this bnnkit reads {RUN_FORMAT_VERSION}")
    for name in names:
        file = os.path.join(run_dir, name)
        if name not in files:
            raise ArtifactError(f"{file!r} is not listed in {MANIFEST_FILE} (the run has no finished epoch yet, "
                                "or it was interrupted: bnnkit train --resume --out DIR completes it)")
        if not os.path.isfile(file):
            raise ArtifactError(f"{file!r}, listed in {MANIFEST_FILE}, is missing")
        if sha256_file(file) != files[name]:
            raise ArtifactError(f"{file!r} does not match its sha256 in {MANIFEST_FILE}: the file was modified or "
                                "corrupted (or the run was interrupted while writing it: bnnkit train --resume "
                                "--out DIR repairs an interrupted run)")


def load_run(run_dir: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the best model of a training run: ``(model in eval mode, config dict)``.

    ``config.json`` and ``model.safetensors`` are checked against the run manifest first, and
    the model is built on the meta device and compared with the tensor file before any
    memory is allocated for it. Raises :class:`~bnnkit.artifacts.ArtifactError` for a
    missing, corrupt or mismatched run.
    """
    from bnnkit import models

    if not os.path.isdir(run_dir):
        raise ArtifactError(f"run directory {run_dir!r} does not exist")
    export_manifest = os.path.join(run_dir, "manifest.json")  # what bnnkit export writes beside trained/
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)) and os.path.isfile(export_manifest):
        raise ArtifactError(f"{run_dir!r} is an export directory (bnnkit export), not a training run; its trained "
                            f"model is in {os.path.join(run_dir, 'trained')!r}; check it with: "
                            f"bnnkit validate {run_dir}")
    config = read_json(os.path.join(run_dir, CONFIG_FILE), "run config")
    if not isinstance(config, dict) or config.get("kind") != "bnnkit-run":
        raise ArtifactError(f"{run_dir!r} is not a bnnkit training run (config.json kind is not 'bnnkit-run')")
    if config.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"run {run_dir!r} has format version {config.get('format_version')!r}; "
                            f"this bnnkit reads {RUN_FORMAT_VERSION}")
    verify_run_files(run_dir, (CONFIG_FILE, MODEL_FILE))
    if "model_kwargs" in config:
        config["model_kwargs"] = saved_model_kwargs(config["model_kwargs"])  # bnnkit 0.1's estimator names
    model_path = os.path.join(run_dir, MODEL_FILE)
    model = build_for_tensors(lambda: models.create(config["model"], **config["model_kwargs"]),
                              read_safetensors_table(model_path, "model file"), f"run {run_dir!r}")
    load_state(model, read_tensors(model_path, "model file"), model_path)
    return model.to(map_location).eval(), config
