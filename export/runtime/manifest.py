"""The packed artifact's manifest (docs/format.md): its fields and their checks.

Every field is checked here, once, when an artifact is read (``load``, ``bnnkit summary``,
``bnnkit validate``), before anything is built from it: a malformed or hostile manifest is an
:class:`~bnnkit.artifacts.ArtifactError` naming the field and what it accepts.
"""

from __future__ import annotations

from typing import Any

from bnnkit import schema
from bnnkit.artifacts import ArtifactError, files_table

from .graph_format import check_graph
from .layers import LAYER_INPUT_KINDS, LAYER_OUTPUT_KINDS

FORMAT_KIND = "bnnkit-packed"
FORMAT_VERSION = 3
SUPPORTED_VERSIONS = (3,)
_REEXPORT = ("re-export the model with this bnnkit (bnnkit export RUN_DIR --out DIR --overwrite, or "
             "pack(model).save(DIR))")
#: Versions this bnnkit knows but no longer reads, and what to do about them.
RETIRED_VERSIONS = {1: "format 1 stored models outside the zoo as torch.export programs, which unpickle on "
                       f"load; {_REEXPORT}",
                    2: f"format 2 did not record the size of each file, which readers now check first; {_REEXPORT}"}


def _architecture(value: Any, where: str) -> dict[str, Any]:
    from bnnkit.models import list_models

    arch = schema.record({"name": lambda v, w: schema.string(v, w, tuple(list_models())),
                          "kwargs": schema.dict_of(schema.json_value, max_len=64)})(value, where)
    return arch


_LAYER = schema.record({"input": lambda v, w: schema.string(v, w, tuple(k.value for k in LAYER_INPUT_KINDS)),
                        "output": lambda v, w: schema.string(v, w, tuple(k.value for k in LAYER_OUTPUT_KINDS)),
                        "relu": schema.boolean, "residual": schema.boolean})

_FIELDS = schema.record(
    {"kind": lambda v, w: schema.string(v, w, (FORMAT_KIND,)),
     "format_version": lambda v, w: schema.integer(v, w, FORMAT_VERSION, FORMAT_VERSION),
     "bnnkit_version": lambda v, w: schema.string(v, w, max_len=64),
     "tensor_file": schema.relative_path,
     "files": files_table,
     "tensors": lambda v, w: v,  # checked against the tensor file by read_artifact
     "architecture": schema.optional(_architecture),
     "input_shape": schema.optional(schema.input_shape),
     "layers": schema.dict_of(_LAYER, max_len=100_000),
     "fp32_state_dict_bytes": schema.optional(lambda v, w: schema.integer(v, w, 0, schema.MAX_INT)),
     "graph": check_graph},
    {"input_spec": lambda v, w: _input_spec(v, w)})


def _input_spec(value: Any, where: str):
    from bnnkit.inputs import spec_from_optional_json

    return spec_from_optional_json(value, where)


def check_manifest(manifest: Any, directory: str) -> dict[str, Any]:
    """The checked manifest of the artifact in ``directory`` (raises :class:`ArtifactError`);
    ``input_spec`` (absent in artifacts written before it existed) becomes an ``InputSpec``."""
    checked = _FIELDS(manifest, f"manifest of {directory!r}:")
    spec, shape = checked.get("input_spec"), checked["input_shape"]
    if spec is not None and shape is not None and tuple(spec.shape) != tuple(shape):
        raise ArtifactError(f"manifest of {directory!r}: input_spec.shape {list(spec.shape)} differs from "
                            f"input_shape {list(shape)}")
    return checked


def check_layers(manifest: dict[str, Any], built: dict[str, dict], directory: str) -> None:
    """``layers`` must describe the packed layers the graph builds."""
    if manifest["layers"] != built:
        changed = sorted(k for k in set(built) | set(manifest["layers"]) if built.get(k) != manifest["layers"].get(k))
        names = ", ".join(map(schema.show, changed[:5]))
        raise ArtifactError(f"manifest of {directory!r} describes layer(s) {names} differently from its graph: the "
                            "manifest was modified")
