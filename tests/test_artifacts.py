"""safetensors + JSON artifacts: atomic writes and the checks on read."""

import os

import pytest
import torch

from bnnkit.artifacts import ArtifactError, read_artifact, read_tensors, write_artifact, write_json, write_tensors


def test_artifact_roundtrip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.randn(4)}
    write_artifact(str(tmp_path / "art"), tensors, {"layers": [1, 2]}, kind="test", version=3)
    manifest, back = read_artifact(str(tmp_path / "art"), kind="test", versions=(3,))
    assert manifest["layers"] == [1, 2] and manifest["format_version"] == 3 and len(manifest["files"]["model.safetensors"]) == 64
    assert all(torch.equal(tensors[k], back[k]) for k in tensors)
    assert sorted(os.listdir(tmp_path)) == ["art"]  # no temporary leftovers


def test_read_artifact_errors(tmp_path):
    d = str(tmp_path / "art")
    write_artifact(d, {"a": torch.ones(3)}, {}, kind="test", version=1)
    with pytest.raises(ArtifactError, match="format version 1; this bnnkit reads versions 2"):
        read_artifact(d, kind="test", versions=(2,))
    with pytest.raises(ArtifactError, match="is not a other artifact"):
        read_artifact(d, kind="other", versions=(1,))
    with open(os.path.join(d, "model.safetensors"), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        read_artifact(d, kind="test", versions=(1,))
    os.remove(os.path.join(d, "model.safetensors"))
    with pytest.raises(ArtifactError, match="is missing"):
        read_artifact(d, kind="test", versions=(1,))
    with pytest.raises(ArtifactError, match="does not exist"):
        read_artifact(str(tmp_path / "nothing"), kind="test", versions=(1,))
    with open(os.path.join(d, "manifest.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_artifact(d, kind="test", versions=(1,))


def test_overwrite_protection(tmp_path):
    d = str(tmp_path / "art")
    write_artifact(d, {"a": torch.ones(1)}, {}, kind="test", version=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_artifact(d, {"a": torch.zeros(1)}, {}, kind="test", version=1)
    write_artifact(d, {"a": torch.zeros(1)}, {}, kind="test", version=1, overwrite=True)
    assert read_artifact(d, kind="test", versions=(1,))[1]["a"].item() == 0.0


def test_failed_write_leaves_nothing(tmp_path):
    path = str(tmp_path / "x.safetensors")
    with pytest.raises(Exception):
        write_tensors(path, {"a": torch.ones(2), "b": "not a tensor"})
    assert os.listdir(tmp_path) == []
    with pytest.raises(TypeError):
        write_json(str(tmp_path / "x.json"), {"bad": object()})
    assert os.listdir(tmp_path) == []


def test_corrupt_tensor_file(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        read_tensors(str(path))


def test_written_files_get_the_usual_permissions(tmp_path):
    """Temporary files are owner-only; what is renamed into place follows the umask like any file."""
    mask = os.umask(0o022)
    try:
        write_json(str(tmp_path / "a.json"), {"x": 1})
        write_artifact(str(tmp_path / "art"), {"a": torch.ones(1)}, {}, kind="test", version=1)
    finally:
        os.umask(mask)
    for path in (tmp_path / "a.json", tmp_path / "art" / "model.safetensors", tmp_path / "art" / "manifest.json"):
        assert os.stat(path).st_mode & 0o777 == 0o644, path
    assert os.stat(tmp_path / "art").st_mode & 0o777 == 0o755
