"""Artifact sizes for ``bnnkit summary``: what a packed artifact takes on disk next to fp32."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from torch import nn

from bnnkit.artifacts import read_artifact, read_json

from .model import FORMAT_KIND, SUPPORTED_VERSIONS


def is_packed_artifact(directory: str) -> bool:
    path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(path):
        return False
    manifest = read_json(path, "manifest")
    return isinstance(manifest, dict) and manifest.get("kind") == FORMAT_KIND


def artifact_bytes(directory: str) -> int:
    """Bytes of the packed artifact's own files (manifest, tensor file, stored program); an
    export directory also holds ``trained/``, ``model.onnx`` and reports, which do not count."""
    manifest = read_json(os.path.join(directory, "manifest.json"), "manifest")
    names = ["manifest.json", manifest.get("tensor_file", "model.safetensors"), *manifest.get("files", {})]
    return sum(os.path.getsize(os.path.join(directory, n)) for n in names)


def measured_artifact_bytes(model: nn.Module, architecture: dict[str, Any], input_shape: tuple[int, ...]) -> int:
    """Pack ``model`` and write its artifact to a temporary directory: the bytes on disk."""
    from ..packing import pack

    packed = pack(model, architecture=architecture, input_shape=input_shape)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "artifact")
        packed.save(out)
        return artifact_bytes(out)


def packed_artifact_report(directory: str) -> dict[str, Any]:
    """Per-layer encodings and the artifact's size next to the fp32 state dict it came from.
    The artifact is checked first (kind, version, checksums, tensor table), as ``load`` does."""
    manifest, _ = read_artifact(directory, kind=FORMAT_KIND, versions=SUPPORTED_VERSIONS)
    size = artifact_bytes(directory)
    fp32 = manifest.get("fp32_state_dict_bytes")
    arch = manifest.get("architecture", {})
    name = arch.get("zoo") or "model outside the zoo (torch.export program)"
    lines = [f"packed artifact {directory}: {name}, format version {manifest.get('format_version')}"]
    layers = manifest.get("layers", {})
    width = max([len(n) for n in layers] + [5])
    lines.append(f"{'layer'.ljust(width)}  input     output  relu   residual")
    for layer, enc in layers.items():
        lines.append(f"{layer.ljust(width)}  {enc['input']:<8}  {enc['output']:<6}  {str(enc['relu']):<5}  "
                     f"{enc['residual']}")
    ratio = fp32 / size if fp32 else float("nan")
    lines.append(f"artifact {size:,} bytes vs fp32 state dict {fp32:,} bytes: {ratio:.1f}x smaller"
                 if fp32 else f"artifact {size:,} bytes")
    return {"artifact": directory, "model": name, "layers": layers, "artifact_bytes": size,
            "fp32_state_dict_bytes": fp32, "compression": ratio, "text": "\n".join(lines)}
