"""The bnnkit command line: help for every command, a training smoke run, clear errors."""

import json
import os
import subprocess
import sys
import tempfile

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
    with pytest.raises(SystemExit):
        main(["bench", "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "bnnkit", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("bnnkit ")


def _bad_value_cases(tmp_path):
    """(argv, what the error line must say) for values refused before any work (issue 11, 5)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    locked = "/sys/bnnkit-test/run" if os.geteuid() == 0 else str(tmp_path / "read-only" / "run")
    run = ["train", "--dataset", "synthetic", "--no-progress", "--out"]
    out = str(tmp_path / "run")
    return [
        ([*run, str(a_file / "run")], "is a file, not a directory"),
        ([*run, str(a_file)], "is a file, not a directory"),
        ([*run, locked], "cannot be created: no file can be created in"),
        ([*run, "/proc/nope"], "--out '/proc/nope' cannot be created: no file can be created in '/proc', the nearest "
                               "existing directory"),
        ([*run, out, "--lr", "1e308"], "learning rate (--lr) must be in (0, 10], got 1e+308"),
        ([*run, out, "--lr", "nan"], "learning rate (--lr) must be in (0, 10], got nan"),
        ([*run, out, "--momentum", "nan"], "momentum (--momentum) must be in [0, 1), got nan"),
        ([*run, out, "--weight-decay", "nan"], "weight decay (--weight-decay) must be in [0, 1), got nan"),
        ([*run, out, "--weight-decay", "inf"], "weight decay (--weight-decay) must be in [0, 1), got inf"),
        ([*run, out, "--model-arg", "hidden=-1"], "digits_mlp: hidden must be an integer in [1, 8192], got -1"),
        ([*run, out, "--model-arg", "hidden=0"], "digits_mlp: hidden must be an integer in [1, 8192], got 0"),
        ([*run, out, "--model-arg", "hidden=10**7"], "hidden must be an integer in [1, 8192], got '10**7'"),
        ([*run, out, "--model-arg", "hidden=10000000"], "hidden must be an integer in [1, 8192], got 10000000"),
        ([*run, out, "--model-arg", "depth=0"], "digits_mlp: depth must be an integer in [1, 64], got 0"),
        ([*run, out, "--seed", "-1"], "seed (--seed) must be in [0, 2**63), got -1"),
        ([*run, out, "--epochs", "0"], "epochs must be >= 1, got 0"),
        ([*run, out, "--resume"], "--resume: run directory"),
        (["validate", str(a_dir), "--tolerance", "nan"], "argument --tolerance: expected a finite number >= 0"),
        (["validate", str(a_dir), "--tolerance", "-1"], "argument --tolerance: expected a finite number >= 0"),
        (["validate", str(a_dir), "--json", str(a_dir)], "--json " + repr(str(a_dir)) + " is a directory"),
        (["bench", "--budget-s", "nan"], "argument --budget-s: expected a finite number > 0, got 'nan'"),
        (["bench", "--budget-s", "0"], "argument --budget-s: expected a finite number > 0, got '0'"),
        (["bench", "--json", str(a_dir)], "--json " + repr(str(a_dir)) + " is a directory"),
        (["demo", "--epochs", "0", "--no-progress"], "epochs must be >= 1, got 0"),
        (["demo", "--out", str(a_file / "demo")], "is a file, not a directory"),
        (["export", str(a_dir), "--out", str(a_file / "export")], "is a file, not a directory"),
    ]


def test_bad_values_get_one_line_exit_2_and_leave_nothing(tmp_path, capsys, monkeypatch):
    """Each bad value: exit code 2, one error line naming it (argparse's usage may precede
    it), no traceback, nothing printed on stdout (demo: no "[1/4]"), no directory created
    (a demo's temporary directory included)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cases = _bad_value_cases(tmp_path)
    if os.geteuid() != 0:
        (tmp_path / "read-only").mkdir(mode=0o500)
    before = sorted(p for p in tmp_path.rglob("*"))
    for argv, message in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert rc == 2, (argv, captured.err)
        assert message in lines[-1], (argv, lines[-1])
        assert lines[-1].startswith(f"bnnkit {argv[0]}: error:"), (argv, lines)
        assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), (argv, lines)  # argparse's usage
        assert "Traceback" not in captured.err and captured.out == "", (argv, captured.out)
        assert sorted(p for p in tmp_path.rglob("*")) == before, (argv, "left something behind")


def test_resume_of_a_run_killed_before_its_config_starts_from_the_beginning(tmp_path, capsys):
    """A trainer killed right after creating its directory leaves it empty (here with the lock
    file an earlier bnnkit left): --resume (with the options given again) trains from the
    beginning."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").touch()
    argv = ["train", "--resume", "--out", str(run), "--model", "digits_cnn", "--model-arg", "channels=4",
            "--dataset", "synthetic", "--epochs", "1", "--batch-size", "64", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{run} has no finished epoch: training from the beginning" in out
    assert out.count("best test accuracy") == 1  # one final line
    assert main(["train", "--resume", "--out", str(run), "--no-progress"]) == 0  # options from the run itself
    assert "finished all 1 epochs already" in capsys.readouterr().out


def test_an_interrupted_train_says_how_to_continue(tmp_path, monkeypatch, capsys):
    import bnnkit.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bnnkit.train, "train", interrupted)
    out = str(tmp_path / "run")
    assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", out, "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert f"bnnkit train: interrupted; the epochs finished so far are saved in {out}" in err and "--resume" in err
