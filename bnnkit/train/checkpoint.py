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

from bnnkit.artifacts import (ArtifactError, parse_json, safetensors_header, tensor_table, tensor_table_from_bytes,
                              tensors_from_bytes)
from bnnkit.reading import MAX_JSON_BYTES, Directory, open_regular, pread_stream, read_fd, read_safetensors_checked
from bnnkit.train import checks
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
    scaler's state (None without one); ``environment``: what the process that finished the
    epoch ran with (:func:`bnnkit.train.environment.current`: threads, versions; None when
    not recorded), which ``--resume`` compares with its own."""

    epoch: int
    best: dict[str, Any]
    metrics: list[dict[str, Any]]
    train: dict[str, Any]
    grad_scaler: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None


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


def _parse_header(text: str, path: str) -> dict[str, Any]:
    try:
        state = json.loads(text)
    except (ValueError, RecursionError):
        state = None
    if type(state) is not dict:
        raise ArtifactError(f"checkpoint {path!r} is corrupt: its header is not a JSON object")
    if state.get("kind") != CHECKPOINT_KIND or state.get("format_version") != RUN_FORMAT_VERSION:
        from bnnkit import schema

        raise ArtifactError(f"checkpoint {path!r} has kind {schema.show(state.get('kind'))}, format version "
                            f"{schema.show(state.get('format_version'))}; this bnnkit reads {CHECKPOINT_KIND!r} "
                            f"version {RUN_FORMAT_VERSION}")
    return state


def _header(fd: int, path: str) -> tuple[dict[str, dict[str, Any]], int, dict[str, Any], str, str | None]:
    """``(tensor table, size the header describes, header state, header text, recorded sha256)``
    of the checkpoint open at ``fd``, from its safetensors header alone."""
    table, size, metadata = safetensors_header(pread_stream(fd), "checkpoint", path)
    text = metadata.get(_HEADER_KEY)
    if text is None:
        raise ArtifactError(f"checkpoint {path!r} was not written by this bnnkit (run format {RUN_FORMAT_VERSION}); "
                            "an older run cannot be resumed: start a new one")
    return table, size, _parse_header(text, path), text, metadata.get(_DIGEST_KEY)


def checkpoint_options(path: str) -> dict[str, Any]:
    """The training options recorded in the checkpoint ``path``, checked (types and ranges),
    from its header alone (the content is verified when the checkpoint is read with
    :func:`read_checkpoint`)."""
    fd = open_regular(path, "checkpoint")
    try:
        _, _, state, _, _ = _header(fd, path)
    finally:
        os.close(fd)
    return checks.train_options(state.get("train"), f"checkpoint {path!r}: train")


def read_checkpoint(path: str, model: nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Checkpoint:
    """Read and verify the checkpoint ``path`` (a regular file, read once); a corrupt, foreign
    or older-format file, or one whose fields are out of range, raises :class:`ArtifactError`
    naming the problem.

    Before any tensor data is read: its header's tensor table (against ``model``'s state dict
    and ``optimizer``'s parameters when given), its size, and every progress field (epoch
    within the run's epochs, best epoch, one metrics row per epoch, optimizer groups like
    ``optimizer``'s). Then its content is checked against the sha256 it records."""
    where = f"checkpoint {path!r}"
    fd = open_regular(path, "checkpoint")
    try:
        table, size, state, text, digest = _header(fd, path)
        if model is not None:
            model_table, params = checks.expected_checkpoint_table(model, optimizer)
            checks.check_checkpoint_table(table, model_table, params if optimizer is not None else None, where)
        fields = checks.progress_fields(state, where)
        plain_optimizer = checks.optimizer_state(state.get("optimizer"), optimizer, where)
        if os.fstat(fd).st_size != size:
            raise ArtifactError(f"{where} is not a readable safetensors file: {os.fstat(fd).st_size:,} bytes on disk, "
                                f"its header describes {size:,}")
        data = read_fd(fd, size, "checkpoint", path)
    finally:
        os.close(fd)
    tensors = tensors_from_bytes(data, "checkpoint", path)
    if digest != _tensor_digest(tensors, text):
        raise ArtifactError(f"{where} is corrupt: its content does not match the sha256 it records")
    progress = Progress(**fields)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    model_state = part("model.")
    best_state = part("best.") or model_state
    optimizer_state = _optimizer_from_files({k: v for k, v in tensors.items() if k.startswith("optimizer.")},
                                            plain_optimizer)
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


def _run_manifest_files(data: bytes, path: str) -> dict[str, str]:
    from bnnkit import schema

    doc = parse_json(data, "run manifest", path)
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("kind") != MANIFEST_KIND or not isinstance(files, dict):
        raise ArtifactError(f"{path!r} is not a bnnkit run manifest (kind {MANIFEST_KIND!r} with a 'files' table)")
    if doc.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"run manifest {path!r} has format version {schema.show(doc.get('format_version'))}; "
                            f"this bnnkit reads {RUN_FORMAT_VERSION}")
    return schema.dict_of(schema.sha256, key=lambda k, w: schema.string(k, w, RUN_FILES))(files, f"{path!r}: files")


def _check_listed(files: dict[str, str], name: str, data: bytes | None, run_dir: str, digest: str | None = None
                  ) -> None:
    """``data`` (the bytes of the run file ``name``, or their ``digest``) must be what the run
    manifest records; ``data=None`` checks only that the file is listed."""
    file = os.path.join(run_dir, name)
    if name not in files:
        raise ArtifactError(f"{file!r} is not listed in {MANIFEST_FILE} (the run has no finished epoch yet, "
                            "or it was interrupted: bnnkit train --resume --out DIR completes it)")
    if data is None and digest is None:
        return
    if (digest or hashlib.sha256(data).hexdigest()) != files[name]:
        raise ArtifactError(f"{file!r} does not match its sha256 in {MANIFEST_FILE}: the file was modified or "
                            "corrupted (or the run was interrupted while writing it: bnnkit train --resume "
                            "--out DIR repairs an interrupted run)")


def verify_run_files(run_dir: str, names: tuple[str, ...]) -> None:
    """Check the files ``names`` of ``run_dir`` against its manifest; raise :class:`ArtifactError`
    naming the first file that is missing, unlisted or changed."""
    with Directory(run_dir, "run directory") as d:
        files = _run_manifest_files(d.read(MANIFEST_FILE, "run manifest", max_bytes=MAX_JSON_BYTES),
                                    os.path.join(run_dir, MANIFEST_FILE))
        for name in names:
            _check_listed(files, name, None, run_dir)
            try:
                size = d.size(name, "run file")
            except ArtifactError:
                raise ArtifactError(f"{os.path.join(run_dir, name)!r}, listed in {MANIFEST_FILE}, is missing or "
                                    "not a regular file") from None
            _check_listed(files, name, None, run_dir, d.sha256(name, "run file", size=size))


def read_run_files(run_dir: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(checked config, {file name: bytes})`` of the files :func:`load_run` uses
    (``config.json``, ``model.safetensors``, ``run-manifest.json``), each read once as a
    regular file inside the run directory and checked against the run manifest from the
    bytes returned; the model file's header is compared with the model the config describes
    (built on the meta device) before its data is read. ``bnnkit export`` copies these bytes."""
    if not os.path.isdir(run_dir):
        raise ArtifactError(f"run directory {run_dir!r} does not exist")
    export_manifest = os.path.join(run_dir, "manifest.json")  # what bnnkit export writes beside trained/
    if not os.path.exists(os.path.join(run_dir, CONFIG_FILE)) and os.path.lexists(export_manifest):
        raise ArtifactError(f"{run_dir!r} is an export directory (bnnkit export), not a training run; its trained "
                            f"model is in {os.path.join(run_dir, 'trained')!r}; check it with: "
                            f"bnnkit validate {run_dir}")
    with Directory(run_dir, "run directory") as d:
        config_bytes = d.read(CONFIG_FILE, "run config", max_bytes=MAX_JSON_BYTES)
        config = checks.run_config(parse_json(config_bytes, "run config", os.path.join(run_dir, CONFIG_FILE)),
                                   f"run config {os.path.join(run_dir, CONFIG_FILE)!r}")
        manifest_bytes = d.read(MANIFEST_FILE, "run manifest", max_bytes=MAX_JSON_BYTES)
        files = _run_manifest_files(manifest_bytes, os.path.join(run_dir, MANIFEST_FILE))
        _check_listed(files, CONFIG_FILE, config_bytes, run_dir)
        _check_listed(files, MODEL_FILE, None, run_dir)
        table = tensor_table(build_model_of_run(config, run_dir, meta=True).state_dict())
        model_path = os.path.join(run_dir, MODEL_FILE)
        fd = d.open(MODEL_FILE, "model file")
        try:
            model_bytes = read_safetensors_checked(fd, "model file", model_path,
                                                   lambda t: _compare_tables(table, t, f"run {run_dir!r}"))
        except ArtifactError as e:
            raise ArtifactError(f"{e} (a run interrupted while writing it is repaired by bnnkit train --resume "
                                "--out DIR)") from None
        finally:
            os.close(fd)
        _check_listed(files, MODEL_FILE, model_bytes, run_dir)
    return config, {CONFIG_FILE: config_bytes, MODEL_FILE: model_bytes, MANIFEST_FILE: manifest_bytes}


def load_run(run_dir: str, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the best model of a training run: ``(model in eval mode, config dict)``.

    ``config.json`` (every field checked, :func:`bnnkit.train.checks.run_config`) and
    ``model.safetensors`` are read once each (:func:`read_run_files`) and checked against the
    run manifest from the bytes that are then used; the model is built on the meta device
    and compared with the tensor file's header before the file's data is read or any memory
    is allocated for it. Raises :class:`~bnnkit.artifacts.ArtifactError` for a missing,
    corrupt or mismatched run.
    """
    config, data = read_run_files(run_dir)
    return model_from_run_files(config, data[MODEL_FILE], run_dir, map_location), config


def run_files_model(config_bytes: bytes, model_bytes: bytes, manifest_bytes: bytes, run_dir: str,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_run` of a run whose three files were read (and verified) elsewhere, e.g. the
    ``trained/`` copy of an export, whose manifest records each file's size and digest."""
    config = checks.run_config(parse_json(config_bytes, "run config", os.path.join(run_dir, CONFIG_FILE)),
                               f"run config {os.path.join(run_dir, CONFIG_FILE)!r}")
    files = _run_manifest_files(manifest_bytes, os.path.join(run_dir, MANIFEST_FILE))
    _check_listed(files, CONFIG_FILE, config_bytes, run_dir)
    _check_listed(files, MODEL_FILE, model_bytes, run_dir)
    return model_from_run_files(config, model_bytes, run_dir, map_location), config


def _compare_tables(want: dict[str, dict[str, Any]], have: dict[str, dict[str, Any]], where: str) -> None:
    from bnnkit.schema import show

    have = {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in have.items()}
    if want != have:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise ArtifactError(f"{where}: the model it describes and its stored tensors differ at {show(diff[:5])}"
                            f"{'...' if len(diff) > 5 else ''} (the model would hold "
                            f"{[want.get(k) for k in diff[:2]]}, the file has {[have.get(k) for k in diff[:2]]})")


def build_model_of_run(config: dict[str, Any], run_dir: str, *, meta: bool) -> nn.Module:
    """The model a checked run config describes, built on the meta device (``meta=True``: no
    memory, whatever its arguments say) or for real (without moving the caller's RNG)."""
    from bnnkit import models

    def build() -> nn.Module:
        return models.create(config["model"], **config["model_kwargs"])

    if not meta:
        with torch.random.fork_rng(devices=[]):
            return build()
    try:
        with torch.device("meta"):
            return build()
    except (ValueError, TypeError, RuntimeError, OverflowError, MemoryError) as e:
        raise ArtifactError(f"run {run_dir!r}: the model cannot be built: {type(e).__name__}: "
                            f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None


def model_from_run_files(config: dict[str, Any], model_bytes: bytes, run_dir: str,
                         map_location: str | torch.device = "cpu") -> nn.Module:
    """The run's model (eval mode) from its checked config and the bytes of its tensor file,
    compared with what the model holds (built on the meta device) before anything is built."""
    model_path = os.path.join(run_dir, MODEL_FILE)
    _compare_tables(tensor_table(build_model_of_run(config, run_dir, meta=True).state_dict()),
                    tensor_table_from_bytes(model_bytes, "model file", model_path), f"run {run_dir!r}")
    model = build_model_of_run(config, run_dir, meta=False)
    load_state(model, tensors_from_bytes(model_bytes, "model file", model_path), model_path)
    return model.to(map_location).eval()
