"""Packed artifacts: save -> load is bit-identical, the size promise, clear errors on bad
artifacts, models outside the zoo (loaded in a fresh process), torch.compile / torch.export,
and the CLI (export, summary)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bnnkit import models
from bnnkit.artifacts import ArtifactError, file_entry
from bnnkit.backend import use_backend
from bnnkit.cli import main
from bnnkit.export import FORMAT_VERSION, PackError, load, pack
from bnnkit.nn import BinaryConv2d, BinaryLinear

SEED = 0


def _resnet20():
    torch.manual_seed(SEED)
    model = models.create("resnet20").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _saved(tmp_path, name="resnet20"):
    model = _resnet20()
    packed = pack(model, architecture={"name": name, "kwargs": {}}, input_shape=(3, 32, 32))
    out = tmp_path / "artifact"
    packed.save(out)
    return model, packed, out


def test_save_load_bit_identical(tmp_path):
    _, packed, out = _saved(tmp_path)
    loaded = load(out)
    assert sorted(os.listdir(out)) == ["manifest.json", "model.safetensors"]
    a, b = packed.body.state_dict(), loaded.body.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(packed(x), loaded(x))
    assert loaded.layers == packed.layers and loaded.architecture == packed.architecture


def test_resnet20_artifact_is_15x_smaller_than_fp32(tmp_path):
    model, _, out = _saved(tmp_path)
    artifact = sum(os.path.getsize(out / f) for f in os.listdir(out))
    fp32 = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert fp32 / artifact >= 15, f"artifact {artifact} bytes, fp32 state dict {fp32} bytes"
    manifest = json.loads((out / "manifest.json").read_text())
    words = manifest["tensors"]["layer3.1.conv2.weight_bits"]
    assert words == {"dtype": "int32", "shape": [64, 3, 3, 2]}  # OHWI, 64 input channels in 2 words per tap


def test_wrong_version_is_refused(tmp_path):
    _, _, out = _saved(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}; this bnnkit reads versions "
                                            f"{FORMAT_VERSION}"):
        load(out)


def test_checksum_mismatch_is_refused(tmp_path):
    _, _, out = _saved(tmp_path)
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load(out)


def test_missing_tensor_is_refused(tmp_path):
    _, _, out = _saved(tmp_path)
    tensors = load_file(out / "model.safetensors")
    del tensors["layer2.1.conv1.thresholds"]
    save_file(tensors, out / "model.safetensors")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = file_entry(str(out / "model.safetensors"))  # consistent checksum
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"listed but absent \['layer2.1.conv1.thresholds'\]"):
        load(out)
    del manifest["tensors"]["layer2.1.conv1.thresholds"]  # a manifest edited to match: the model needs it
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"missing tensor\(s\) \['layer2.1.conv1.thresholds'\]"):
        load(out)


@pytest.mark.parametrize("edit", ["dtype", "layer", "tensor_file"])
def test_edited_manifest_is_refused(tmp_path, edit):
    _, _, out = _saved(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    if edit == "dtype":
        manifest["tensors"]["linear.weight"]["dtype"] = "float16"
        match = "says tensor 'linear.weight' is .*the manifest was modified"
    elif edit == "layer":
        manifest["layers"]["layer1.0.conv1"]["relu"] = False
        match = "describes layer\\(s\\) 'layer1.0.conv1' differently"
    else:
        manifest["tensor_file"] = "../elsewhere.safetensors"
        match = "a relative path inside the directory"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=match):
        load(out)
    if edit != "layer":  # the artifact-level checks also guard bnnkit summary
        assert main(["summary", str(out)]) == 2


def test_missing_files_and_wrong_kind(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "nothing")
    _, _, out = _saved(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "kind": "bnnkit-run"}))
    with pytest.raises(ArtifactError, match="not a bnnkit-packed artifact"):
        load(out)
    (out / "manifest.json").write_text(json.dumps(manifest))
    os.remove(out / "model.safetensors")
    with pytest.raises(ArtifactError, match="missing"):
        load(out)


class CustomNet(nn.Module):
    """A model outside the zoo: its own block structure, a binary linear head, a bias."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(24)
        self.conv = BinaryConv2d(24, 40, 3, stride=2, padding=1, bias=True, scale="channel")
        self.bn1 = nn.BatchNorm2d(40)
        self.act = nn.ReLU()
        self.head = BinaryLinear(40, 16, scale="none")
        self.bn2 = nn.BatchNorm1d(16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        x = self.act(self.bn1(self.conv(x)))  # BN before ReLU: folded into the scale
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.out(torch.relu(self.bn2(self.head(x))))


def _custom():
    torch.manual_seed(3)
    model = CustomNet().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_model_outside_the_zoo_loads_in_a_fresh_process(tmp_path):
    model = _custom()
    packed = pack(model, input_shape=(3, 9, 9))
    assert packed.layers["conv"]["relu"] and packed.layers["head"]["input"] == "binarize"
    out = tmp_path / "custom"
    packed.save(out)
    assert sorted(os.listdir(out)) == ["manifest.json", "model.safetensors"]  # the graph is in the manifest
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        want = packed(x)
        trained = model(x)
    assert torch.equal(want.argmax(1), trained.argmax(1))
    assert (want - trained).abs().max() <= 1e-4 * trained.abs().max()
    save_file({"x": x, "y": want}, tmp_path / "io.safetensors")
    script = (
        "import sys, torch, bnnkit.export\n"
        "from safetensors.torch import load_file\n"
        f"t = load_file({str(tmp_path / 'io.safetensors')!r})\n"
        f"m = bnnkit.export.load({str(out)!r})\n"
        "with torch.no_grad():\n"
        "    y = m(t['x'])\n"
        "    y5 = m(torch.cat([t['x'], t['x'][:2]]))[:3]\n"
        "assert torch.equal(y, t['y']), (y - t['y']).abs().max()\n"
        "assert torch.equal(y5, t['y'])\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BNNKIT_BACKEND="torch")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"


def test_saving_outside_the_zoo_needs_no_input_shape(tmp_path):
    model = _custom()
    pack(model).save(tmp_path / "x")
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "x")(x), pack(model)(x))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_torch_compile_and_export(tmp_path, backend):
    """Compiled and exported, the packed ops stay single nodes (the layers call them, not their
    bodies, under tracing) and give the eager outputs on the reference and the native kernels."""
    packed = pack(_resnet20())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), use_backend(backend):
        want = packed(x)
        compiled = torch.compile(packed, backend="aot_eager", fullgraph=True)
        assert torch.equal(compiled(x), want)
        program = torch.export.export(packed, (x,))
        nodes = [n for n in program.graph.nodes if n.op == "call_function"]
        assert any("bnnkit.packed_conv2d" in str(n.target) for n in nodes)
        assert torch.equal(program.module()(x), want)


def test_unsupported_layers_are_named():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(BinaryConv2d(8, 8, 3, padding=1, groups=2))

        def forward(self, x):
            return self.block(x)

    with pytest.raises(PackError, match=r"block\.0: grouped convolution"):
        pack(Grouped())

    class NotSign(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = BinaryLinear(8, 4, input_estimator=torch.tanh)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(PackError, match="fc: the callable input estimator's forward is not binarize"):
        pack(NotSign())
    with pytest.raises(ValueError, match="unknown model"):
        pack(_resnet20(), architecture={"name": "resnet50", "kwargs": {}})
    with pytest.raises(ValueError, match="does not describe this model"):
        pack(models.create("digits_cnn"), architecture={"name": "resnet20", "kwargs": {}})
    with pytest.raises(ValueError, match="does not describe this model"):
        pack(models.create("digits_mlp", hidden=64), architecture={"name": "digits_mlp", "kwargs": {}})


def test_cli_export_and_summary(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--model", "digits_cnn", "--dataset", "synthetic", "--out", run, "--epochs", "1",
                 "--batch-size", "64", "--model-arg", "channels=8", "--no-progress"]) == 0
    capsys.readouterr()
    out = str(tmp_path / "packed")
    assert main(["export", run, "--out", out, "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "smaller" in printed and "model.onnx" in printed and f"bnnkit validate {out}" in printed
    assert sorted(os.listdir(out)) == ["manifest.json", "model.onnx", "model.safetensors", "trained"]
    assert sorted(os.listdir(os.path.join(out, "trained"))) == ["config.json", "model.safetensors", "run-manifest.json"]
    packed = load(out)
    from bnnkit.train import load_run

    model, _ = load_run(run)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(packed(x).argmax(1), model(x).argmax(1))
    assert main(["summary", out, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the packed artifact's own files; trained/ and model.onnx do not count
    assert report["artifact_bytes"] == sum(os.path.getsize(os.path.join(out, f))
                                           for f in ("manifest.json", "model.safetensors"))
    assert report["fp32_state_dict_bytes"] > report["artifact_bytes"]
    assert main(["summary", run, "--json"]) == 0  # what summary RUN says export writes is what it wrote
    predicted = json.loads(capsys.readouterr().out)["packed_artifact"]
    assert predicted["artifact_bytes_with_onnx"] == report["artifact_bytes"]
    assert main(["summary", run]) == 0
    assert "as bnnkit export writes it) " in capsys.readouterr().out
    assert main(["export", run, "--out", out]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["export", run, "--out", out, "--overwrite"]) == 0  # replaced: no ONNX graph this time
    assert f": {predicted['artifact_bytes']:,} bytes" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(out, "model.onnx"))
    assert sum(os.path.getsize(os.path.join(out, f)) for f in ("manifest.json", "model.safetensors")) == \
        predicted["artifact_bytes"]


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, capsys):
    import bnnkit.export.run_export as run_export

    run = str(tmp_path / "run")
    assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", run, "--epochs", "1",
                 "--model-arg", "hidden=16", "--no-progress"]) == 0

    def failing_to_onnx(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(run_export, "to_onnx", failing_to_onnx)
    out = tmp_path / "exports" / "digits"
    with pytest.raises(RuntimeError, match="exporter failed"):
        run_export.export_run(run, out, onnx=True)
    assert os.listdir(tmp_path / "exports") == []
    assert main(["export", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "run directory" in capsys.readouterr().err and not out.exists()
    # --overwrite replaces an earlier export only: never the run, a folder holding it, or other files
    for target in (run, str(tmp_path)):
        assert main(["export", run, "--out", target, "--overwrite"]) == 2
        assert "would replace the training run" in capsys.readouterr().err
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["export", run, "--out", str(other), "--overwrite"]) == 2
    assert "not an export directory" in capsys.readouterr().err and (other / "keep.txt").exists()
    assert os.path.isfile(os.path.join(run, "metrics.jsonl")) and os.path.isfile(os.path.join(run, "config.json"))
