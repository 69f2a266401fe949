"""The runner: statuses and reasons per suite and case, rows with metadata and ratios, bad rows named."""

import json
import math
import sys

import pytest
import torch

from bnnkit.artifacts import ArtifactError, write_json
from bnnkit.benchmarks import runner
from bnnkit.benchmarks.environment import cpu_name, git_commit
from bnnkit.benchmarks.registry import REGISTRY, case

CPU = torch.device("cpu")
ROOFS = {"copy": 100.0, "fp32": 2.0}


@pytest.fixture
def fake_suite():
    """Registers suite "fake" (removed afterwards): a good CPU case, a CUDA-only one, a failing one, a sloppy one."""

    @case("fake", "good", devices=("cpu",))
    def good(ctx):
        assert ctx.device == CPU and ctx.quick
        x = torch.randn(4)  # the runner seeds every case: same draw each run
        return [{"case": "good", "impl": "mine", "shape": "(4,)", "dtype": torch.float32, "median_ms": 2.0,
                 "p20_ms": 1.5, "p80_ms": 2.5, "gb_per_s": 50.0, "draw": float(x[0]), "speedup_vs_base": 2.0},
                {"case": "good", "impl": "base", "shape": "(4,)", "dtype": "fp32", "median_ms": 4.0, "p20_ms": 3.0,
                 "p80_ms": 5.0, "tops": 1.0, "speedup_vs_base": 1.0}]

    @case("fake", "gpu_only", devices=("cuda",))
    def gpu_only(ctx):
        raise AssertionError("must not run on CPU")

    @case("fake", "broken", devices=("cpu",))
    def broken(ctx):
        raise RuntimeError("kernel exploded")

    @case("fake", "sloppy", devices=("cpu",))
    def sloppy(ctx):
        return [{"case": "sloppy", "impl": "x", "median_ms": math.nan, "device": "my own idea"}]

    yield
    # remove only what this fixture added: suite modules imported meanwhile keep their cases
    REGISTRY[:] = [c for c in REGISTRY if c.suite != "fake"]


def run_fake(**kwargs):
    return runner.run_benchmarks(["fake"], CPU, quick=True, ceilings=ROOFS, log=lambda m: None, **kwargs)


def test_statuses_reasons_rows_and_metadata(fake_suite):
    run = run_fake()
    (suite,) = run.suites
    by_case = {c.case: c for c in suite.cases}
    assert suite.status == "partial" and suite.reason == "1 of 3 cases failed"
    assert by_case["good"].status == "ok" and by_case["good"].rows == 2
    assert by_case["gpu_only"].status == "skipped" and "runs on cuda only, not on cpu" in by_case["gpu_only"].reason
    assert by_case["broken"].status == "failed" and by_case["broken"].reason == "RuntimeError: kernel exploded"
    sloppy = by_case["sloppy"]
    assert sloppy.status == "ok"
    assert any("lacks shape, dtype, p20_ms, p80_ms" in w for w in sloppy.warnings)
    assert any("median_ms is nan; recorded as null" in w for w in sloppy.warnings)
    assert "row fields device are run metadata names; the metadata was kept" in sloppy.warnings
    assert run.failed

    mine, base, bad = run.rows
    assert mine["dtype"] == "float32"  # torch.dtype recorded as its name
    assert bad["median_ms"] is None
    torch.manual_seed(0)
    assert mine["draw"] == float(torch.randn(4)[0])
    commit, dirty = git_commit()
    for row in run.rows:
        assert row["suite"] == "fake" and row["device"] == cpu_name() and row["device_type"] == "cpu"
        assert row["torch"] == torch.__version__ and row["commit"] == commit and row["dirty"] == dirty
        assert row["quick"] is True and row["run_id"] == run.meta["run_id"] and row["date"] == run.meta["date"]
        assert row["cpu_threads"] == torch.get_num_threads() and row["load_avg"] >= 0
    assert mine["pct_of_copy_ceiling"] == 50.0 and mine["bound"] == "copy"
    assert base["pct_of_compute_ceiling"] == 50.0 and base["bound"] == "fp32"
    assert run.ceilings == ROOFS
    json.dumps(run.to_json(), allow_nan=False)  # strict JSON: no NaN reaches the file


def test_the_run_file_is_rewritten_after_every_case(fake_suite):
    seen = []
    run_fake(on_case=lambda run: seen.append(len(run.rows)))
    assert seen == [2, 2, 3, 3]  # good, broken, sloppy, then the end of the run


def test_budget_skips_the_cases_not_started(fake_suite):
    run = run_fake(budget_s=1e-9)
    reasons = {c.case: c.reason for c in run.suites[0].cases}
    assert reasons["broken"] == reasons["sloppy"] == "suite time budget of 1e-09 s used up"


def test_case_filter_and_unknown_suite(fake_suite):
    run = run_fake(cases=["go*"])
    assert [c.case for c in run.suites[0].cases] == ["good"] and run.suites[0].status == "ok"
    with pytest.raises(ValueError, match=r"unknown benchmark suite 'nope'; known: ceilings, quantize, .*fake"):
        runner.run_benchmarks(["nope"], CPU, ceilings=ROOFS, log=lambda m: None)


def test_ceilings_are_measured_first_when_not_given(fake_suite):
    run = runner.run_benchmarks(["fake"], CPU, quick=True, cases=["good"], log=lambda m: None)
    assert [s.suite for s in run.suites] == ["ceilings", "fake"]
    assert set(run.ceilings) == {"copy", "fp32"} and all(v > 0 for v in run.ceilings.values())
    mine = run.rows[-2]
    assert mine["pct_of_copy_ceiling"] == pytest.approx(100 * 50.0 / run.ceilings["copy"])


@pytest.fixture
def suite_package(tmp_path, monkeypatch):
    """A stand-in suite package: one suite module that registers, two whose import fails."""
    pkg = tmp_path / "stand_in_benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text(
        "from bnnkit.benchmarks.registry import case\n"
        "@case('fine', 'one', devices=('cpu',))\n"
        "def one(ctx):\n"
        "    return [{'case': 'one', 'impl': 'x', 'shape': '1', 'dtype': 'fp32', 'median_ms': 1.0, 'p20_ms': 1.0,"
        " 'p80_ms': 1.0}]\n")
    (pkg / "broken.py").write_text("import bnnkit.kernels.no_such_kernel\n")
    (pkg / "extra_broken.py").write_text("raise RuntimeError('half-written module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(runner, "PACKAGE", "stand_in_benchmarks")
    monkeypatch.setattr(runner, "SUITE_MODULES", {"fine": "fine", "broken": "broken"})
    before = list(REGISTRY)
    REGISTRY.clear()  # cases other test modules registered are not part of the stand-in package
    yield
    REGISTRY[:] = before + [c for c in REGISTRY if c.suite not in ("fine", "broken", "extra_broken")
                            and c not in before]
    for name in [m for m in sys.modules if m.split(".")[0] == "stand_in_benchmarks"]:
        del sys.modules[name]


def test_broken_suite_modules_are_reported(suite_package):
    statuses = runner.load_suite_modules()
    assert {name: s.status for name, s in statuses.items()} == {
        "fine": "loaded", "broken": "failed", "extra_broken": "failed"}
    assert "RuntimeError: half-written module" in statuses["extra_broken"].error

    run = runner.run_benchmarks(["fine", "broken"], CPU, ceilings=ROOFS, log=lambda m: None)
    fine, broken = run.suites
    assert fine.status == "ok" and len(run.rows) == 1
    assert broken.status == "failed"
    assert "importing stand_in_benchmarks.broken failed: ModuleNotFoundError" in broken.reason
    assert "bnnkit.kernels.no_such_kernel" in broken.reason


def test_running_everything_reports_broken_modules_outside_the_known_suites(suite_package):
    run = runner.run_benchmarks(None, CPU, quick=True, ceilings=ROOFS, log=lambda m: None)
    assert [(s.suite, s.status) for s in run.suites] == [
        ("module extra_broken", "failed"), ("fine", "ok"), ("broken", "failed")]


def test_rows_that_cannot_be_recorded_are_errors():
    with pytest.raises(TypeError, match="returns a list of dict rows"):
        runner.check_rows({"case": "x"}, "s/x")
    with pytest.raises(ValueError, match="row 1 lacks impl"):
        runner.check_rows([{"case": "x", "impl": "a"}, {"case": "x"}], "s/x")


def test_device_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match="use cuda or cpu"):
        runner.resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available.*use --device cpu"):
            runner.resolve_device("cuda")


def test_run_file_checks(tmp_path, fake_suite):
    run = run_fake(cases=["good"])
    path = str(tmp_path / "run.json")
    write_json(path, run.to_json())
    assert runner.read_run_file(path)["rows"] == run.rows
    assert runner.ceilings_from_run_file(path, cpu_name()) == ROOFS
    with pytest.raises(ArtifactError, match="measured on .* not on this run's device 'Other GPU'"):
        runner.ceilings_from_run_file(path, "Other GPU")
    write_json(path, {**run.to_json(), "version": 99})
    with pytest.raises(ArtifactError, match="has version 99; this bnnkit reads version 1"):
        runner.read_run_file(path)
    write_json(path, {"rows": []})
    with pytest.raises(ArtifactError, match="is not a bnnkit benchmark run file"):
        runner.read_run_file(path)


def test_text_table_lists_rows_with_derived_figures(fake_suite):
    text = runner.format_rows(run_fake(cases=["good"]).rows)
    assert "fake/good" in text and "50 GB/s" in text and "2x vs base" in text and "50% of copy" in text


def test_repeated_suite_and_case_options_add_up():
    import argparse

    from bnnkit.benchmarks.runner import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--suite", "quantize", "--suite", "gemm", "conv", "--case", "a*", "--case", "b*"])
    assert args.suite == ["quantize", "gemm", "conv"] and args.case == ["a*", "b*"]
    assert parser.parse_args([]).suite is None


@pytest.fixture
def drifting_suite():
    """Suite "drift": a case whose measured times come from a script, repeat after repeat."""
    script = {"steady": [[2.0, 4.0], [2.1, 4.1], [1.9, 3.9]], "bursty": [[2.0, 4.0], [9.0, 4.0], [2.0, 4.1]]}
    calls = {name: 0 for name in script}

    def make(name):
        def fn(ctx):
            mine, base = script[name][calls[name]]
            calls[name] += 1
            return [{"case": name, "impl": "mine", "shape": "(4,)", "dtype": "fp32", "median_ms": mine,
                     "p20_ms": mine * 0.9, "p80_ms": mine * 1.1, "gb_per_s": 100.0 / mine,
                     "speedup_vs_base": base / mine},
                    {"case": name, "impl": "base", "shape": "(4,)", "dtype": "fp32", "median_ms": base,
                     "p20_ms": base * 0.9, "p80_ms": base * 1.1, "speedup_vs_base": 1.0}]
        return fn

    for name in script:
        case("drift", name, devices=("cpu",))(make(name))
    yield
    REGISTRY[:] = [c for c in REGISTRY if c.suite != "drift"]


def test_repeats_are_interleaved_merged_and_rows_that_do_not_hold_are_marked(drifting_suite):
    order = []
    run = runner.run_benchmarks(["drift"], CPU, ceilings={"copy": 100.0}, repeats=3, log=order.append)
    assert [line.split(":")[0] for line in order if line.startswith("drift/")] == \
        [f"drift/{n} (repeat {r}/3)" for r in (1, 2, 3) for n in ("steady", "bursty")]
    assert run.meta["repeats"] == 3 and [c.case for c in run.suites[0].cases] == ["steady", "bursty"]
    rows = {(r["case"], r["impl"]): r for r in run.rows}
    assert len(run.rows) == 4
    steady = rows["steady", "mine"]
    assert steady["median_ms"] == 2.0 and steady["repeat_medians_ms"] == [1.9, 2.0, 2.1] and steady["repeats"] == 3
    assert steady["reliable"] is True and "unreliable" not in steady
    assert steady["pct_of_copy_ceiling"] == pytest.approx(50.0)  # the median repeat's figures, all consistent
    bursty = rows["bursty", "mine"]
    assert bursty["median_ms"] == 2.0 and bursty["speedup_ranges"]["base"] == pytest.approx([4.0 / 9.0, 2.05])
    assert bursty["reliable"] is False and "its 3 repeats took 2 to 9 ms" in bursty["unreliable"]
    assert "its speedup over base ranged 0.444x to 2.05x" in bursty["unreliable"]
    assert rows["bursty", "base"]["reliable"] is True
    text = runner.format_rows(run.rows)
    assert "UNRELIABLE, not a result: its 3 repeats" in text and "repeats 1.9-2.1 ms" in text


def test_implausible_ratios_to_a_ceiling_and_wide_samples_are_unreliable():
    from bnnkit.benchmarks.repeats import mark_reliability

    rows = [{"suite": "ceilings", "case": "copy", "impl": "copy", "ceiling": "copy", "gb_per_s": 10.0,
             "median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1},
            {"suite": "s", "case": "a", "impl": "x", "median_ms": 1.0, "p20_ms": 0.9, "p80_ms": 1.1,
             "pct_of_ceiling": 728.0, "bound": "copy"},
            {"suite": "s", "case": "b", "impl": "x", "median_ms": 1.0, "p20_ms": 0.4, "p80_ms": 1.1,
             "pct_of_ceiling": 171.0, "bound": "copy"}]
    mark_reliability(rows)
    assert rows[0]["reliable"] is True
    assert rows[1]["unreliable"] == "it claims 728% of the copy ceiling measured in the same run"
    assert rows[2]["unreliable"] == "its samples spread from 0.4 ms (p20) to 1.1 ms (p80)"
    rows[0]["p20_ms"] = 0.1  # the ceiling itself did not hold: nothing compared with it does
    mark_reliability(rows)
    assert rows[0]["reliable"] is False
    assert rows[1]["unreliable"].endswith("the copy ceiling it is compared with is unreliable")
