"""Recording: one results file per device, reruns of a commit replace its rows, run files combine."""

import json
import os

import pytest

from bnnkit.artifacts import ArtifactError, write_json
from bnnkit.benchmarks import recording
from bnnkit.benchmarks.runner import RUN_FORMAT, RUN_VERSION


def row(suite="gemm", impl="bnnkit", commit="a" * 40, date="2026-01-01T00:00:00+00:00", run_id="r1",
        device="NVIDIA H100 80GB HBM3", **extra):
    return {"suite": suite, "case": "c", "impl": impl, "shape": "8x8x8", "dtype": "int8", "median_ms": 1.0,
            "p20_ms": 0.9, "p80_ms": 1.1, "device": device, "device_type": "cuda", "commit": commit, "date": date,
            "run_id": run_id, **extra}


def run_doc(rows, device="NVIDIA H100 80GB HBM3", ceilings=None, suites=None):
    suites = suites if suites is not None else [{"suite": s, "status": "ok", "reason": "", "cases": []}
                                                for s in dict.fromkeys(r["suite"] for r in rows)]
    return {"format": RUN_FORMAT, "version": RUN_VERSION, "run": {"device": device}, "ceilings": ceilings or {},
            "suites": suites, "rows": rows}


def test_merge_appends_and_a_rerun_of_the_same_commit_replaces(tmp_path):
    d = str(tmp_path)
    path, added, replaced = recording.merge_run(run_doc([row(), row(suite="conv")]), d)
    assert os.path.basename(path) == "nvidia-h100-80gb-hbm3.json" and (added, replaced) == (2, 0)
    # rerun of gemm at the same commit: replaces gemm's rows, keeps conv's
    recording.merge_run(run_doc([row(run_id="r2", impl="new")]), d)
    # another commit: appended
    _, added, replaced = recording.merge_run(run_doc([row(commit="b" * 40, run_id="r3")]), d)
    assert (added, replaced) == (1, 0)
    doc = recording.read_results(path)
    assert doc["device"] == "NVIDIA H100 80GB HBM3"
    assert [(r["suite"], r["run_id"]) for r in doc["rows"]] == [("conv", "r1"), ("gemm", "r2"), ("gemm", "r3")]


def test_rows_without_a_commit_need_one_given(tmp_path):
    doc = run_doc([row(commit="unknown")])
    with pytest.raises(ValueError, match="have no git commit .* pass --commit SHA"):
        recording.merge_run(doc, str(tmp_path))
    path, _, _ = recording.merge_run(doc, str(tmp_path), commit="c" * 40)
    assert recording.read_results(path)["rows"][0]["commit"] == "c" * 40


def test_merge_refuses_mixed_devices_empty_runs_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="one device"):
        recording.merge_run(run_doc([row(), row(device="Other")]), str(tmp_path))
    with pytest.raises(ValueError, match="no rows"):
        recording.merge_run(run_doc([]), str(tmp_path))
    write_json(str(tmp_path / "nvidia-h100-80gb-hbm3.json"),
               {"format": recording.RESULTS_FORMAT, "version": 1, "device": "NVIDIA H100-80GB HBM3", "rows": []})
    with pytest.raises(ArtifactError, match="records device 'NVIDIA H100-80GB HBM3', not 'NVIDIA H100 80GB HBM3'"):
        recording.merge_run(run_doc([row()]), str(tmp_path))
    write_json(str(tmp_path / "x.json"), {"format": "something else"})
    with pytest.raises(ArtifactError, match="is not a bnnkit benchmark results file"):
        recording.load_results_dir(str(tmp_path))


def test_combine_joins_parts_and_keeps_one_set_of_ceilings():
    ceil = [row(suite="ceilings", impl="torch.copy_", ceiling="copy", gb_per_s=10.0)]
    first = run_doc(ceil, ceilings={"copy": 10.0})
    second = run_doc([row()])
    third = run_doc([row(suite="ceilings", run_id="again"), row(suite="conv")], ceilings={"copy": 11.0})
    combined = recording.combine_runs([first, second, third])
    assert combined["ceilings"] == {"copy": 10.0}
    assert [(r["suite"], r["run_id"]) for r in combined["rows"]] == [("ceilings", "r1"), ("gemm", "r1"),
                                                                     ("conv", "r1")]
    assert [s["suite"] for s in combined["suites"]] == ["ceilings", "gemm", "conv"]
    with pytest.raises(ValueError, match="of one device"):
        recording.combine_runs([first, run_doc([row(device="B")], device="B")])


def test_latest_rows_per_suite_case_and_variants():
    old = row(date="2026-01-01T00:00:00+00:00", run_id="old")
    new = row(date="2026-02-01T00:00:00+00:00", run_id="new", **{"pass": "forward"})
    conv = row(suite="conv", date="2025-12-01T00:00:00+00:00", run_id="c")
    other_case = row(case="another", date="2025-12-01T00:00:00+00:00", run_id="old")  # not rerun: kept
    assert recording.latest_rows([old, new, conv, other_case]) == [new, conv, other_case]
    assert recording.row_variant(new) == "pass=forward" and recording.row_variant(old) == ""


def test_command_line_combine_then_merge(tmp_path, capsys):
    parts = []
    for i, doc in enumerate([run_doc([row()], ceilings={"copy": 1.0}), run_doc([row(suite="conv")])]):
        parts.append(str(tmp_path / f"part{i}.json"))
        write_json(parts[-1], doc)
    (tmp_path / "garbage.json").write_text("{not json")
    out = str(tmp_path / "run.json")
    assert recording.main(["combine", *parts, str(tmp_path / "garbage.json"), "--out", out]) == 0
    assert "skipping" in capsys.readouterr().err
    results = tmp_path / "results"
    assert recording.main(["merge", out, "--results-dir", str(results)]) == 0
    assert "2 rows recorded" in capsys.readouterr().out
    assert len(json.loads((results / "nvidia-h100-80gb-hbm3.json").read_text())["rows"]) == 2
    assert recording.main(["merge", str(tmp_path / "missing.json"), "--results-dir", str(results)]) == 2
    assert "does not exist" in capsys.readouterr().err
