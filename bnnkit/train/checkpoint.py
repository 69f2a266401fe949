"""A run directory's files, all safetensors + JSON (no pickles), each written atomically.

- ``config.json``: the :class:`TrainConfig`, the model's constructor arguments, input shape
  and class count, and the best epoch so far: everything :func:`load_run` needs to rebuild
  the model.
- ``model.safetensors``: the model with the best test accuracy (state dict).
- ``checkpoint.safetensors`` + ``checkpoint.json``: model and optimizer state after the last
  finished epoch, for ``--resume``. The JSON is written last and records the tensor file's
  sha256, so a checkpoint interrupted half-way is detected rather than half-loaded.
- ``metrics.jsonl``: one JSON object per finished epoch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from bnnkit.artifacts import (ArtifactError, build_for_tensors, read_json, read_safetensors_table, read_tensors,
                              sha256_file, write_json, write_tensors)
from bnnkit.train.config import RUN_FORMAT_VERSION, TrainConfig

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_STATE_FILE = "checkpoint.json"
METRICS_FILE = "metrics.jsonl"


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


def save_best(run_dir: str, model: nn.Module, config: dict[str, Any]) -> None:
    write_tensors(os.path.join(run_dir, MODEL_FILE), model.state_dict())
    write_json(os.path.join(run_dir, CONFIG_FILE), config)


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


def save_checkpoint(run_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict[str, Any]) -> None:
    """Save model + optimizer after a finished epoch; ``progress`` holds ``epoch`` (the last
    finished one) and the best accuracy so far."""
    opt_tensors, opt_plain = _optimizer_to_files(optimizer)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    write_tensors(path, tensors)
    write_json(os.path.join(run_dir, CHECKPOINT_STATE_FILE),
               {"format_version": RUN_FORMAT_VERSION, "sha256": sha256_file(path), "optimizer": opt_plain, **progress})


def load_checkpoint(run_dir: str, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer from ``run_dir``'s checkpoint; returns its progress record."""
    state = read_json(os.path.join(run_dir, CHECKPOINT_STATE_FILE), "checkpoint state")
    if state.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"checkpoint in {run_dir!r} has format version {state.get('format_version')!r}; "
                            f"expected {RUN_FORMAT_VERSION}")
    path = os.path.join(run_dir, CHECKPOINT_FILE)
    if not os.path.isfile(path) or sha256_file(path) != state.get("sha256"):
        raise ArtifactError(f"checkpoint {path!r} is missing or does not match {CHECKPOINT_STATE_FILE} "
                            "(interrupted write or corruption)")
    tensors = read_tensors(path, "checkpoint")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optimizer.")}
    _load_state(model, model_state, path)
    optimizer.load_state_dict(_optimizer_from_files(opt_tensors, state["optimizer"]))
    return {k: v for k, v in state.items() if k not in ("optimizer", "sha256", "format_version")}


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtifactError(f"{source!r} does not match the model: missing {missing[:5]}"
                            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                            f"{'...' if len(unexpected) > 5 else ''}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ArtifactError(f"{source!r}: tensor {k!r} has shape {tuple(v.shape)}, the model expects "
                                f"{tuple(expected[k].shape)}")
    model.load_state_dict(state)


def load_run(run_dir: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the best model of a training run: ``(model in eval mode, config dict)``.

    Raises :class:`~bnnkit.artifacts.ArtifactError` for a missing, corrupt or mismatched run.
    """
    from bnnkit import models

    config = read_json(os.path.join(run_dir, CONFIG_FILE), "run config")
    if not isinstance(config, dict) or config.get("kind") != "bnnkit-run":
        raise ArtifactError(f"{run_dir!r} is not a bnnkit training run (config.json kind is not 'bnnkit-run')")
    if config.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"run {run_dir!r} has format version {config.get('format_version')!r}; "
                            f"this bnnkit reads {RUN_FORMAT_VERSION}")
    model_path = os.path.join(run_dir, MODEL_FILE)
    model = build_for_tensors(lambda: models.create(config["model"], **config["model_kwargs"]),
                              read_safetensors_table(model_path, "model file"), f"run {run_dir!r}")
    _load_state(model, read_tensors(model_path, "model file"), model_path)
    return model.to(map_location).eval(), config
