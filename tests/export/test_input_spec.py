"""The input spec from train to export: run config, packed manifest, trained copy, ONNX metadata,
summary; custom models through pack / to_onnx; old artifacts and runs without one."""

import json
import shutil

import onnx
import pytest
import torch

import bnnkit
import bnnkit.export
from bnnkit.artifacts import ArtifactError
from bnnkit.cli import main
from bnnkit.data import dataset_input_spec
from bnnkit.export.onnx.export import INPUT_SPEC_KEY
from bnnkit.inputs import InputSpec


def test_export_records_the_runs_spec_in_all_three_files(digits_artifact):
    spec = dataset_input_spec("digits")
    manifest = json.loads((digits_artifact / "manifest.json").read_text())
    trained = json.loads((digits_artifact / "trained" / "config.json").read_text())
    meta = {p.key: p.value for p in onnx.load(str(digits_artifact / "model.onnx")).metadata_props}
    assert manifest["input_spec"] == trained["input_spec"] == json.loads(meta[INPUT_SPEC_KEY]) == spec.to_json()
    assert bnnkit.export.load(digits_artifact).input_spec == spec


def test_summary_shows_the_spec(digits_artifact, capsys):
    assert main(["summary", str(digits_artifact)]) == 0
    out = capsys.readouterr().out
    assert "preprocessing: raw values in [0, 16]; x / 8 - 1" in out and "classes (10): 0, 1, 2" in out
    assert main(["summary", str(digits_artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_spec"]["class_names"][9] == "9"
    assert main(["summary", str(digits_artifact / "trained")]) == 0
    assert "input: float32 (N, 1, 8, 8), layout NCHW" in capsys.readouterr().out


def test_a_malformed_spec_in_a_manifest_names_the_field(digits_artifact, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(digits_artifact, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["input_spec"]["preprocessing"].update(mean=[0.5, 0.5], std=[1.0, 1.0])
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest of .*: input_spec\.preprocessing\.mean: expected 1 number \("):
        bnnkit.export.load(bad)
    assert main(["summary", str(bad)]) == 2
    assert "input_spec.preprocessing.mean" in capsys.readouterr().err
    manifest["input_spec"] = {**dataset_input_spec("cifar10").to_json()}
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"input_spec.shape \[3, 32, 32\] differs from input_shape \[1, 8, 8\]"):
        bnnkit.export.load(bad)


class _Custom(torch.nn.Module):
    """A model outside the zoo."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = bnnkit.nn.BinaryConv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(self.stem(x))).flatten(1))


def test_custom_models_take_a_spec_in_pack_and_to_onnx(tmp_path):
    torch.manual_seed(0)
    model = _Custom().eval()
    spec = InputSpec((3, 4, 4), value_range=(0, 255), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     class_names=("red", "green", "blue"))
    packed = bnnkit.export.pack(model, input_spec=spec)
    assert packed.input_shape == (3, 4, 4)  # taken from the spec
    packed.save(tmp_path / "packed")
    assert bnnkit.export.load(tmp_path / "packed").input_spec == spec
    bnnkit.export.to_onnx(model, tmp_path / "m.onnx", torch.randn(2, 3, 4, 4), input_spec=spec)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert InputSpec.from_json(json.loads(meta[INPUT_SPEC_KEY])) == spec
    with pytest.raises(ValueError, match=r"input_spec describes inputs of shape \(3, 4, 4\), example_input has"):
        bnnkit.export.to_onnx(model, tmp_path / "n.onnx", torch.randn(2, 3, 5, 5), input_spec=spec)
    with pytest.raises(ValueError, match="input_spec describes inputs of shape"):
        bnnkit.export.pack(model, input_shape=(3, 8, 8), input_spec=spec)
    with pytest.raises(TypeError, match="InputSpec or None"):
        packed.input_spec = spec.to_json()
    packed.input_spec = None
    packed.save(tmp_path / "no-spec")
    assert json.loads((tmp_path / "no-spec" / "manifest.json").read_text())["input_spec"] is None
