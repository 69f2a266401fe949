"""``bnnkit study estimators``: a 1-epoch, 1-seed smoke of the study, its record, its README
table and figures; the recorded study and the README agree."""

import json
import math
import os

import pytest

from bnnkit.artifacts import ArtifactError
from bnnkit.cli import main
from bnnkit.study import report
from bnnkit.study.estimators import EPOCH_FIELDS, StudySpec, read_record, run_study, write_record

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "estimators", "--out", str(out), "--epochs", "1", "--seeds", "1", "--warmup-epochs", "0",
                 "--jobs", "1", "--no-plots"]) == 0
    return out, read_record(str(out / "estimators.json"))


def test_smoke_study_trains_every_arm_and_records_it(smoke):
    _, record = smoke
    labels = [(r["model"], r["estimator"], r["o_end"], r["t"]) for r in record["runs"]]
    assert labels == [(m, e, o, t) for m in ("digits_mlp", "digits_cnn")
                      for e, o, t in [("clipped_ste", 3.0, 1.0), ("identity_ste", 3.0, None), ("approx_sign", 3.0, None),
                                      ("reste", 1.5, 1.5), ("reste", 2.0, 1.5), ("reste", 3.0, 1.5), ("reste", 5.0, 1.5)]]
    assert len(record["commit"]) == 40 and record["device"] and record["torch"] and record["date"]
    for run in record["runs"]:
        assert set(run["epochs"]) == set(EPOCH_FIELDS) and all(len(v) == 1 for v in run["epochs"].values())
        assert run["final_test_acc"] == run["best_test_acc"] == run["epochs"]["test_acc"][0]
        assert run["epochs"]["o"] == [1.0]
    by = {(r["model"], r["estimator"], r["o_end"]): r for r in record["runs"]}
    for model in ("digits_mlp", "digits_cnn"):
        # epoch 0 trains with o = 1 whatever o_end is: every ReSTE arm is the clipped STE at t = 1.5, step for step
        first = by[(model, "reste", 1.5)]
        for o_end in (2.0, 3.0, 5.0):
            assert by[(model, "reste", o_end)]["epochs"]["test_acc"] == first["epochs"]["test_acc"]
        # the estimating error is taken with o_end: it falls as o_end grows
        errors = [by[(model, "reste", o)]["epochs"]["estimating_error"][0] for o in (1.5, 2.0, 3.0, 5.0)]
        assert errors == sorted(errors, reverse=True)


def test_summary_table_and_readme_section(smoke, tmp_path):
    out, record = smoke
    rows = report.summarize(record)
    assert len(rows) == 14 and all(r["seeds"] == 1 and math.isnan(r["final"]["std"]) for r in rows)
    text = report.section(record)
    assert "| digits_cnn | reste o_end=5 |" in text and f"{len(record['runs'])} runs" in text
    assert "| digits_mlp | clipped_ste t=1 |" in text and "| digits_mlp | identity_ste |" in text
    assert "| digits_cnn | reste o_end=3 |" in text.split("Against the baseline `clipped_ste t=1`")[1]
    assert "one seed: no verdict" in text
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- study-table -->\nold\n<!-- /study-table -->\nrest\n")
    args = ["--record", str(out / "estimators.json"), "--readme", str(readme)]
    assert report.main([*args, "--check"]) == 1
    assert main(["study", "readme", *args]) == 0
    assert readme.read_text() == f"# x\n<!-- study-table -->\n{text}<!-- /study-table -->\nrest\n"
    assert report.main([*args, "--check"]) == 0
    readme.write_text("# no markers\n")
    assert report.main(args) == 2


def test_figures(smoke, tmp_path):
    pytest.importorskip("matplotlib")
    out, _ = smoke
    assert main(["study", "plot", str(out / "estimators.json"), "--out", str(tmp_path)]) == 0
    for name in ("estimators-accuracy.png", "estimators-tradeoff.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_record_does_not_depend_on_the_number_of_jobs():
    spec = StudySpec(models=("digits_cnn",), estimators=("clipped_ste", "reste"), o_ends=(3.0,), seeds=1, epochs=2,
                     warmup_epochs=0)
    strip = lambda record: [{k: v for k, v in r.items() if k != "time_s"} for r in record["runs"]]
    assert strip(run_study(spec, jobs=2, log=lambda *a: None)) == strip(run_study(spec, jobs=1, log=lambda *a: None))


def test_an_interrupted_study_resumes_from_its_runs(tmp_path, capsys):
    spec = StudySpec(models=("digits_cnn",), estimators=("clipped_ste", "reste"), o_ends=(3.0,), seeds=1, epochs=2,
                     warmup_epochs=0)
    runs = str(tmp_path / "runs")
    first = run_study(spec, runs_dir=runs, log=lambda *a: None)
    again = run_study(spec, runs_dir=runs, resume=True, log=lambda *a: None)  # both runs finished: read back
    assert first["resumed_runs"] == 0 and again["resumed_runs"] == 2 and again["runs"] == first["runs"]
    args = ["study", "estimators", "--out", str(tmp_path), "--models", "digits_cnn", "--epochs", "2", "--seeds", "1",
            "--estimators", "clipped_ste", "--jobs", "1", "--no-plots"]
    assert main(args) == 2
    assert "holds the runs of an earlier study: pass --resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    record = read_record(str(tmp_path / "estimators.json"))
    assert record["resumed_runs"] == 1 and record["runs"] == first["runs"][:1]
    # its load and wall time are this invocation's, not the runs': the README header says so
    header = report.section(record).split("\n")[0]
    assert "1 of the 1 runs read back or continued from earlier invocations" in header and "load average" not in header


def test_paired_differences_and_their_verdicts():
    ahead = report.paired_difference([0.90, 0.92, 0.91, 0.93, 0.95], [0.88, 0.90, 0.90, 0.90, 0.92])
    assert ahead["mean"] == pytest.approx(0.022) and (ahead["ahead"], ahead["level"], ahead["behind"]) == (5, 0, 0)
    # t(0.975, 4) = 2.776; differences 0.02 0.02 0.01 0.03 0.03 have std 0.00837
    assert ahead["ci95"] == pytest.approx(2.776 * 0.0083666 / math.sqrt(5), rel=1e-4)
    assert report.verdict(ahead) == "ahead"
    noisy = report.paired_difference([0.90, 0.80, 0.95], [0.85, 0.90, 0.90])
    assert report.verdict(noisy) == "within the spread"
    behind = report.paired_difference([0.80, 0.81, 0.79], [0.90, 0.90, 0.91])
    assert report.verdict(behind) == "behind"
    assert report.t_quantile_975(1) == 12.706 and report.t_quantile_975(100) == report.t_quantile_975(30)


def test_bad_specs_and_records_are_named(smoke, tmp_path):
    with pytest.raises(ValueError, match="trains on the digits set"):
        StudySpec(models=("resnet20",)).check()
    with pytest.raises(ValueError, match="estimators must be distinct names"):
        StudySpec(estimators=("clipped_ste", "sign")).check()
    with pytest.raises(ValueError, match="reste needs at least one o_end"):
        StudySpec(o_ends=()).check()
    with pytest.raises(ValueError, match="needs more than 5 epochs"):
        StudySpec(epochs=1).check()
    _, record = smoke
    path = str(tmp_path / "r.json")
    broken = json.loads(json.dumps(record))
    broken["runs"][3]["epochs"]["gradient_stability"] = []
    write_record(path, broken)
    with pytest.raises(ArtifactError, match="run 3 does not hold 1 values"):
        read_record(path)
    del broken["runs"][2]["best_test_acc"]
    write_record(path, broken)
    with pytest.raises(ArtifactError, match=r"run 2 lacks \['best_test_acc'\]"):
        read_record(path)
    (tmp_path / "bad.json").write_text('{"format": "bnnkit-bench-results", "version": 1}')
    with pytest.raises(ArtifactError, match="not a bnnkit estimator study record"):
        read_record(str(tmp_path / "bad.json"))


def test_the_readme_study_table_is_generated_from_the_recorded_study():
    record = os.path.join(ROOT, "benchmarks", "results", "studies", "estimators.json")
    assert report.main(["--check", "--record", record, "--readme", os.path.join(ROOT, "README.md")]) == 0
    doc = read_record(record)
    spec = StudySpec.from_json(doc["spec"])
    # the record may be a partial study (a subset of the models, as the README says)
    assert spec.seeds >= 5 and spec.models and set(spec.models) <= {"digits_mlp", "digits_cnn"}
    assert doc["device"] and doc["device_type"] == "cpu" and doc["threads_per_job"] == 1  # CPU model, threads
    assert {r["estimator"] for r in doc["runs"]} == {"identity_ste", "clipped_ste", "approx_sign", "reste"}
    assert {r["t"] for r in doc["runs"] if r["estimator"] == "clipped_ste"} == {1.0}  # the paper's STE
    assert len(doc["runs"]) == len(spec.models) * len(spec.arms()) * spec.seeds
