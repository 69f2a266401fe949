"""bnnkit plot: a real PNG with drawn curves (checked by its pixels), several runs, clear errors,
and the message without matplotlib."""

import json
import math
import sys

import numpy as np
import pytest

from bnnkit.artifacts import ArtifactError
from bnnkit.cli import main
from bnnkit.plot import KEYS, read_metrics, run_curves, run_labels

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402


def _fake_run(directory, epochs, phase=0.0):
    """metrics.jsonl rows shaped like a real run's (decaying loss, rising accuracy, cosine lr)."""
    directory.mkdir(parents=True)
    with open(directory / "metrics.jsonl", "w") as f:
        for e in range(epochs):
            t = e / max(epochs - 1, 1)
            row = {"epoch": e, "lr": 0.05 * (1 + math.cos(math.pi * t)), "o": 1 + 2 * t,
                   "train_loss": 2.3 * math.exp(-3 * t) + phase, "test_loss": 2.4 * math.exp(-2.5 * t) + phase,
                   "train_acc": 0.1 + 0.85 * t, "test_acc": 0.1 + 0.8 * t - phase, "estimating_error": 50 * (1 - t),
                   "gradient_stability": 0.1 * t, "best_test_acc": 0.9, "time_s": 1.0, "world_size": 1}
            f.write(json.dumps(row) + "\n")
    return str(directory)


def _pixels(path):
    img = Image.open(path)
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_one_real_run_is_drawn_next_to_it(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--model-arg", "hidden=32",
                 "--out", run, "--epochs", "3", "--batch-size", "64", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["plot", run]) == 0
    assert capsys.readouterr().out.strip() == f"curves: {tmp_path / 'run' / 'curves.png'}"
    pixels = _pixels(tmp_path / "run" / "curves.png")
    assert pixels.shape == (700, 1300, 3)
    assert pixels.std() > 20  # axes, curves and text on white, not a blank canvas
    assert run_curves(run)["epoch"] == [1, 2, 3]


def test_several_runs_share_the_panels_one_color_each(tmp_path):
    a = _fake_run(tmp_path / "a" / "seed0", 20)
    b = _fake_run(tmp_path / "b" / "seed0", 20, phase=0.05)
    out = tmp_path / "both.png"
    assert main(["plot", a, b, "--out", str(out), "--title", "two seeds"]) == 0
    both = _pixels(out)
    assert main(["plot", a, "--out", str(tmp_path / "one.png")]) == 0
    one = _pixels(tmp_path / "one.png")
    assert both.shape == one.shape and both.std() > 20
    # the second run adds pixels of the second color (matplotlib's orange, #ff7f0e) that one run lacks
    orange = lambda p: int((np.abs(p - [255, 127, 14]).sum(axis=2) < 60).sum())
    assert orange(both) > 1000 and orange(one) < 100
    assert run_labels([a, b]) == ["a/seed0", "b/seed0"]


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "not-a-run").mkdir()
    assert main(["plot", str(tmp_path / "not-a-run")]) == 2
    assert "has no metrics.jsonl: not a training run" in capsys.readouterr().err
    run = _fake_run(tmp_path / "run", 3)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "lr": 0.1}\n{not json\n')
    with pytest.raises(ArtifactError, match=r"metrics.jsonl, line 4: lacks train_loss, test_loss, train_acc, test_acc, o, "):
        read_metrics(run)
    (tmp_path / "run" / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ArtifactError, match=r"metrics.jsonl, line 1: not valid JSON"):
        read_metrics(run)
    assert main(["plot", run, str(tmp_path / "other")]) == 2
    assert "several runs: pass --out FILE.png" in capsys.readouterr().err
    good = _fake_run(tmp_path / "good", 2)
    assert main(["plot", good, "--out", str(tmp_path / "x.jpg")]) == 2
    assert "must end with .png" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "no finished epoch yet" in capsys.readouterr().err
    assert set(KEYS) >= {"estimating_error", "gradient_stability", "lr", "o"}


def test_without_matplotlib_the_command_names_the_extra(tmp_path, capsys, monkeypatch):
    run = _fake_run(tmp_path / "run", 2)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now raises ImportError
    assert main(["plot", run]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ('bnnkit plot: error: bnnkit plot needs matplotlib: pip install "bnnkit[plot]" '
                           '(from a clone: pip install -e ".[plot]")')
    assert not (tmp_path / "run" / "curves.png").exists()
