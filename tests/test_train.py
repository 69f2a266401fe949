"""Training: the recipe improves accuracy, writes its files, resumes exactly, fails clearly."""

import json
import math
import os

import pytest
import torch

from bnnkit.artifacts import ArtifactError, read_tensors
from bnnkit.data import load_digits_tensors
from bnnkit.train import TrainConfig, load_run, train
from bnnkit.train import loop as train_loop

SMALL_MLP = {"hidden": 128}


def digits_config(out, **kw):
    base = dict(model="digits_mlp", dataset="digits", out=str(out), epochs=3, batch_size=32,
                model_kwargs=SMALL_MLP, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def untrained_test_accuracy(config):
    from bnnkit.data import load_dataset

    torch.manual_seed(config.seed)
    model = train_loop.build_model(config.resolved(), load_dataset("digits")).eval()
    x, y = load_digits_tensors("test")
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_short_digits_run_learns_and_writes_its_files(tmp_path):
    # Three epochs at lr 0.1 are a chaotic trajectory (binary nets flip on last-bit ties), so
    # the checks compare with the untrained model and with chance, with wide margins
    # (seeds 0-5 give best accuracies of 0.72-0.82 and final losses of 0.63-1.20).
    x, y = load_digits_tensors("test")
    config = digits_config(tmp_path / "run")
    before = untrained_test_accuracy(config)
    result = train(config, log=lambda *a: None)
    run = tmp_path / "run"
    assert sorted(os.listdir(run)) == ["checkpoint.safetensors", "config.json", "metrics.jsonl",
                                       "model.safetensors", "run-manifest.json"]  # the directory itself is locked
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert {"epoch", "train_loss", "train_acc", "test_acc", "lr", "o", "estimating_error",
                "gradient_stability"} <= set(r)
        assert 0 <= r["test_acc"] <= 1 and 0 <= r["train_acc"] <= 1
        assert r["estimating_error"] > 0 and r["gradient_stability"] >= 0
    assert rows[0]["o"] == 1.0 and rows[1]["o"] > 1.0
    assert rows[-1]["train_loss"] < 0.75 * math.log(10)  # an untrained 10-class model is at about ln 10

    model, config_json = load_run(str(run))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(result.best_test_acc)
    assert before < 0.3 and acc > 0.6 and acc > before + 0.3
    assert config_json["model"] == "digits_mlp" and config_json["input_shape"] == [1, 8, 8]


def test_resume_continues_exactly_from_another_path_to_the_run(tmp_path, monkeypatch):
    """Interrupted in its third epoch, the run is moved and resumed through a relative path:
    it ends where the uninterrupted run ends (the run is the directory, not its spelling)."""
    straight = train(digits_config(tmp_path / "a"), log=lambda *a: None)

    calls = {"n": 0}
    real = train_loop.train_one_epoch

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    train_loop.train_one_epoch = crash_in_third_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train(digits_config(tmp_path / "b"), log=lambda *a: None)
    finally:
        train_loop.train_one_epoch = real
    os.rename(tmp_path / "b", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    logged = []
    resumed = train(digits_config("./moved"), resume=True, log=logged.append)
    assert logged[0].startswith("resuming ./moved after epoch 2/3 (best test accuracy")

    a = read_tensors(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = read_tensors(str(tmp_path / "moved" / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
    assert strip(straight.metrics) == strip(resumed.metrics)
    lines = (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_refuses_changed_options_and_reuse_of_a_run_dir(tmp_path):
    train(digits_config(tmp_path / "r", epochs=1), log=lambda *a: None)
    with pytest.raises(ValueError, match="lr: run has 0.1, asked 0.5"):
        train(digits_config(tmp_path / "r", epochs=1, lr=0.5), resume=True, log=lambda *a: None)
    with pytest.raises(ValueError, match="cannot change --epochs: the run in .* has 1 epochs, asked 2; its cosine "
                                         "learning-rate and o schedules are laid out over its 1 epochs"):
        train(digits_config(tmp_path / "r", epochs=2), resume=True, log=lambda *a: None)
    with pytest.raises(FileExistsError, match="--resume"):
        train(digits_config(tmp_path / "r", epochs=1), log=lambda *a: None)
    logged = []
    result = train(digits_config(tmp_path / "r", epochs=1), resume=True, log=logged.append)
    assert logged[0].startswith(f"{tmp_path / 'r'} finished all 1 epochs already; nothing to train (best test "
                                "accuracy") and logged[0].endswith("at epoch 1)")
    assert len(logged) == 2 and logged[1].startswith("best test accuracy") and len(result.metrics) == 1
    with pytest.raises(FileNotFoundError, match="--resume: run directory .* does not exist"):
        train(digits_config(tmp_path / "missing", epochs=1), resume=True, log=lambda *a: None)


def _flip_a_weight_digit(path):
    """Change one float weight of a safetensors file in about its 7th significant digit (the
    file stays a valid safetensors file)."""
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # the low bits of a float32's mantissa
    path.write_bytes(bytes(data))


def test_corrupt_or_missing_runs_give_clear_errors(tmp_path):
    train(digits_config(tmp_path / "r", epochs=1), log=lambda *a: None)
    ckpt = tmp_path / "r" / "checkpoint.safetensors"
    good = ckpt.read_bytes()
    _flip_a_weight_digit(ckpt)
    with pytest.raises(ArtifactError, match="is corrupt: its content does not match the sha256 it records"):
        train(digits_config(tmp_path / "r", epochs=1), resume=True, log=lambda *a: None)
    ckpt.write_bytes(good[:-10])
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        train(digits_config(tmp_path / "r", epochs=1), resume=True, log=lambda *a: None)
    ckpt.write_bytes(good)
    model_file = tmp_path / "r" / "model.safetensors"
    model_file.write_bytes(b"garbage")  # its header is read first, before anything is hashed
    with pytest.raises(ArtifactError, match="model.safetensors' is not a readable safetensors file.*--resume"):
        load_run(str(tmp_path / "r"))
    os.remove(tmp_path / "r" / "run-manifest.json")
    with pytest.raises(ArtifactError, match="run manifest .* does not exist"):
        load_run(str(tmp_path / "r"))
    with pytest.raises(ArtifactError, match="does not exist"):
        load_run(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown device"):
        train(digits_config(tmp_path / "x", device="tpu"), log=lambda *a: None)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train(digits_config(tmp_path / "x", epochs=0), log=lambda *a: None)


def test_a_flipped_weight_digit_is_refused_by_every_reader_and_repaired_by_resume(tmp_path, capsys):
    """The probe of issue 11: one float of model.safetensors changed in its 7th digit went
    unnoticed by summary and export. Every reader now checks the run manifest; --resume
    rewrites the file from the checkpoint and says so."""
    from bnnkit.cli import main
    from bnnkit.export import export_run

    run = tmp_path / "r"
    train(digits_config(run, epochs=1), log=lambda *a: None)
    export_run(str(run), str(tmp_path / "export"))
    good = (run / "model.safetensors").read_bytes()
    for model_file in (run / "model.safetensors", tmp_path / "export" / "trained" / "model.safetensors"):
        _flip_a_weight_digit(model_file)
        read_tensors(str(model_file))  # still a valid safetensors file: only the checksum tells
        with pytest.raises(ArtifactError, match="model.safetensors' does not match its sha256"):
            load_run(str(model_file.parent))
    for argv in (["summary", str(run)], ["export", str(run), "--out", str(tmp_path / "export2")]):
        assert main(argv) == 2
        assert "does not match its sha256 in run-manifest.json" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "export"), "--out", str(tmp_path / "export2")]) == 2
    assert "is an export directory (bnnkit export), not a training run" in capsys.readouterr().err
    assert not (tmp_path / "export2").exists()
    logged = []
    train(digits_config(run, epochs=1), resume=True, log=logged.append)
    assert "rewrote model.safetensors from the checkpoint of epoch 1" in logged
    assert (run / "model.safetensors").read_bytes() == good
    load_run(str(run))


def test_bad_options_fail_before_the_run_directory_exists(tmp_path, capsys):
    from bnnkit.cli import main

    cases = [(["--t", "0.05"], "t (--t) must be a finite clipping threshold > 0.1"),
             (["--model-arg", "hiden=8"], "it accepts: num_classes, hidden"),
             (["--epochs", "1", "--warmup-epochs", "3"], "pass --warmup-epochs 0 for a short run")]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", str(out),
                     "--no-progress", *extra]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_a_run_whose_loss_becomes_nan_stops_with_an_error(tmp_path):
    """lr 10 is accepted (the largest allowed) and blows the loss up to inf/nan: the run stops
    naming the epoch instead of finishing silently at chance level."""
    with pytest.raises(ValueError, match=r"training diverged in epoch \d/5 \(.*nan.* at learning rate"):
        train(digits_config(tmp_path / "r", epochs=5, lr=10.0), log=lambda *a: None)
    metrics = tmp_path / "r" / "metrics.jsonl"
    rows = metrics.read_text().splitlines() if metrics.exists() else []
    assert all(math.isfinite(json.loads(r)["train_loss"]) for r in rows)  # only finished, finite epochs
