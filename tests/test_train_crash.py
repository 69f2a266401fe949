"""A training run survives SIGKILL at any instant, and two trainers never share a directory.

Each trial trains in a separate process that is killed with SIGKILL at one write point,
then ``--resume`` (``train(..., resume=True)``) runs in another process, and the final run
directory must equal an uninterrupted run's: the same metrics except ``time_s``, bitwise the
same model, checkpoint and config, files matching their manifest, and no temporaries.

Two ways of choosing the kill points:
- the write hook (``bnnkit.artifacts.set_write_hook``): the process kills itself at its k-th
  write step (directory created, lock or temporary created, temporary complete, rename), for
  every k of a whole run, and again for every write step of a resume after such a kill;
- inotify (ctypes on libc), as the problem was found: this process watches the run directory
  and kills the trainer at the n-th file event it sees (creation, each write, close, rename).
  CI kills at a spread of events; ``BNNKIT_CRASH_SWEEP=1`` kills at every one.

The trainers are forked from a forkserver that has imported torch and bnnkit once, so a trial
costs a fraction of a second instead of a Python start; each trains on one thread, so every
process computes bitwise the same numbers.

Which epochs are new bests is forced, not left to the trajectory (which differs between CPUs
and thread counts): every trainer reports the scripted test accuracies of
:data:`SCRIPTED_TEST_ACC` (the weights, losses and everything else are real), so on every
machine epochs 0 and 2 are new bests and epochs 1 and 3 are not, and the checkpoints carry a
best model apart from the current one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing
import os
import select
import shutil
import signal
import struct
import time

import pytest
import torch
from tqdm import tqdm

from bnnkit.artifacts import read_tensors, set_write_hook
from bnnkit.train import TrainConfig, train
from bnnkit.train.checkpoint import (CHECKPOINT_FILE, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, MODEL_FILE,
                                     read_checkpoint, verify_run_files)

FULL_SWEEP = os.environ.get("BNNKIT_CRASH_SWEEP") == "1"
tqdm.get_lock()  # tqdm's multiprocessing lock, made once in the forkserver (a killed trainer would leak its own)
OPTIONS = dict(model="digits_mlp", dataset="digits", epochs=4, batch_size=128, lr=0.2, model_kwargs={"hidden": 16},
               progress=False, seed=1)
SCRIPTED_TEST_ACC = (0.5, 0.25, 0.75, 0.5)
"""The test accuracy each trainer reports per epoch: epochs 0 and 2 are new bests, 1 and 3 are not."""


def _script_test_accuracy() -> None:
    """In this (trainer) process, make the training loop's evaluation report
    ``SCRIPTED_TEST_ACC[epoch]`` as the test accuracy; the test loss stays the real one. The
    epoch is the one the loop last gave the o schedule (it steps it once per epoch, first)."""
    from bnnkit.schedule import OSchedule
    from bnnkit.train import loop

    current = {"epoch": None}
    real_step, real_evaluate = OSchedule.step, loop.evaluate

    def step(self, epoch):
        current["epoch"] = epoch
        return real_step(self, epoch)

    def evaluate(*args, **kwargs):
        loss, _ = real_evaluate(*args, **kwargs)
        return loss, SCRIPTED_TEST_ACC[current["epoch"]]

    OSchedule.step = step
    loop.evaluate = evaluate


def _config(out: str) -> TrainConfig:
    return TrainConfig(out=out, **OPTIONS)


def _trainer(out: str, resume: bool, kill_at: int | None, report: str | None, hold: str | None = None) -> None:
    """Body of a trainer process: train ``out``; with ``kill_at`` SIGKILL itself at that write
    step; ``report``: write the write steps seen (or the error) there as JSON; ``hold``: after
    taking the directory, wait until this file exists."""
    torch.set_num_threads(1)
    _script_test_accuracy()
    events: list[list[str]] = []

    def hook(event: str, path: str) -> None:
        events.append([event, os.path.basename(path)])
        if kill_at is not None and len(events) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if hold is not None and event == "locked":
            open(hold + ".held", "w").close()  # tells the test the directory is locked
            deadline = time.monotonic() + 120
            while not os.path.exists(hold) and time.monotonic() < deadline:
                time.sleep(0.01)

    set_write_hook(hook)
    try:
        train(_config(out), resume=resume, log=lambda *a: None)
    except Exception as e:
        if report is not None:
            with open(report, "w") as f:
                json.dump({"error": f"{type(e).__name__}: {e}"}, f)
        raise SystemExit(2) from None
    if report is not None:
        with open(report, "w") as f:
            json.dump({"events": events}, f)


@pytest.fixture(scope="module")
def procs():
    ctx = multiprocessing.get_context("forkserver")
    # what a first train() imports (torch.optim imports dynamo, bnnkit.data sklearn), once for all
    ctx.set_forkserver_preload([__name__, "torch._dynamo", "sklearn.datasets", "sklearn.model_selection",
                                "safetensors.torch"])
    return ctx


def _start(procs, out, *, resume=False, kill_at=None, report=None, hold=None):
    p = procs.Process(target=_trainer, args=(str(out), resume, kill_at, report and str(report), hold and str(hold)))
    p.start()
    return p


def _run(procs, out, **kw) -> int:
    p = _start(procs, out, **kw)
    p.join(120)
    assert p.exitcode is not None, "trainer hung"
    return p.exitcode


def _final_state(run) -> dict:
    """What must be identical between runs: everything but the metrics' time_s."""
    names = (CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, CONFIG_FILE)
    verify_run_files(str(run), names)
    checkpoint = read_checkpoint(os.path.join(run, CHECKPOINT_FILE))
    rows = [json.loads(line) for line in open(os.path.join(run, METRICS_FILE))]
    config = json.load(open(os.path.join(run, CONFIG_FILE)))
    config["train"].pop("out")
    progress = checkpoint.progress
    return {
        "files": sorted(os.listdir(run)),
        "metrics": [{k: v for k, v in r.items() if k != "time_s"} for r in rows],
        "checkpoint_metrics": [{k: v for k, v in r.items() if k != "time_s"} for r in progress.metrics],
        "progress": (progress.epoch, progress.best),
        "config": config,
        "model": read_tensors(os.path.join(run, MODEL_FILE)),
        "tensors": {**{f"model.{k}": v for k, v in checkpoint.model_state.items()},
                    **{f"best.{k}": v for k, v in checkpoint.best_state.items()},
                    **{f"opt.{i}.{k}": v for i, entries in checkpoint.optimizer_state["state"].items()
                       for k, v in entries.items()}},
    }


def _assert_same(state: dict, ref: dict, what: str) -> None:
    for key in ("files", "metrics", "checkpoint_metrics", "progress", "config"):
        assert state[key] == ref[key], f"{what}: {key} differs"
    for key in ("model", "tensors"):
        assert state[key].keys() == ref[key].keys(), f"{what}: {key} names differ"
        for name in ref[key]:
            assert torch.equal(state[key][name], ref[key][name]), f"{what}: {key} {name} differs"


@pytest.fixture(scope="module")
def reference(procs, tmp_path_factory):
    """An uninterrupted run: its final state and its write steps."""
    root = tmp_path_factory.mktemp("reference")
    assert _run(procs, root / "run", report=root / "report.json") == 0
    events = json.load(open(root / "report.json"))["events"]
    return _final_state(root / "run"), events


def test_reference_run_exercises_every_kind_of_epoch(reference):
    state, events = reference
    rows = state["metrics"]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [r["test_acc"] for r in rows] == list(SCRIPTED_TEST_ACC)
    assert [r["best_test_acc"] for r in rows] == [0.5, 0.5, 0.75, 0.75]
    assert state["progress"][1] == {"test_acc": 0.75, "epoch": 2}
    # the best model saved is epoch 2's, kept in the checkpoint beside the last epoch's
    assert all(torch.equal(state["model"][k], state["tensors"][f"best.{k}"]) for k in state["model"])
    assert any(not torch.equal(state["model"][k], state["tensors"][f"model.{k}"]) for k in state["model"])
    assert {e for e, _ in events} == {"mkdir", "create", "locked", "written", "rename"}
    assert state["files"] == [CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE, MANIFEST_FILE]  # no lock file


def _kill_then_resume(procs, run, kill_at: int, ref_state: dict, what: str) -> list[str]:
    """Kill a new run at write step ``kill_at``, resume it to the end, compare; returns the
    temporaries the kill left."""
    assert _run(procs, run, kill_at=kill_at) == -signal.SIGKILL, f"{what}: not killed"
    left = [name for name in os.listdir(run) if name.endswith(".tmp")] if os.path.isdir(run) else []
    assert _run(procs, run, resume=True) == 0, f"{what}: --resume failed"
    _assert_same(_final_state(run), ref_state, what)
    return left


def test_kill_at_every_write_step_then_resume_ends_as_the_uninterrupted_run(procs, reference, tmp_path):
    ref_state, events = reference
    temporaries = []
    for k in range(1, len(events) + 1):
        run = tmp_path / f"k{k}"
        temporaries += _kill_then_resume(procs, run, k, ref_state, f"killed at write step {k} {events[k - 1]}")
        shutil.rmtree(run)
    assert temporaries, "no kill left a temporary behind: the clean-up on restart was not exercised"


def test_kill_during_resume_at_every_write_step(procs, reference, tmp_path):
    """The first run is killed after its 2nd epoch's checkpoint is renamed, before the files
    derived from it; each write step of the resume (repairing them, then the last epochs) is
    then killed in turn, and a second resume must still end as the uninterrupted run."""
    ref_state, events = reference
    checkpoints = [i + 1 for i, (e, name) in enumerate(events) if e == "rename" and name == CHECKPOINT_FILE]
    first_kill = checkpoints[1]
    template = tmp_path / "template"
    assert _run(procs, template, kill_at=first_kill) == -signal.SIGKILL
    report = tmp_path / "resume.json"
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    assert _run(procs, probe, resume=True, report=report) == 0
    resume_events = json.load(open(report))["events"]
    # after locking the directory, the resume first rewrites the files derived from the checkpoint
    assert resume_events[0] == ["locked", probe.name]
    assert resume_events[1][0] == "create" and resume_events[1][1].startswith(f".{METRICS_FILE}.")
    steps = range(1, len(resume_events) + 1) if FULL_SWEEP else range(1, min(len(resume_events), 20) + 1)
    for k in steps:
        run = tmp_path / f"r{k}"
        shutil.copytree(template, run)
        assert _run(procs, run, resume=True, kill_at=k) == -signal.SIGKILL, f"resume not killed at step {k}"
        assert _run(procs, run, resume=True) == 0, f"second resume after a kill at resume step {k} failed"
        _assert_same(_final_state(run), ref_state, f"resume killed at write step {k} {resume_events[k - 1]}")
        shutil.rmtree(run)


# --- inotify: kill at the n-th file event seen from outside ------------------------------------

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
WATCHED = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
_EVENT = struct.Struct("iIII")


class Inotify:
    """Linux inotify through ctypes: watch directories, read (watch, mask, name) events."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self.libc.inotify_init()
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init failed")
        self.buffer = b""

    def watch(self, path: str) -> int:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), WATCHED)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path} failed")
        return wd

    def events(self, timeout: float) -> list[tuple[int, int, str]]:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        self.buffer += os.read(self.fd, 65536)
        out = []
        while len(self.buffer) >= _EVENT.size:
            wd, mask, _, length = _EVENT.unpack_from(self.buffer)
            end = _EVENT.size + length
            if len(self.buffer) < end:
                break
            name = self.buffer[_EVENT.size:end].rstrip(b"\0").decode()
            self.buffer = self.buffer[end:]
            out.append((wd, mask, name))
        return out

    def close(self) -> None:
        os.close(self.fd)


def _watched_run(procs, parent, kill_at: int | None) -> int:
    """Train ``parent/run`` while counting file events in ``parent`` and ``parent/run``; with
    ``kill_at``, SIGKILL the trainer as soon as the kill_at-th event is read. Returns the
    number of events seen."""
    parent.mkdir()
    run = parent / "run"
    notify = Inotify()
    try:
        parent_wd = notify.watch(str(parent))
        p = _start(procs, run)
        seen = 0
        while True:
            alive = p.is_alive()
            events = notify.events(0.05 if alive else 0)
            for wd, _, name in events:
                if wd == parent_wd:
                    if name != "run":
                        continue
                    notify.watch(str(run))
                seen += 1
                if seen == kill_at:
                    os.kill(p.pid, signal.SIGKILL)
                    p.join()
                    return seen
            if not alive and not events:
                break
        p.join()
        assert p.exitcode == 0
        return seen
    finally:
        notify.close()


def test_kill_at_file_events_seen_by_inotify_then_resume(procs, reference, tmp_path):
    ref_state, _ = reference
    total = _watched_run(procs, tmp_path / "count", None)
    assert total > 40, total  # the directory, and each file's creation, writes, close and rename
    points = range(1, total + 1) if FULL_SWEEP else sorted({1, 2, 3, *range(5, total + 1, max(1, total // 12))})
    for n in points:
        parent = tmp_path / f"n{n}"
        _watched_run(procs, parent, n)
        run = parent / "run"
        if not run.exists():  # killed before the directory itself: nothing to resume
            continue
        assert _run(procs, run, resume=True) == 0, f"resume after a kill at file event {n} failed"
        _assert_same(_final_state(run), ref_state, f"killed at file event {n}")
        shutil.rmtree(parent)


# --- two trainers on one directory ---------------------------------------------------------------


def test_two_trainers_on_one_directory_never_clobber(procs, reference, tmp_path):
    """A holds the directory (paused right after taking its lock); B, started on the same
    --out, fails naming it; A then finishes as the uninterrupted run. A --resume of a run
    being trained is refused the same way."""
    ref_state, _ = reference
    run, go = tmp_path / "run", tmp_path / "go"
    a = _start(procs, run, report=tmp_path / "a.json", hold=go)
    try:
        while not (tmp_path / "go.held").exists():  # A holds the directory's lock
            time.sleep(0.01)
        for name, resume in (("b", False), ("c", True)):
            assert _run(procs, run, resume=resume, report=tmp_path / f"{name}.json") == 2
            error = json.load(open(tmp_path / f"{name}.json"))["error"]
            assert f"another bnnkit train is writing {str(run)!r}" in error, error
    finally:
        go.touch()
        a.join(120)
    assert a.exitcode == 0
    _assert_same(_final_state(run), ref_state, "the trainer that held the directory")


def test_two_trainers_started_together_one_wins(procs, tmp_path):
    run = tmp_path / "run"
    trainers = [_start(procs, run, report=tmp_path / f"{i}.json") for i in range(2)]
    for p in trainers:
        p.join(120)
    assert sorted(p.exitcode for p in trainers) == [0, 2]
    loser = next(i for i, p in enumerate(trainers) if p.exitcode == 2)
    error = json.load(open(tmp_path / f"{loser}.json"))["error"]
    assert str(run) in error and ("another bnnkit train is writing" in error or "already holds a training run" in error)
