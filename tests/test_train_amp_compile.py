"""Training options of issue 3: --amp (torch.autocast, fp16 with a gradient scaler) and --compile."""

import functools
import json

import pytest
import torch

from bnnkit.cli import main
from bnnkit.cli.train_cmd import add_parser, config_from_args
from bnnkit.train import TrainConfig, train
from bnnkit.train.checkpoint import CHECKPOINT_FILE, read_checkpoint


def digits_config(out, **kw):
    base = dict(model="digits_mlp", dataset="digits", out=str(out), epochs=2, batch_size=64,
                model_kwargs={"hidden": 64}, progress=False, seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def _same_metrics(a, b):
    """Equal metric rows apart from timing (compared as JSON, so NaN equals NaN: an fp16 step
    that overflowed leaves NaN gradient indicators)."""
    strip = lambda rows: json.dumps([{k: v for k, v in r.items() if k != "time_s"} for r in rows])  # noqa: E731
    return strip(a) == strip(b)


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return config_from_args(parser.parse_args(["train", "--out", "o", *argv]))


def test_cli_flags_reach_the_config(capsys):
    assert _parse([]).amp is None and _parse([]).compile is False
    assert _parse(["--amp"]).amp == "bf16"
    assert _parse(["--amp", "fp16", "--compile"]).amp == "fp16"
    assert _parse(["--compile"]).compile is True
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--amp" in out and "--compile" in out
    with pytest.raises(ValueError, match="amp must be one of bf16, fp16"):
        digits_config("x", amp="int8").resolved()


def test_bf16_amp_run_learns(tmp_path):
    result = train(digits_config(tmp_path / "run", amp="bf16"), log=lambda *a: None)
    assert result.best_test_acc > 0.5  # chance is 0.1; seeds 0-9, 1 and 2 threads, AVX2 and scalar ATen: 0.84-0.94
    assert result.metrics[-1]["train_loss"] < result.metrics[0]["train_loss"]
    assert read_checkpoint(str(tmp_path / "run" / CHECKPOINT_FILE)).progress.grad_scaler is None  # no loss scaling


def test_fp16_resume_continues_exactly_with_the_scaler_state(tmp_path, monkeypatch):
    from train_testing import interrupt_epoch

    straight = train(digits_config(tmp_path / "a", amp="fp16"), log=lambda *a: None)
    interrupt_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(digits_config(tmp_path / "b", amp="fp16"), log=lambda *a: None)
    monkeypatch.undo()
    resumed = train(digits_config(tmp_path / "b", amp="fp16"), resume=True, log=lambda *a: None)
    assert _same_metrics(resumed.metrics, straight.metrics)
    states = [read_checkpoint(str(tmp_path / d / CHECKPOINT_FILE)).progress.grad_scaler for d in "ab"]
    assert states[0] == states[1] and states[0]["scale"] > 0


def test_compiled_run_equals_eager_and_does_not_recompile_as_o_changes(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    eager = train(digits_config(tmp_path / "eager", epochs=3), log=lambda *a: None)
    # aot_eager: the same graph capture as Inductor, run with the eager kernels (so the result
    # must equal eager), without Inductor's code generation (slow on CI; tests/test_ops.py runs it).
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    compiled = train(digits_config(tmp_path / "compiled", epochs=3, compile=True), log=lambda *a: None)
    assert _same_metrics(compiled.metrics, eager.metrics)
    assert len({r["o"] for r in compiled.metrics}) == 3  # o changed every epoch...
    # ...without recompiling: one training graph, and one more for the smaller last batch.
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
