"""``bnnkit validate``: runtimes agree on a good artifact; a corrupted one fails, naming the runtime."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file, save_file

from bnnkit.cli import main
from bnnkit.export.validation.compare import compare_outputs
from bnnkit.export.validation.report import validate_artifact


def copy_artifact(src, dst):
    shutil.copytree(src, dst)
    return dst


def flip_packed_weight_bits(artifact, resign: bool):
    """Flip 8 sign bits in every output channel of the first packed weight; with ``resign``
    the manifest's sha256 is updated, so the artifact loads and only computes differently."""
    from bnnkit.artifacts import read_json, sha256_file, write_json

    tensors = load_file(str(artifact / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.dtype == torch.int32 and k.endswith("weight_bits"))
    tensors[name][..., 0] ^= 0xFF
    save_file(tensors, str(artifact / "model.safetensors"))
    if resign:
        manifest = read_json(str(artifact / "manifest.json"))
        manifest["files"]["model.safetensors"] = sha256_file(str(artifact / "model.safetensors"))
        write_json(str(artifact / "manifest.json"), manifest)


def test_validate_agrees_and_writes_json(digits_artifact, tmp_path, capsys):
    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    assert main(["validate", str(artifact), "--samples", "100", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime-cpu" in out and "trained" in out
    report = json.loads((artifact / "validation.json").read_text())
    assert report["ok"] and report["samples"] == 100 and report["data"] == "digits"
    rows = {r["runtime"]: r for r in report["runtimes"]}
    onnx_row = rows["onnxruntime-cpu"]
    assert onnx_row["status"] == "ok"
    assert onnx_row["comparison"]["top1_agreement"] == 1.0
    assert onnx_row["comparison"]["rel_diff"] <= 1e-4
    assert onnx_row["accuracy"] == rows["trained"]["accuracy"] > 0.3  # 3 epochs on real digits; chance is 0.1
    assert onnx_row["latency_ms"] > 0
    packed_row = rows["packed"]
    assert packed_row["status"] == "ok" and packed_row["comparison"]["top1_agreement"] == 1.0
    assert packed_row["comparison"]["rel_diff"] <= 1e-4 and packed_row["accuracy"] == rows["trained"]["accuracy"]


@pytest.mark.parametrize("resign", [False, True], ids=["checksum", "resigned"])
def test_flipped_weight_bits_are_detected(digits_artifact, tmp_path, capsys, resign):
    from bnnkit.artifacts import read_json, sha256_file, write_json

    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    graph = onnx.load(str(artifact / "model.onnx"))
    target = next(i for i in graph.graph.initializer if i.name.endswith("weight_bits"))
    bits = numpy_helper.to_array(target).copy()
    bits[:, 0] ^= np.uint8(0xFF)  # flip 8 weight bits in every output channel of one layer
    target.CopyFrom(numpy_helper.from_array(bits, target.name))
    onnx.save(graph, str(artifact / "model.onnx"))
    json_path = tmp_path / "report.json"
    if not resign:  # the export's manifest lists model.onnx with its SHA-256
        assert main(["validate", str(artifact), "--samples", "64", "--json", str(json_path)]) == 1
        assert "checksum mismatch for 'model.onnx'" in capsys.readouterr().err
        return
    manifest = read_json(str(artifact / "manifest.json"))
    manifest["files"]["model.onnx"] = sha256_file(str(artifact / "model.onnx"))
    write_json(str(artifact / "manifest.json"), manifest)
    assert main(["validate", str(artifact), "--samples", "64", "--json", str(json_path)]) == 1
    err = capsys.readouterr().err
    assert "onnxruntime-cpu disagrees with trained: first disagreeing sample 0" in err
    report = json.loads(json_path.read_text())
    assert not report["ok"]
    row = next(r for r in report["runtimes"] if r["runtime"] == "onnxruntime-cpu")
    assert row["status"] == "mismatch" and row["comparison"]["first_disagreement"] == 0


@pytest.mark.parametrize("resign", [False, True], ids=["checksum", "resigned"])
def test_flipped_packed_weight_bits_are_detected(digits_artifact, tmp_path, capsys, resign):
    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    flip_packed_weight_bits(artifact, resign)
    assert main(["validate", str(artifact), "--samples", "64", "--runtime", "packed"]) == 1
    err = capsys.readouterr().err
    if resign:  # loads, computes differently
        assert "packed disagrees with trained: first disagreeing sample" in err
    else:  # the manifest's checksum catches it before anything runs
        assert "packed failed:" in err and "checksum mismatch" in err


def test_unreadable_onnx_file_fails(digits_artifact, tmp_path, capsys):
    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    data = (artifact / "model.onnx").read_bytes()
    (artifact / "model.onnx").write_bytes(data[: len(data) // 2])
    assert main(["validate", str(artifact), "--samples", "8"]) == 1
    assert "onnxruntime-cpu failed:" in capsys.readouterr().err


def test_named_runtime_that_is_unavailable_fails(digits_artifact, tmp_path, capsys):
    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    assert main(["validate", str(artifact), "--runtime", "onnxruntime-cuda", "--samples", "8"]) == 1
    assert "onnxruntime-cuda failed: onnxruntime has no CUDAExecutionProvider" in capsys.readouterr().err


def test_an_export_without_its_manifest_is_refused(digits_artifact, tmp_path, capsys):
    """The manifest lists (and checksums) the trained copy: without it nothing is trusted."""
    artifact = copy_artifact(digits_artifact, tmp_path / "a")
    (artifact / "model.onnx").unlink()
    (artifact / "manifest.json").unlink()
    assert main(["validate", str(artifact), "--samples", "8"]) == 2
    assert "manifest.json' does not exist" in capsys.readouterr().err


def test_user_errors(digits_artifact, tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    run_dir = copy_artifact(digits_artifact / "trained", tmp_path / "run")  # a run, not an export
    assert main(["validate", str(run_dir)]) == 2
    assert "is a training run, not an export directory" in capsys.readouterr().err
    assert main(["validate", str(digits_artifact), "--samples", "0", "--json", str(tmp_path / "r.json")]) == 2
    assert "--samples must be >= 1" in capsys.readouterr().err
    assert main(["validate", str(digits_artifact), "--data", "synthetic", "--samples", "4",
                 "--json", str(tmp_path / "r.json")]) == 0  # synthetic inputs of the model's shape
    with pytest.raises(ValueError, match="unknown runtime"):
        validate_artifact(str(digits_artifact), torch.zeros(2, 1, 8, 8), runtimes=["tensorrt"])


def test_compare_outputs_reports_the_first_disagreement():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    same = compare_outputs(ref, ref.clone())
    assert same.ok and same.max_abs_diff == 0 and same.first_disagreement is None
    flipped = ref.clone()
    flipped[1] = torch.tensor([1.0, 0.0])
    result = compare_outputs(ref, flipped)
    assert not result.ok and result.first_disagreement == 1 and result.top1_agreement == pytest.approx(2 / 3)
    nudged = ref.clone()
    nudged[2, 1] += 2**-10  # top-1 unchanged, 2^-11 ~ 4.9e-4 relative to max |ref| = 2
    result = compare_outputs(ref, nudged)
    assert result.top1_agreement == 1.0 and result.rel_diff == 2**-11 and result.first_disagreement == 2
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert compare_outputs(ref, nan).first_disagreement == 0
    with pytest.raises(ValueError, match="differ in shape"):
        compare_outputs(ref, ref[:2])


def test_demo_refuses_an_earlier_demo_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--no-progress"]) == 2
    assert "already exists (an earlier demo?); choose another --out" in capsys.readouterr().err


def test_demo_trains_exports_and_validates(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "where everything went" in out and str(tmp_path / "export" / "validation.json") in out
    report = json.loads((tmp_path / "export" / "validation.json").read_text())
    assert report["ok"] and report["samples"] == 450  # the whole digits test split
    assert (tmp_path / "export" / "model.onnx").is_file()
    assert (tmp_path / "export" / "trained" / "model.safetensors").is_file()
    assert (tmp_path / "export" / "manifest.json").is_file()
    rows = {r["runtime"]: r["status"] for r in report["runtimes"]}
    assert rows["packed"] == rows["onnxruntime-cpu"] == "ok"
