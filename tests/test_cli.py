"""The bnnkit command line: help for every command, a training smoke run, clear errors."""

import json
import subprocess
import sys

import pytest

from bnnkit.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: bnnkit {cmd}" in out


def test_train_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for opt in ["--model", "--dataset", "--data-dir", "--out", "--epochs", "--batch-size", "--lr", "--momentum",
                "--weight-decay", "--warmup-epochs", "--o-end", "--seed", "--device", "--resume"]:
        assert opt in out


def test_train_then_summary_of_the_run(tmp_path, capsys):
    run = str(tmp_path / "run")
    rc = main(["train", "--model", "digits_cnn", "--dataset", "synthetic", "--out", run, "--epochs", "1",
               "--batch-size", "64", "--model-arg", "channels=8", "--no-progress"])
    assert rc == 0
    assert "best test accuracy" in capsys.readouterr().out
    assert main(["summary", run, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["binary_params"] == 8 * 16 * 9 + 16 * 16 * 9
    assert main(["train", "--out", run, "--resume", "--no-progress"]) == 0  # already finished: nothing to do


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", "--model", "digits_mlp", "--dataset", "cifar10", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
    assert main(["summary", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["summary"]) == 2
    assert "either a run directory or --model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "resnet50", "--out", str(tmp_path / "y")])
    assert "invalid choice: 'resnet50'" in capsys.readouterr().err


def test_bench_lists_suites_and_names_bad_choices(capsys):
    # the quick CPU run itself is the smoke test in tests/benchmarks/test_bench_smoke.py
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "ceilings:" in out and "copy" in out and "quantize" in out
    assert main(["bench", "--device", "cpu", "--suite", "quantise"]) == 2
    assert "unknown benchmark suite 'quantise'; known: ceilings, quantize, train" in capsys.readouterr().err
    assert main(["bench", "--device", "cpu", "--budget-s", "0"]) == 2
    assert "--budget-s must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "bnnkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("bnnkit ")
