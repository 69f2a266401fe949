"""safetensors + JSON artifacts: atomic writes and the checks on read."""

import os

import pytest
import torch

from bnnkit.artifacts import ArtifactError, read_artifact, read_tensors, write_artifact, write_json, write_tensors


def test_artifact_roundtrip(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.int32).reshape(2, 3), "b": torch.randn(4)}
    write_artifact(str(tmp_path / "art"), tensors, {"layers": [1, 2]}, kind="test", version=3)
    manifest, back = read_artifact(str(tmp_path / "art"), kind="test", versions=(3,))
    assert manifest["layers"] == [1, 2] and manifest["format_version"] == 3
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
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


def test_writes_report_each_step_to_the_hook_and_return_the_sha256(tmp_path):
    from bnnkit.artifacts import set_write_hook, sha256_file

    events = []
    previous = set_write_hook(lambda event, path: events.append((event, os.path.basename(path))))
    try:
        digest = write_json(str(tmp_path / "a.json"), {"x": 1})
    finally:
        set_write_hook(previous)
    tmp = events[0][1]
    assert tmp.startswith(f".a.json.{os.getpid()}.") and tmp.endswith(".tmp")
    assert events == [("create", tmp), ("written", tmp), ("rename", "a.json")]
    assert digest == sha256_file(str(tmp_path / "a.json"))


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    import subprocess
    import sys

    from bnnkit.artifacts import remove_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f".a.json.{dead.pid}.xyz.tmp", f".a.json.{os.getpid()}.xyz.tmp", ".b.json.1.xyz.tmp", "a.json"]
    for name in names:
        (tmp_path / name).write_text("")
    assert remove_temporaries(str(tmp_path), ["a.json"]) == [str(tmp_path / names[0])]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])
    remove_temporaries(str(tmp_path), ["a.json"], only_dead_owners=False)  # a caller holding the lock
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])


def test_check_writable_names_the_problem_and_creates_nothing(tmp_path):
    from bnnkit.artifacts import check_writable

    (tmp_path / "f").write_text("")
    check_writable(str(tmp_path / "new" / "deeper"), "--out", directory=True)
    check_writable(str(tmp_path / "f"), "--json", directory=False)  # replaced by a rename: fine
    with pytest.raises(ValueError, match="--out .* is a file, not a directory"):
        check_writable(str(tmp_path / "f"), "--out", directory=True)
    with pytest.raises(ValueError, match="cannot be created: .* is a file, not a directory"):
        check_writable(str(tmp_path / "f" / "x"), "--out", directory=True)
    with pytest.raises(ValueError, match="--json .* is a directory; give a file path"):
        check_writable(str(tmp_path), "--json", directory=False)
    assert os.listdir(tmp_path) == ["f"]
