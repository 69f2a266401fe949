"""Run directories attacked as a class (issue 18, sections 7 and 8): bnnkit train writes only
into a run, holds it with a lock no file deletion undoes, range-checks every checkpoint field
before any work, and every failure is one line, never a traceback."""

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from bnnkit.artifacts import set_write_hook
from bnnkit.train.rundir import RunWriter

from hostile import cli, edit_json, fifo, no_hang, one_line, reseal_run, rewrite_checkpoint_header

TRAIN = ["--model", "digits_cnn", "--model-arg", "channels=4", "--dataset", "synthetic", "--batch-size", "64",
         "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-epoch run of a tiny model (seconds), copied by each test that changes it."""
    from bnnkit.cli import main

    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(run), "--epochs", "2", *TRAIN]) == 0
    return run


@pytest.fixture
def run(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))
            if (directory / name).is_file()}


# ---------------------------------------------------------------------------------------------
# 7. Only a run is written into; the lock; every range before any work


def _export_like(directory):
    """A packed artifact directory (what bnnkit export writes first: manifest.json, model.safetensors)."""
    from bnnkit import models
    from bnnkit.export import pack

    pack(models.create("digits_mlp", hidden=16).eval()).save(directory)
    return directory


@pytest.mark.parametrize("resume", [False, True])
def test_train_never_writes_into_an_export(tmp_path, capsys, resume):
    export = _export_like(tmp_path / "export")
    before = _snapshot(export)
    code, _, err = cli(["train", "--out", str(export), "--epochs", "1", *TRAIN] + (["--resume"] if resume else []),
                       capsys)
    assert code == 2 and "is an export directory (bnnkit export), not a training run" in one_line(err)
    assert _snapshot(export) == before  # the export's model.safetensors untouched


@pytest.mark.parametrize("resume", [False, True])
def test_train_never_writes_over_files_that_are_not_a_runs(tmp_path, capsys, resume):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"my own weights")
    (foreign / "config.json").write_text('{"kind": "something else"}')
    before = _snapshot(foreign)
    code, _, err = cli(["train", "--out", str(foreign), "--epochs", "1", *TRAIN] + (["--resume"] if resume else []),
                       capsys)
    assert code == 2 and "is not a bnnkit training run but holds model.safetensors, config.json" in one_line(err)
    assert _snapshot(foreign) == before


def test_the_lock_survives_deleting_files_and_the_directory_being_replaced(tmp_path):
    """The directory itself is locked: deleting a lock file changes nothing; a directory moved
    away and replaced by a new one is a different directory, which the first trainer then
    refuses to write into (it would write into another trainer's run)."""
    run = tmp_path / "run"
    first = RunWriter.claim(str(run), resume=False)
    try:
        (run / ".lock").write_text("")  # an old version's lock file, deleted: nothing depends on it
        os.remove(run / ".lock")
        with pytest.raises(FileExistsError, match="another bnnkit train is writing"):
            RunWriter.claim(str(run), resume=True)
        os.rename(run, tmp_path / "moved")
        os.mkdir(run)
        second = RunWriter.claim(str(run), resume=True)  # a new directory: free
        second.close()
        with pytest.raises(FileExistsError, match="was removed or replaced while this trainer held it"):
            first.start({"kind": "bnnkit-run"})
        assert os.listdir(run) == []
    finally:
        first.close()


def test_a_run_removed_while_training_stops_the_trainer(tmp_path, capsys):
    """Deleting the run directory under a trainer (between two epochs) stops it with one line
    rather than letting it recreate files by path."""
    run = tmp_path / "run"

    def remove_after_first_epoch(event, path):
        if event == "rename" and path.endswith("run-manifest.json") and os.path.isdir(run):
            shutil.rmtree(run)

    previous = set_write_hook(remove_after_first_epoch)
    try:
        code, _, err = cli(["train", "--out", str(run), "--epochs", "3", *TRAIN], capsys)
    finally:
        set_write_hook(previous)
    assert code == 2 and "was removed or replaced while this trainer held it" in one_line(err)
    assert not run.exists()


def _swap(field, value):
    return lambda state: state.__setitem__(field, value)


CRAFTED_HEADERS = {
    "epoch 10**12": (_swap("epoch", 10**12), "epoch must be an integer in \\[0, 1\\]"),
    "epoch negative": (_swap("epoch", -1), "epoch must be an integer"),
    "epoch a string": (_swap("epoch", "1"), "epoch must be an integer"),
    "best after the epoch": (lambda s: s["best"].update(epoch=5), "best.epoch must be an integer in \\[0, 1\\]"),
    "best accuracy 5": (lambda s: s["best"].update(test_acc=5), "best.test_acc must be a finite number in \\[0, 1\\]"),
    "best a number": (_swap("best", 5), "best must be an object"),
    "metrics an object": (_swap("metrics", {"a": 1}), "metrics must be a list of 2 to 2 items"),
    "metrics too few": (lambda s: s["metrics"].pop(), "metrics must be a list of 2 to 2 items"),
    "metrics row for another epoch": (lambda s: s["metrics"][1].update(epoch=7), "metrics\\[1\\] is for epoch 7"),
    "epochs 10**12": (lambda s: s["train"].update(epochs=10**12), "train.epochs must be an integer in"),
    "unknown option": (lambda s: s["train"].update(loader="os.system"), "train has unknown option"),
    "optimizer a list": (_swap("optimizer", []), "optimizer must be an object"),
    "optimizer lr a string": (lambda s: s["optimizer"]["param_groups"][0].update(lr="x"), "lr must be a finite"),
    "optimizer two groups": (lambda s: s["optimizer"]["param_groups"].append(s["optimizer"]["param_groups"][0]),
                             "optimizer has 2 parameter group"),
    "optimizer params": (lambda s: s["optimizer"]["param_groups"][0].update(params=[0]), "params must be"),
    "scaler scale negative": (_swap("grad_scaler", {"scale": -1.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                                    "growth_interval": 2000, "_growth_tracker": 0}), "scale must be"),
    "kind": (_swap("kind", "something"), "has kind 'something'"),
    "environment threads 0": (lambda s: s["environment"].update(threads=0), "environment.threads must be an integer"),
    "environment a hostile string": (lambda s: s["environment"].update(torch="x" * 100 + "\n__import__('os')"),
                                     "environment.torch must be a string of at most 64"),
    "environment unknown field": (lambda s: s["environment"].update(loader="os.system"),
                                  "environment has unknown field"),
}


def _wrong_shape(tensors):
    key = next(k for k in tensors if k.startswith("optimizer.") and tensors[k].dim() == 4)
    tensors[key] = torch.zeros(1, 2, 3, 4)


CRAFTED_TENSORS = {
    "optimizer tensor of the wrong shape": (_wrong_shape, "optimizer tensor .* its parameter is"),
    "optimizer tensor naming no parameter": (lambda t: t.__setitem__("optimizer.999.momentum_buffer", torch.zeros(1)),
                                             "names no parameter of the model"),
    "a tensor a checkpoint does not hold": (lambda t: t.__setitem__("evil", torch.zeros(1)), "does not: \\['evil'\\]"),
    "best tensors of another model": (lambda t: t.__setitem__("best.extra", torch.zeros(1)),
                                      "its best tensors do not match"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_HEADERS) + sorted(CRAFTED_TENSORS))
def test_every_checkpoint_field_is_range_checked_before_any_work(run, capsys, case):
    """A crafted checkpoint (its own sha256 recomputed, as an attacker would): --resume refuses
    it in one line naming the field, and nothing in the run changes."""
    if case in CRAFTED_HEADERS:
        edit, match = CRAFTED_HEADERS[case]
        rewrite_checkpoint_header(run / "checkpoint.safetensors", edit)
    else:
        edit, match = CRAFTED_TENSORS[case]
        rewrite_checkpoint_header(run / "checkpoint.safetensors", lambda s: None, edit)
    before = _snapshot(run)
    code, _, err = cli(["train", "--out", str(run), "--epochs", "2", "--resume", *TRAIN], capsys)
    import re

    assert code == 2 and re.search(match, one_line(err)), err
    assert _snapshot(run) == before


def test_a_resume_in_another_environment_says_so_in_one_line_and_goes_on(tmp_path, capsys):
    """Each checkpoint records the thread count and versions that wrote it; --resume with
    others (float results depend on them) prints one line naming each difference and trains
    on; in the same environment it prints none."""
    from safetensors import safe_open

    from bnnkit.train import environment
    from bnnkit.train.checkpoint import _HEADER_KEY

    out = tmp_path / "run"
    creates = []

    def stop_at_the_second_checkpoint(event, path):
        if event == "create" and ".checkpoint.safetensors." in path:
            creates.append(path)
            if len(creates) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    previous = set_write_hook(stop_at_the_second_checkpoint)
    try:
        assert cli(["train", "--out", str(out), "--epochs", "3", *TRAIN], capsys)[0] == 2
    finally:
        set_write_hook(previous)
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        recorded = json.loads(f.metadata()[_HEADER_KEY])["environment"]
    assert recorded == environment.current("cpu")
    elsewhere = dict(recorded, threads=recorded["threads"] + 7, torch="0.0.1-elsewhere")
    rewrite_checkpoint_header(out / "checkpoint.safetensors", lambda s: s.update(environment=elsewhere))
    code, printed, err = cli(["train", "--out", str(out), "--epochs", "3", "--resume", *TRAIN], capsys)
    assert code == 0, err
    notes = [line for line in (printed + err).splitlines() if "different environment" in line]
    assert len(notes) == 1, printed + err
    assert f"threads {recorded['threads'] + 7} -> {recorded['threads']}" in notes[0]
    assert f"torch '0.0.1-elsewhere' -> {recorded['torch']!r}" in notes[0] and "numpy" not in notes[0]
    # the checkpoints written since record this process's environment: the next resume is quiet
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()[_HEADER_KEY])["environment"] == recorded


def test_every_range_is_checked_before_any_work(tmp_path, capsys):
    """--epochs 10**12 once stalled planning the learning rates after creating the run
    directory: refused in one line, nothing created, at once."""
    out = tmp_path / "run"
    with no_hang(60):
        for args, match in ((["--epochs", str(10**12)], "epochs \\(--epochs\\) must be at most 1,000,000"),
                            (["--batch-size", str(10**12)], "must be at most"),
                            (["--workers", "100000"], "workers \\(--workers\\) must be in"),
                            (["--seed", str(2**64)], "seed"),
                            (["--device", "meta"], "not 'meta'"), (["--device", "mps"], "not 'mps'"),
                            (["--device", "xpu"], "not 'xpu'")):
            code, _, err = cli(["train", "--out", str(out), *TRAIN, *args], capsys)
            import re

            assert code == 2 and re.search(match, one_line(err)), (args, err)
            assert not out.exists()


def test_the_peak_learning_rate_is_found_without_a_loop_over_the_epochs():
    from bnnkit.train.config import lr_at, peak_lr

    for epochs in list(range(1, 40)) + [250, 1000]:
        for warmup, schedule in ((0, "cosine"), (3, "cosine"), (0, "reference"), (5, "reference")):
            if warmup >= epochs or (schedule == "reference" and warmup and epochs <= 5):
                continue
            assert peak_lr(epochs, 0.1, warmup, schedule) == max(lr_at(e, epochs, 0.1, warmup, schedule)
                                                                 for e in range(epochs))
    with no_hang(10):
        assert peak_lr(1_000_000, 0.1, 5, "reference") > 0.1


# ---------------------------------------------------------------------------------------------
# 8. One line, never a traceback


def test_a_fifo_in_a_run_is_refused_by_name(run, capsys):
    with no_hang(60):
        os.remove(run / "checkpoint.safetensors")
        fifo(run / "checkpoint.safetensors")
        code, _, err = cli(["train", "--out", str(run), "--epochs", "2", "--resume", *TRAIN], capsys)
        assert code == 2 and "FIFO" in one_line(err)
        os.remove(run / "config.json")
        fifo(run / "config.json")
        code, _, err = cli(["summary", str(run)], capsys)
        assert code == 2 and "FIFO" in one_line(err)
        os.remove(run / "metrics.jsonl")
        fifo(run / "metrics.jsonl")
        code, _, err = cli(["plot", str(run), "--out", str(run.parent / "c.png")], capsys)
        assert code == 2 and "FIFO" in one_line(err)


def test_a_run_config_field_of_the_wrong_type_is_one_line(run, capsys):
    edit_json(run / "config.json", lambda c: c.update(input_shape="abc"))
    reseal_run(run, "config.json")
    code, _, err = cli(["summary", str(run)], capsys)
    assert code == 2 and "input_shape must be a list" in one_line(err)
    edit_json(run / "config.json", lambda c: c.update(input_shape=[1, 8, 8], train=[1]))
    reseal_run(run, "config.json")
    code, _, err = cli(["summary", str(run)], capsys)
    assert code == 2 and "train must be an object of training options" in one_line(err)


def test_deeply_nested_metrics_are_one_line(run, capsys):
    pytest.importorskip("matplotlib")
    (run / "metrics.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = cli(["plot", str(run), "--out", str(run.parent / "c.png")], capsys)
    assert code == 2 and "nested too deeply" in one_line(err)


@pytest.mark.parametrize("command", ["train", "export", "predict --json", "plot"])
@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EFBIG, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_saying_how_to_go_on(run, tmp_path, capsys, command, failure):
    """The file system refuses a write (the hook raises what the kernel would): one line naming
    what happened and how to go on; the state stays the last good one."""
    import numpy as np

    if command == "plot":
        pytest.importorskip("matplotlib")
    args = {"train": ["train", "--out", str(tmp_path / "new"), "--epochs", "2", *TRAIN],
            "export": ["export", str(run), "--out", str(tmp_path / "export")],
            "predict --json": None, "plot": ["plot", str(run), "--out", str(tmp_path / "c.png")]}[command]
    if command == "predict --json":
        export = tmp_path / "export"
        assert cli(["export", str(run), "--out", str(export)], capsys)[0] == 0
        np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
        args = ["predict", str(export), str(tmp_path / "x.npy"), "--json", str(tmp_path / "p.json")]
    before = _snapshot(run)

    def refuse(event, path):  # train: at its first checkpoint (its config is written by then)
        if event == "create" and (command != "train" or ".checkpoint.safetensors." in path):
            raise OSError(failure, os.strerror(failure), path)

    previous = set_write_hook(refuse)
    try:
        code, _, err = cli(args, capsys)
    finally:
        set_write_hook(previous)
    line = one_line(err)
    assert code == 2 and {errno.ENOSPC: "no space left", errno.EFBIG: "past the size limit",
                          errno.EROFS: "read-only"}[failure] in line
    go_on = {"train": "--resume to continue", "export": "nothing was written to --out",
             "predict --json": "the file was not written", "plot": "the file was not written"}[command]
    assert go_on in line, line
    assert _snapshot(run) == before
    for directory in (run, tmp_path / "new"):
        assert not directory.exists() or not [n for n in os.listdir(directory) if n.endswith(".tmp")]


_EFBIG = textwrap.dedent("""
    import resource, sys
    from bnnkit.cli import main
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    sys.exit(main(sys.argv[2:]))
""")


def test_a_real_file_size_limit_during_export_and_train(run, tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past it (EFBIG; Python ignores SIGXFSZ)."""
    for args in (["export", str(run), "--out", str(tmp_path / "export"), "--onnx"],
                 ["train", "--out", str(tmp_path / "new"), "--epochs", "1", *TRAIN]):  # files of 7 and 16 KB
        result = subprocess.run([sys.executable, "-c", _EFBIG, "5000", *args], capture_output=True, text=True,
                                env=dict(os.environ, BNNKIT_BACKEND="torch"), timeout=600)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "a file grew past the size limit" in one_line(result.stderr)
    assert not (tmp_path / "export").exists()


def test_a_read_only_destination_is_refused_before_any_work(run, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories (the hook test above covers EROFS)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = cli(["plot", str(run), "--out", str(locked / "c.png")], capsys)
        assert code == 2 and "cannot be written" in one_line(err)
    finally:
        locked.chmod(0o755)
