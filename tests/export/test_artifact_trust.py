"""Artifacts attacked as a hostile world would: pickle payloads wherever a loader could reach,
crafted graphs, malformed manifests, allocation bombs, two writers at once, kills mid-write.

Every payload is checked to be live (unpickling it does create its marker file), so a test
that finds no marker proves that bnnkit did not unpickle it, not that the payload was inert.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from bnnkit import models
from bnnkit.artifacts import ArtifactError, file_entry, staged_directory
from bnnkit.cli import main
from bnnkit.export import FORMAT_VERSION, load, pack

from hostile import small_model

from .conftest import randomize_batchnorm


class _Payload:
    """Unpickling this creates ``marker`` (a harmless stand-in for running a shell command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _live_pickle(path, marker, *, torch_format=False):
    """Write a payload to ``path`` and check that loading it the unsafe way fires it."""
    probe = str(marker) + ".probe"
    if torch_format:
        torch.save({"weights": _Payload(marker)}, path)
        torch.save({"weights": _Payload(probe)}, str(path) + ".probe")
        torch.load(str(path) + ".probe", weights_only=False)
        os.remove(str(path) + ".probe")
    else:
        with open(path, "wb") as f:
            pickle.dump(_Payload(marker), f)
        pickle.loads(pickle.dumps(_Payload(probe)))
    assert os.path.exists(probe), "the payload is not live"
    os.remove(probe)


def _reseal(directory, rel, manifest="manifest.json"):
    """Recompute a file's checksum in the manifest, as an attacker who crafted it would."""
    path = os.path.join(directory, manifest)
    manifest = json.load(open(path))
    entry = file_entry(os.path.join(directory, rel))
    manifest["files"][rel] = entry["sha256"] if isinstance(manifest["files"].get(rel), str) else entry
    with open(path, "w") as f:
        json.dump(manifest, f)


def _edit_manifest(directory, edit):
    path = os.path.join(directory, "manifest.json")
    manifest = json.load(open(path))
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


@pytest.fixture
def small_artifact(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(small_model(), seed=3)
    out = tmp_path / "small"
    pack(model).save(out)
    return out


@pytest.fixture
def export_dir(tmp_path, digits_artifact):
    """A private copy of a digits export directory (packed artifact, trained/, model.onnx)."""
    out = tmp_path / "export"
    shutil.copytree(digits_artifact, out)
    return out


def _cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# 1. No code runs on load


def test_unlisted_program_file_is_never_opened(small_artifact, tmp_path, capsys):
    marker = tmp_path / "ran"
    _live_pickle(small_artifact / "program.pt2", marker, torch_format=True)
    x = torch.randn(2, 1, 8, 8)
    assert load(small_artifact)(x).shape == (2, 10)
    assert _cli(["summary", str(small_artifact)], capsys)[0] == 0
    assert not marker.exists()


@pytest.mark.parametrize("version", [1, FORMAT_VERSION])
def test_a_manifest_naming_a_program_is_refused(small_artifact, tmp_path, capsys, version):
    """The old route (a torch.export program, which unpickles) is refused, listed and sealed or not."""
    marker = tmp_path / "ran"
    _live_pickle(small_artifact / "program.pt2", marker, torch_format=True)
    _reseal(small_artifact, "program.pt2")
    _edit_manifest(small_artifact, lambda m: m.update(format_version=version, architecture={"program": "program.pt2"}))
    with pytest.raises(ArtifactError, match="format version 1.*re-export" if version == 1 else
                       "architecture lacks the field.*name"):
        load(small_artifact)
    code, _, err = _cli(["summary", str(small_artifact)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


@pytest.mark.parametrize("target", ["model.safetensors", "manifest.json"])
def test_a_pickle_in_place_of_a_packed_file_is_refused(small_artifact, tmp_path, target):
    marker = tmp_path / "ran"
    _live_pickle(small_artifact / target, marker, torch_format=True)
    if target != "manifest.json":
        _reseal(small_artifact, target)
    with pytest.raises(ArtifactError, match="not a readable safetensors file" if target != "manifest.json"
                       else "not valid JSON"):
        load(small_artifact)
    assert not marker.exists()


def test_a_tensor_file_name_pointing_at_a_pickle_is_refused(small_artifact, tmp_path):
    marker = tmp_path / "ran"
    _live_pickle(small_artifact / "weights.pt", marker, torch_format=True)
    _reseal(small_artifact, "weights.pt")
    _edit_manifest(small_artifact, lambda m: m.update(tensor_file="weights.pt"))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load(small_artifact)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["trained/model.safetensors", "model.onnx"])
def test_validate_never_unpickles_a_crafted_export(export_dir, tmp_path, capsys, target):
    """A payload in place of the trained copy or the ONNX graph, with every checksum recomputed:
    validate reports that runtime as failed and runs nothing."""
    marker = tmp_path / "ran"
    _live_pickle(export_dir / target, marker, torch_format=True)
    _reseal(export_dir, target)
    code, out, err = _cli(["validate", str(export_dir), "--samples", "8"], capsys)
    assert code in (1, 2) and "Traceback" not in out + err
    assert not marker.exists()


def test_validate_refuses_a_changed_export_file_by_name(export_dir, capsys):
    """Every runtime checks the whole export first: a changed file makes it corrupt for all of
    them, named in one line (its size first: a changed size is refused before any hashing)."""
    size = os.path.getsize(export_dir / "model.onnx")
    with open(export_dir / "model.onnx", "ab") as f:
        f.write(b"\x00")  # not resealed
    code, out, err = _cli(["validate", str(export_dir), "--samples", "8"], capsys)
    assert code == 2 and "file 'model.onnx' is" in err and "the manifest records" in err, out + err
    assert len(err.strip().splitlines()) == 1
    with open(export_dir / "model.onnx", "r+b") as f:
        f.truncate(size)
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))  # the same size, other bytes
    code, out, err = _cli(["validate", str(export_dir), "--samples", "8"], capsys)
    assert code == 2 and "checksum mismatch for 'model.onnx'" in err and len(err.strip().splitlines()) == 1


CRAFTED_GRAPHS = {
    "function outside the list": (lambda g: g["nodes"][1].update(op="call_function", target="builtins.eval"),
                                  "the function 'builtins.eval' is not one the packed format allows"),
    "torch.load as a function": (lambda g: g["nodes"][1].update(op="call_function", target="torch.load"),
                                 "the function 'torch.load' is not one"),
    "method outside the list": (lambda g: g["nodes"][2].update(op="call_method", target="__reduce_ex__"),
                                "the tensor method '__reduce_ex__' is not one"),
    "module type outside the list": (lambda g: g["modules"]["stem"].update(type="Sequential"),
                                     "modules\\['stem'\\].type must be one of"),
    "module path reaching a dunder": (lambda g: g["modules"].update({"__class__": g["modules"].pop("stem")}),
                                      "must be a dotted module path"),
    "module path shadowing forward": (lambda g: g["modules"].update({"forward": g["modules"].pop("stem")}),
                                      "must be a dotted module path"),
    "placeholder name with code": (lambda g: g["nodes"][0].update(target="x=__import__('os')"),
                                   "target must be an identifier"),
    "getattr of a dunder": (lambda g: g["nodes"][2].update(op="call_function", target="getattr",
                                                           args=[{"node": 1}, "__class__"]),
                            "getattr of \\['__class__'\\]"),
    "unknown tagged value": (lambda g: g["nodes"][1].update(args=[{"pickle": "gASV"}]),
                             "must be a value of the packed format"),
    "forward reference": (lambda g: g["nodes"][1].update(args=[{"node": 5}]),
                          "must be an integer in \\[0, 0\\]"),
    "dtype with code": (lambda g: g["nodes"][2].update(kwargs={"dtype": {"dtype": "float32; import os"}}),
                        "must be a value of the packed format"),
    "argument nesting bomb": (lambda g: g["nodes"][1].update(args=[[[[[[[[[1]]]]]]]]]), "nested more than"),
    "no output": (lambda g: g["nodes"].pop(), "must end with exactly one output node"),
    "unknown constructor argument": (lambda g: g["modules"]["stem"]["args"].update(init="os.system"),
                                     "Conv2d takes no argument\\(s\\) init"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED_GRAPHS))
def test_crafted_graphs_are_refused_by_name(small_artifact, tmp_path, capsys, case):
    edit, match = CRAFTED_GRAPHS[case]
    _edit_manifest(small_artifact, lambda m: edit(m["graph"]))
    with pytest.raises(ArtifactError, match=match):
        load(small_artifact)
    code, _, err = _cli(["summary", str(small_artifact)], capsys)
    if code != 0:  # summary checks the schema and the tensor table; the structure is checked on load
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_string_argument_never_becomes_code(small_artifact, tmp_path):
    """No code is generated: a pad mode carrying code is a pad mode (a value handed to the
    function) that torch refuses, not code that runs."""
    marker = tmp_path / "ran"
    injected = f"constant'); open({str(marker)!r}, 'w'); ('"

    def edit(m):
        pad = next(n for n in m["graph"]["nodes"] if n.get("target") == "torch.nn.functional.pad")
        pad["kwargs"] = {**pad.get("kwargs", {}), "mode": injected}

    _edit_manifest(small_artifact, edit)
    model = load(small_artifact)  # saved without an input_shape: no forward pass at load
    with pytest.raises(ArtifactError, match="node .*pad.* failed"):  # one line naming the node
        model(torch.randn(1, 1, 8, 8))
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# 5. Malformed manifests: one clear error, never a traceback


def _nested(depth):
    return {"graph": json.loads("[" * 50 + "]" * 50)} if depth < 0 else None


MALFORMED = {
    "format_version true": (lambda m: m.update(format_version=True), "format version True"),
    "format_version string": (lambda m: m.update(format_version="2"), "format version '2'"),
    "files as a list": (lambda m: m.update(files=["model.safetensors"]), "files must be an object"),
    "files naming a path outside": (lambda m: m["files"].update({"../x": {"sha256": "0" * 64, "bytes": 1}}),
                                    "relative path inside"),
    "checksum not hex": (lambda m: m["files"]["model.safetensors"].update(sha256="abc"), "SHA-256 digest"),
    "size negative": (lambda m: m["files"]["model.safetensors"].update(bytes=-1), "bytes must be an integer"),
    "checksum without a size": (lambda m: m["files"].update({"model.safetensors": "0" * 64}), "must be an object"),
    "input_shape negative": (lambda m: m.update(input_shape=[-1, 8, 8]), "input_shape\\[0\\] must be an integer"),
    "input_shape string": (lambda m: m.update(input_shape="abc"), "input_shape must be a list"),
    "huge fp32 bytes": (lambda m: m.update(fp32_state_dict_bytes=10**30), "fp32_state_dict_bytes must be"),
    "layers as a list": (lambda m: m.update(layers=[1, 2]), "layers must be an object"),
    "layer encoding garbage": (lambda m: m["layers"].update(conv={"input": 5}), "layers\\['conv'\\]"),
    "unknown field": (lambda m: m.update(loader="torch.export.load"), "unknown field\\(s\\) 'loader'"),
    "architecture outside the zoo": (lambda m: m.update(architecture={"name": "os", "kwargs": {}}),
                                     "architecture.name must be one of"),
    "tensor table garbage": (lambda m: m.update(tensors={"stem.weight": "float32"}), "tensors"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_manifests_get_one_clear_error(small_artifact, capsys, case):
    edit, match = MALFORMED[case]
    _edit_manifest(small_artifact, edit)
    with pytest.raises(ArtifactError, match=match):
        load(small_artifact)
    code, _, err = _cli(["summary", str(small_artifact)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_deeply_nested_manifest_json(small_artifact, capsys):
    (small_artifact / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        load(small_artifact)
    code, _, err = _cli(["summary", str(small_artifact)], capsys)
    assert code == 2 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# 2. A manifest cannot make the loader allocate without bound

_MEASURE = textwrap.dedent("""
    import resource, sys, time, torch, bnnkit.export
    from bnnkit.artifacts import ArtifactError
    {prepare}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        {call}
        print("LOADED")
    except ArtifactError as e:
        print("REFUSED", e)
    print("SECONDS", time.perf_counter() - t0)
    print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def _measure(prepare, call):
    run = subprocess.run([sys.executable, "-c", _MEASURE.format(prepare=prepare, call=call)],
                         capture_output=True, text=True, env=dict(os.environ, BNNKIT_BACKEND="torch"), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())
    return lines, float(lines["SECONDS"]), float(lines["GROWTH_MB"])


def test_a_100x_larger_graph_is_refused_before_allocating(tmp_path):
    model = models.create("digits_mlp").eval()  # hidden 512: a 100x larger layer is 51200 wide (10 GB)
    out = tmp_path / "digits"
    pack(model).save(out)

    def grow(m):
        for path, entry in m["graph"]["modules"].items():
            for key in ("out_features", "in_features", "num_features"):
                if entry["args"].get(key) == 512:
                    entry["args"][key] = 51200

    _edit_manifest(out, grow)
    lines, seconds, growth = _measure("", f"bnnkit.export.load({str(out)!r})")
    assert "REFUSED" in lines and "holds" in lines["REFUSED"], lines
    assert seconds < 1.0 and growth < 200, (seconds, growth)


def test_a_100x_larger_trained_copy_is_refused_before_allocating(export_dir):
    """The trained model of an export (rebuilt from the zoo by name and kwargs) is built on the
    meta device first: hidden=6400 would be a 160 MB layer, refused in place of being built."""
    config_path = export_dir / "trained" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_kwargs"]["hidden"] = 100 * config["model_kwargs"]["hidden"]
    config_path.write_text(json.dumps(config))
    _reseal(export_dir / "trained", "config.json", manifest="run-manifest.json")  # as an attacker would
    lines, seconds, growth = _measure("from bnnkit.train import load_run",
                                      f"load_run({str(export_dir / 'trained')!r})")
    assert "REFUSED" in lines and "differ at" in lines["REFUSED"], lines
    assert seconds < 1.0 and growth < 200, (seconds, growth)


# ---------------------------------------------------------------------------------------------
# 4. Writers never clobber each other; saving into an empty directory


def test_save_accepts_an_existing_empty_directory(tmp_path):
    import tempfile

    model = randomize_batchnorm(small_model(), seed=1)
    target = tempfile.mkdtemp(dir=tmp_path)
    pack(model).save(target)
    assert sorted(os.listdir(target)) == ["manifest.json", "model.safetensors"]
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        pack(model).save(target)
    pack(model).save(target, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        pack(model).save(tmp_path / "file", overwrite=True)


def test_a_directory_that_appears_meanwhile_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(FileExistsError, match="by another writer"):
        with staged_directory(str(target)) as staging:
            os.mkdir(staging)
            with open(os.path.join(staging, "mine"), "w") as f:
                f.write("a")
            target.mkdir()
            (target / "theirs").write_text("b")
    assert os.listdir(target) == ["theirs"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no scratch left


def test_overwrite_swaps_in_one_step(tmp_path):
    target = tmp_path / "out"
    for content in ("old", "new"):
        with staged_directory(str(target), overwrite=True) as staging:
            os.mkdir(staging)
            (open(os.path.join(staging, "f"), "w")).write(content)
    assert (target / "f").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


def test_scratch_of_a_killed_writer_is_removed_on_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    scratch = tmp_path / f".out.{pid}.abc123.tmp"
    (scratch / "new").mkdir(parents=True)
    mine = tmp_path / f".out.{os.getpid()}.live.tmp"
    mine.mkdir()
    with staged_directory(str(tmp_path / "out")) as staging:
        os.mkdir(staging)
    assert not scratch.exists() and mine.exists()


def _export_cmd(run, out, *extra):
    return [sys.executable, "-m", "bnnkit", "export", str(run), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from bnnkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        run = root / f"run{seed}"
        train(TrainConfig(model="digits_mlp", dataset="synthetic", out=str(run), epochs=1, seed=seed,
                          model_kwargs={"hidden": 32}, progress=False), log=lambda *a: None)
        runs.append(run)
    return runs


def test_two_exports_to_one_directory_one_wins(two_runs, tmp_path):
    out = tmp_path / "shared"
    env = dict(os.environ, BNNKIT_BACKEND="torch")
    procs = [subprocess.Popen(_export_cmd(run, out, "--onnx"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for run in two_runs]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code != 0)
    assert str(out) in loser and "Traceback" not in loser
    winner = two_runs[[code for code, _ in results].index(0)]
    assert (out / "trained" / "config.json").read_bytes() == (winner / "config.json").read_bytes()
    load(out)  # complete and consistent: every file matches the manifest
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_killed_export_leaves_the_old_state_or_the_new(two_runs, tmp_path):
    """SIGKILL at increasing delays: the target is absent or a complete export, never a mix;
    the next export removes the killed one's scratch."""
    out = tmp_path / "export"
    env = dict(os.environ, BNNKIT_BACKEND="torch")
    states = set()
    for delay in (0.5, 1.5, 2.5, 3.5, 5.0):
        if out.exists():
            shutil.rmtree(out)
        proc = subprocess.Popen(_export_cmd(two_runs[0], out, "--onnx"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            load(out)  # complete
            states.add("complete")
        else:
            states.add("absent")
    assert "absent" in states
    if out.exists():
        shutil.rmtree(out)
    assert subprocess.run(_export_cmd(two_runs[0], out), env=env, capture_output=True).returncode == 0
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_resume_never_unpickles_a_crafted_checkpoint(two_runs, tmp_path, capsys):
    """``--resume`` reads the checkpoint through safetensors only: a pickle in its place (the
    run manifest resealed) is refused, and a model file swapped for one is refused by load_run."""
    run = tmp_path / "run"
    shutil.copytree(two_runs[0], run)
    marker = tmp_path / "ran"
    _live_pickle(run / "checkpoint.safetensors", marker, torch_format=True)
    _reseal(run, "checkpoint.safetensors", manifest="run-manifest.json")
    code, _, err = _cli(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", str(run),
                         "--epochs", "1", "--model-arg", "hidden=32", "--resume", "--no-progress"], capsys)
    assert code == 2 and "Traceback" not in err and "checkpoint" in err
    _live_pickle(run / "model.safetensors", marker, torch_format=True)
    _reseal(run, "model.safetensors", manifest="run-manifest.json")
    code, _, err = _cli(["summary", str(run)], capsys)
    assert code == 2 and "not a readable safetensors file" in err
    assert not marker.exists()
