"""Artifact sizes for ``bnnkit summary``: what a packed artifact takes on disk next to fp32."""

from __future__ import annotations

import os
from typing import Any

from bnnkit.artifacts import ArtifactError, read_json

from .manifest import FORMAT_KIND
from .model import read_manifest

MANIFEST_FILE = "manifest.json"


def is_packed_artifact(directory: str) -> bool:
    """Whether ``directory`` holds a manifest claiming to be a packed artifact (not yet checked)."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.lexists(path):
        return False
    try:
        manifest = read_json(path, "manifest")
    except ArtifactError:
        return False
    return isinstance(manifest, dict) and manifest.get("kind") == FORMAT_KIND


def artifact_bytes(directory: str, tensor_file: str = "model.safetensors") -> int:
    """Bytes of the packed artifact's own files (manifest and tensor file); an export directory
    also holds ``trained/``, ``model.onnx`` and reports, which do not count."""
    return sum(os.path.getsize(os.path.join(directory, n)) for n in (MANIFEST_FILE, tensor_file))


def packed_artifact_report(directory: str) -> dict[str, Any]:
    """Per-layer encodings and the artifact's size next to the fp32 state dict it came from.
    The artifact is checked first (kind, version, every field, checksums, tensor table), as
    ``load`` does, without loading its tensors."""
    manifest, _ = read_manifest(directory, load_tensors=False)
    size = artifact_bytes(directory, manifest["tensor_file"])
    fp32 = manifest["fp32_state_dict_bytes"]
    arch = manifest["architecture"]
    name = arch["name"] if arch else "model outside the zoo"
    lines = [f"packed artifact {directory}: {name}, format version {manifest['format_version']}"]
    layers = manifest["layers"]
    width = max([len(n) for n in layers] + [5])
    lines.append(f"{'layer'.ljust(width)}  input     output  relu   residual")
    for layer, enc in layers.items():
        lines.append(f"{layer.ljust(width)}  {enc['input']:<8}  {enc['output']:<6}  {str(enc['relu']):<5}  "
                     f"{enc['residual']}")
    ratio = fp32 / size if fp32 else float("nan")
    lines.append(f"artifact {size:,} bytes vs fp32 state dict {fp32:,} bytes: {ratio:.1f}x smaller"
                 if fp32 else f"artifact {size:,} bytes")
    spec = manifest.get("input_spec")
    return {"artifact": directory, "model": name, "layers": layers, "artifact_bytes": size,
            "fp32_state_dict_bytes": fp32, "compression": ratio,
            "input_spec": None if spec is None else spec.to_json(), "text": "\n".join(lines)}
