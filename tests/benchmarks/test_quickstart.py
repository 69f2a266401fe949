"""The README's quick-start figure: generated from its record, which says where it was measured."""

import json
import os

import pytest

from bnnkit.artifacts import ArtifactError
from bnnkit.benchmarks import quickstart

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RECORD = os.path.join(ROOT, "benchmarks", "results", "quickstart", "digits.json")


def fake_run(directory, seed, accs, place=None):
    """A finished run as `bnnkit train` leaves it: config.json (epochs, best) and metrics rows."""
    os.makedirs(directory)
    place = place or {"cpu": "Some CPU", "cpu_capability": "AVX2", "threads": 1, "torch": "2.13.0+cpu"}
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"train": {"epochs": len(accs), "seed": seed}, "best": {"epoch": best, "test_acc": accs[best]}}, f)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        for e, a in enumerate(accs):
            f.write(json.dumps({"epoch": e, "test_acc": a, "time_s": 2.0, **place}) + "\n")


def test_the_record_holds_every_seed_and_the_figure_gives_mean_and_range(tmp_path):
    fake_run(tmp_path / "seed0", 0, [0.5, 0.9, 0.8])
    fake_run(tmp_path / "seed1", 1, [0.6, 0.7, 0.95])
    record = quickstart.read_runs(str(tmp_path))
    assert [s["seed"] for s in record["seeds"]] == [0, 1]
    assert record["seeds"][0] == {"seed": 0, "best_test_acc": 0.9, "best_epoch": 1, "final_test_acc": 0.8,
                                  "epochs": 3, "train_s": 6.0}
    assert (record["cpu"], record["threads"], record["cpu_capability"]) == ("Some CPU", 1, "AVX2")
    text = quickstart.figure(record)
    assert "**92.5% (range 90.0-95.0%)**" in text and "87.5% (range 80.0-95.0%) after the last epoch" in text
    assert "seeds 0-1" in text and "**Some CPU**" in text and "1 thread per run" in text


def test_runs_made_in_different_places_or_unfinished_are_refused(tmp_path):
    fake_run(tmp_path / "a" / "seed0", 0, [0.5, 0.9])
    fake_run(tmp_path / "a" / "seed1", 1, [0.5, 0.9], place={"cpu": "Other", "cpu_capability": "AVX2", "threads": 2,
                                                             "torch": "2.13.0+cpu"})
    with pytest.raises(ValueError, match="not all made at one place"):
        quickstart.read_runs(str(tmp_path / "a"))
    fake_run(tmp_path / "b" / "seed0", 0, [0.5, 0.9])
    with open(tmp_path / "b" / "seed0" / "config.json", "w") as f:
        json.dump({"train": {"epochs": 40}, "best": {"epoch": 1, "test_acc": 0.9}}, f)  # 2 of 40 epochs
    with pytest.raises(ValueError, match="not a finished run"):
        quickstart.read_runs(str(tmp_path / "b"))
    os.makedirs(tmp_path / "c")
    with pytest.raises(ValueError, match="no runs"):
        quickstart.read_runs(str(tmp_path / "c"))
    (tmp_path / "bad.json").write_text('{"format": "bnnkit-quickstart", "version": 1, "seeds": []}')
    with pytest.raises(ArtifactError, match="seeds"):
        quickstart.read_record(str(tmp_path / "bad.json"))


def test_the_readme_figure_is_generated_from_the_recorded_seeds():
    assert quickstart.main(["readme", "--check", "--record", RECORD, "--readme", os.path.join(ROOT, "README.md")]) == 0
    record = quickstart.read_record(RECORD)
    assert len(record["seeds"]) >= 5 and {s["epochs"] for s in record["seeds"]} == {40}  # the main command's run
    assert record["cpu"] and record["threads"] >= 1 and record["command"].startswith("bnnkit train --model digits_mlp")
