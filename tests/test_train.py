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
from train_testing import interrupt_epoch

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
    # Three epochs at lr 0.1 are a chaotic trajectory (binary nets flip on last-bit ties, and the
    # last bits depend on the CPU, its ATen kernels and the thread count), so the checks are what
    # every run reaches, with a wide margin: over seeds 0-9 at 1 and 2 threads with ATen's AVX2
    # and scalar kernels (AMD EPYC) the best accuracy was 0.52-0.88, while the last epoch's loss
    # ranged up to 2.0, above the first epoch's in some runs, so no loss is asserted.
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
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["test_loss"]) for r in rows)

    model, config_json = load_run(str(run))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(result.best_test_acc)
    assert before < 0.3 and acc > 0.3 and acc > before + 0.2  # chance is 0.1
    assert config_json["model"] == "digits_mlp" and config_json["input_shape"] == [1, 8, 8]


def test_resume_continues_exactly_from_another_path_to_the_run(tmp_path, monkeypatch):
    """Interrupted in its third epoch, the run is moved and resumed through a relative path:
    it ends where the uninterrupted run ends (the run is the directory, not its spelling)."""
    straight = train(digits_config(tmp_path / "a"), log=lambda *a: None)

    interrupt_epoch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train(digits_config(tmp_path / "b"), log=lambda *a: None)
    monkeypatch.undo()
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


def test_each_estimator_gets_its_own_default_threshold(tmp_path):
    """t = None resolves per estimator: ReSTE's 1.5, the paper's STE (clipped at 1), nothing for
    estimators that do not clip; the layers are built with it and config.json records it."""
    expected = {"reste": 1.5, "clipped_ste": 1.0, "identity_ste": None, "approx_sign": None}
    for estimator, t in expected.items():
        cfg = digits_config(tmp_path / estimator, model_kwargs={**SMALL_MLP, "estimator": estimator}).resolved()
        assert cfg.t == t, estimator
    assert digits_config(tmp_path / "x", model_kwargs={"estimator": "clipped_ste"}, t=0.5).resolved().t == 0.5
    with pytest.raises(ValueError, match="ambiguous.*identity_ste"):
        digits_config(tmp_path / "x", model_kwargs={"estimator": "ste"}).resolved()
    with pytest.raises(ValueError, match=r"t \(--t\) must be a finite clipping threshold > 0,"):
        digits_config(tmp_path / "x", model_kwargs={"estimator": "clipped_ste"}, t=0.0).resolved()


def test_a_run_saved_under_the_old_name_ste_loads_and_resumes_as_identity_ste(tmp_path, monkeypatch):
    """bnnkit 0.1 saved the unclipped estimator as "ste": such a run (here one whose files say
    "ste", interrupted in its second epoch) loads and resumes as identity_ste, exactly."""
    options = dict(epochs=2, model_kwargs={**SMALL_MLP, "estimator": "identity_ste"})
    straight = train(digits_config(tmp_path / "new", **options), log=lambda *a: None)

    real_to_json = TrainConfig.to_json

    def as_bnnkit_01(self):
        saved = real_to_json(self)
        saved["model_kwargs"] = {**saved["model_kwargs"], "estimator": "ste"}
        return saved

    monkeypatch.setattr(TrainConfig, "to_json", as_bnnkit_01)
    interrupt_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(digits_config(tmp_path / "old", **options), log=lambda *a: None)
    monkeypatch.undo()
    saved = json.loads((tmp_path / "old" / "config.json").read_text())
    assert saved["train"]["model_kwargs"]["estimator"] == "ste"

    model, config = load_run(str(tmp_path / "old"))
    assert config["model_kwargs"]["estimator"] == "identity_ste"
    from bnnkit.nn import binary_layers
    assert {layer.weight_estimator for _, layer in binary_layers(model)} == {"identity_ste"}
    from bnnkit.cli import main
    assert main(["train", "--out", str(tmp_path / "old"), "--resume", "--no-progress"]) == 0
    resumed = json.loads((tmp_path / "old" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {k: v for k, v in resumed.items() if k != "time_s"} == \
        {k: v for k, v in straight.metrics[-1].items() if k != "time_s"}


def test_every_row_records_where_it_ran_and_a_resume_elsewhere_says_so(tmp_path, monkeypatch, capsys):
    """--threads is applied for the run only; every metrics row records the threads, torch's
    version, the CPU and ATen's CPU kernels; a resume at another thread count continues (it
    may end differently in the last bits) and prints one line saying so."""
    from bnnkit.cli import main

    before = torch.get_num_threads()
    interrupt_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(digits_config(tmp_path / "r", epochs=2, threads=1), log=lambda *a: None)
    monkeypatch.undo()
    assert torch.get_num_threads() == before
    row = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["threads"] == 1 and row["torch"] == torch.__version__ and row["cpu"]
    assert row["cpu_capability"] == torch.backends.cpu.get_cpu_capability()

    import shutil
    shutil.copytree(tmp_path / "r", tmp_path / "same")
    assert main(["train", "--out", str(tmp_path / "r"), "--resume", "--threads", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "different environment (threads 1 -> 2)" in out and out.count("different environment") == 1
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in rows] == [1, 2]
    assert main(["train", "--out", str(tmp_path / "same"), "--resume", "--no-progress"]) == 0  # the run's count
    assert "different environment" not in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert [r["threads"] for r in rows] == [1, 1]
    assert torch.get_num_threads() == before
    from bnnkit.train import environment
    assert {k: rows[0][k] for k in environment.FIELDS} == {**environment.current("cpu"), "threads": 1}

    with pytest.raises(SystemExit):
        main(["train", "--out", str(tmp_path / "x"), "--threads", "0", "--no-progress"])
    assert "argument --threads: expected an integer >= 1, got '0'" in capsys.readouterr().err
