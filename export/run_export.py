"""``export_run``: what ``bnnkit export`` writes for a training run, as one directory.

    DIR/manifest.json, DIR/model.safetensors   the packed artifact (docs/format.md; bnnkit.export.load)
    DIR/trained/config.json, model.safetensors the run's best model, the reference of ``bnnkit validate``
    DIR/model.onnx                             the ONNX graph (with ``onnx=True``)

Each of the three records the run's input spec (preprocessing, class names:
:class:`bnnkit.inputs.InputSpec`): the manifest's ``input_spec``, ``trained/config.json``'s
``input_spec`` and the ONNX file's ``metadata_props["bnnkit.input_spec"]``.

The directory is built under a temporary name and renamed into place, so a failure (an
unsupported layer, an ONNX graph that does not reproduce the model) or a kill leaves nothing
behind, and a directory another writer created meanwhile is never replaced. The packed
manifest, written last, lists every file of the directory with its SHA-256.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import torch

from bnnkit.artifacts import ArtifactError, staged_directory
from bnnkit.inputs import InputSpec

from .layout import ONNX_FILE, RUN_FILES, TRAINED_DIR
from .runtime.model import PackedModel
from .onnx import GraphOps, OnnxExport, to_onnx
from .packing import pack
from .runtime.sizes import artifact_bytes, is_packed_artifact



@dataclasses.dataclass(frozen=True)
class RunExport:
    """What :func:`export_run` wrote. ``packed_bytes``: the packed artifact's files;
    ``fp32_state_bytes``: the trained model's state dict in fp32."""

    directory: str
    model_name: str
    packed: PackedModel
    packed_bytes: int
    fp32_state_bytes: int
    onnx: OnnxExport | None

    @property
    def compression(self) -> float:
        return self.fp32_state_bytes / self.packed_bytes


def onnx_example_input(input_shape: tuple[int, ...]) -> torch.Tensor:
    """A seeded standard-normal batch of 2 for the ONNX exporter (only its shape matters: the
    batch dim stays dynamic)."""
    return torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))


def _within(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it, comparing resolved paths (symlinks,
    ``..`` and relative spellings of the same place are the same place)."""
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _check_destination(run_dir: str, out: str, overwrite: bool) -> None:
    """``out`` may replace only an earlier export directory (or an empty one), never the run."""
    if _within(run_dir, out):
        raise ValueError(f"--out {out!r} would replace the training run {run_dir!r}; choose another directory")
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.listdir(out)):
        return
    if not overwrite:
        raise FileExistsError(f"{out!r} already exists; pass --overwrite (overwrite=True in Python) to replace it")
    if not os.path.isdir(out) or not is_packed_artifact(out):
        raise FileExistsError(f"refusing to replace {out!r}: it is not an export directory (no bnnkit manifest.json); "
                              "--overwrite replaces only an earlier export or an empty directory")


def run_input_spec(run_dir: str, config: dict) -> InputSpec | None:
    """The input spec a run's ``config.json`` records (``None`` when its dataset has none),
    checked against the run's input shape and class count."""
    where = f"{os.path.join(run_dir, 'config.json')!r} input_spec"
    num_classes, input_shape = int(config["num_classes"]), tuple(config["input_shape"])
    if config.get("input_spec") is None:
        return None
    spec = InputSpec.from_json(config["input_spec"], where)
    if spec.shape != input_shape or (spec.class_names is not None and len(spec.class_names) != num_classes):
        raise ArtifactError(f"{where} describes inputs {list(spec.shape)} and "
                            f"{len(spec.class_names or ())} class names; the run has input_shape "
                            f"{list(input_shape)} and {num_classes} classes")
    return spec


def export_artifact_bytes(run_dir: str, model: torch.nn.Module | None = None,
                          config: dict | None = None, onnx_ops: str = "integer") -> dict[str, int]:
    """The bytes of the packed artifact (``model.safetensors`` + ``manifest.json``) that
    :func:`export_run` writes for ``run_dir``: ``{"export": ..., "export_onnx": ...}``, without
    and with ``onnx=True``. The manifest lists every file of the export directory with its
    size and SHA-256, so its own size depends on them (``trained/``, ``model.onnx``): this packs
    the run and writes the same files, the ONNX graph included, into a temporary directory.
    ``model`` and ``config``: ``load_run(run_dir)``'s, when already loaded."""
    from bnnkit.train import load_run

    if model is None or config is None:
        model, config = load_run(run_dir)
    spec = run_input_spec(run_dir, config)
    input_shape = tuple(config["input_shape"])
    packed = pack(model, architecture={"name": config["model"], "kwargs": config["model_kwargs"]},
                  input_shape=input_shape, input_spec=spec)
    trained = {f"{TRAINED_DIR}/{name}": os.path.join(run_dir, name) for name in RUN_FILES}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        graph = os.path.join(tmp, ONNX_FILE)
        to_onnx(model, graph, onnx_example_input(input_shape), input_spec=spec, ops=onnx_ops, verify=False)
        for key, listed in (("export", trained), ("export_onnx", {**trained, ONNX_FILE: graph})):
            packed.save(os.path.join(tmp, key), extra_files=listed)
            sizes[key] = artifact_bytes(os.path.join(tmp, key))
    return sizes


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, onnx: bool = False,
               overwrite: bool = False, onnx_ops: str = "integer") -> RunExport:
    """Export the best model of the training run ``run_dir`` (``bnnkit train --out``) to ``out``:
    the packed artifact, a copy of the trained model, and with ``onnx=True`` the ONNX graph
    (packed weights, verified in ONNX Runtime; ``onnx_ops``: ``"integer"`` or ``"float"``, see
    :func:`~bnnkit.export.to_onnx`). An existing ``out`` is replaced only with ``overwrite=True``."""
    from bnnkit.train.checkpoint import model_from_run_files, read_run_files

    run_dir = os.fspath(run_dir)
    onnx_ops = GraphOps.parse(onnx_ops).value  # a bad value fails before any work
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"run directory {run_dir!r} does not exist")
    _check_destination(run_dir, os.fspath(out), overwrite)
    config, run_files = read_run_files(run_dir)  # read once: the copy in trained/ is what was checked and packed
    model = model_from_run_files(config, run_files["model.safetensors"], run_dir)
    input_shape = tuple(config["input_shape"])
    spec = run_input_spec(run_dir, config)
    packed = pack(model, architecture={"name": config["model"], "kwargs": config["model_kwargs"]},
                  input_shape=input_shape, input_spec=spec)
    with staged_directory(os.fspath(out), overwrite=overwrite) as staging:
        os.makedirs(os.path.join(staging, TRAINED_DIR))
        for name in RUN_FILES:
            with open(os.path.join(staging, TRAINED_DIR, name), "wb") as f:
                f.write(run_files[name])
        onnx_info = to_onnx(model, os.path.join(staging, ONNX_FILE), onnx_example_input(input_shape),
                            input_spec=spec, ops=onnx_ops) if onnx else None
        packed.write_files(staging)  # last: its manifest lists every file of the directory with its SHA-256
        packed_bytes = artifact_bytes(staging)
    directory = os.path.abspath(os.fspath(out))
    if onnx_info is not None:
        onnx_info = dataclasses.replace(onnx_info, path=os.path.join(directory, ONNX_FILE))
    return RunExport(directory=directory, model_name=config["model"], packed=packed, packed_bytes=packed_bytes,
                     fp32_state_bytes=packed.fp32_state_bytes, onnx=onnx_info)
