"""Readers attacked as a class (issue 18, sections 4 and 5): every file bnnkit reads is a
regular file of the size it expects, read once (what is hashed is what is used); images are
opened only in the listed formats and within a pixel bound checked before decoding."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import bnnkit.export
from bnnkit.artifacts import ArtifactError
from bnnkit.predict import Predictor

from hostile import cli, fifo, no_hang, one_line, reseal_export


@pytest.fixture
def export_dir(tmp_path, digits_artifact):
    out = tmp_path / "export"
    shutil.copytree(digits_artifact, out)
    return out


def _digit_png(path, invert=False):
    from bnnkit.data import load_digits_raw

    pixels = np.round(load_digits_raw("test")[0][0, 0] * 255 / 16).astype(np.uint8)
    Image.fromarray(255 - pixels if invert else pixels).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# 4. Images

_IMAGE_MEMORY = textwrap.dedent("""
    import resource, sys
    from bnnkit.predict import Predictor
    predictor = Predictor.from_export(sys.argv[1], "packed")
    for path in sys.argv[2:]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            predictor.predict([path])
            print("PREDICTED", path)
        except ValueError as e:
            print("REFUSED", str(e).replace(chr(10), " ")[:300])
        print("GROWTH_MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
""")


def test_image_bombs_are_refused_from_the_header(export_dir, tmp_path):
    """A 4 KB PNG of 1 x 4,000,000 pixels passes Pillow's bomb limit; resized to the digits'
    shorter side 8 it would be 32 million pixels (1.7 GB in the old predict). Refused from the
    header, before decoding; so is an image past the decoded-pixel bound."""
    tall = tmp_path / "tall.png"
    Image.new("L", (1, 4_000_000)).save(tall, optimize=True)
    wide = tmp_path / "wide.png"
    Image.new("L", (9000, 8000)).save(wide, optimize=True)  # 72 million pixels > 2**26
    assert tall.stat().st_size < 20_000
    run = subprocess.run([sys.executable, "-c", _IMAGE_MEMORY, str(export_dir), str(tall), str(wide)],
                         capture_output=True, text=True, env=dict(os.environ, BNNKIT_BACKEND="torch"), timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("REFUSED") and "resizing this 4000000x1 image" in lines[0], lines
    assert lines[2].startswith("REFUSED") and "bnnkit decodes images of at most 67,108,864 pixels" in lines[2], lines
    assert all(float(line.split()[1]) < 100 for line in lines if line.startswith("GROWTH_MB")), lines


_GHOSTSCRIPT = textwrap.dedent("""
    import os, sys
    from PIL import Image
    from bnnkit.cli import main
    path, marker, export = sys.argv[1:4]
    try:  # the payload is live: Pillow, asked to decode this file, runs gs
        Image.open(path).load()
    except Exception:
        pass
    print("LIVE", os.path.exists(marker))
    os.remove(marker)
    code = main(["predict", export, path])
    print("CODE", code)
    print("RAN", os.path.exists(marker))
""")


def test_an_eps_file_named_png_never_runs_ghostscript(export_dir, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = tmp_path / "gs-ran"
    (fake / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    (fake / "gs").chmod(0o755)
    eps = tmp_path / "drawing.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n")
    run = subprocess.run([sys.executable, "-c", _GHOSTSCRIPT, str(eps), str(marker), str(export_dir)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, BNNKIT_BACKEND="torch", PATH=f"{fake}:{os.environ['PATH']}"))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "LIVE True" in run.stdout and "CODE 2" in run.stdout and "RAN False" in run.stdout, run.stdout
    assert "cannot be read as an image" in one_line(run.stderr) and "JPEG, PNG" in run.stderr


def test_invert_and_the_polarity_warning(export_dir, tmp_path, capsys):
    """A dark-on-white drawing is far from the digits' training images: one warning line says
    so and names --invert; with --invert the same image predicts as the bright-on-dark one."""
    normal = _digit_png(tmp_path / "normal.png")
    inverted = _digit_png(tmp_path / "inverted.png", invert=True)
    code, out, err = cli(["predict", str(export_dir), str(normal), "--top-k", "1"], capsys)
    assert code == 0 and err == ""
    normal_row = out.splitlines()[2].split()[1:]
    code, out, err = cli(["predict", str(export_dir), str(inverted), "--top-k", "1"], capsys)
    warning = one_line(err)
    assert code == 0 and warning.startswith("bnnkit predict: warning: the image (first:") and "--invert" in warning
    code, out, err = cli(["predict", str(export_dir), str(inverted), "--top-k", "1", "--invert"], capsys)
    assert code == 0 and err == "" and out.splitlines()[2].split()[1:] == normal_row
    code, out, err = cli(["predict", str(export_dir), str(normal), str(inverted), "--invert"], capsys)
    assert "1 of 2 images (first: " + str(normal) in one_line(err) and "drop --invert" in err
    with pytest.warns(bnnkit.predict.InputStatisticsWarning):
        Predictor.from_export(export_dir).predict(str(inverted))


# ---------------------------------------------------------------------------------------------
# 5. Regular files only, sizes before hashing, one read


def test_fifos_and_devices_are_refused_by_name_never_waited_on(export_dir, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    _digit_png(folder / "a.png")
    fifo(folder / "b.png")
    fifo(tmp_path / "x.npy")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    with no_hang(60):
        for target, kind in ((folder, "FIFO"), (tmp_path / "x.npy", "FIFO"),
                             (tmp_path / "zero.png", "character device")):
            code, _, err = cli(["predict", str(export_dir), str(target)], capsys)
            assert code == 2 and f"is a {kind}" in one_line(err) and "not a regular file" in err, err


@pytest.mark.parametrize("target", ["manifest.json", "model.safetensors", "model.onnx", "trained/config.json"])
def test_a_fifo_in_place_of_an_export_file_is_refused(export_dir, tmp_path, capsys, target):
    np.save(tmp_path / "x.npy", np.zeros((1, 8, 8)))
    os.remove(export_dir / target)
    fifo(export_dir / target)
    with no_hang(60):
        for runtime in ("packed", "onnxruntime", "trained"):
            code, _, err = cli(["predict", str(export_dir), str(tmp_path / "x.npy"), "--runtime", runtime], capsys)
            assert code == 2 and "FIFO" in one_line(err), err


@pytest.mark.parametrize("name", ["notes.txt", "model.safetensors"])
def test_a_sparse_huge_file_is_refused_by_its_size_before_hashing(export_dir, name):
    """A listed file replaced by a 200 GB sparse file (the old loader was still hashing it
    after 60 s): its recorded size differs, refused at once."""
    (export_dir / "notes.txt").write_text("my notes")
    reseal_export(export_dir, "notes.txt")
    bnnkit.export.load(export_dir)
    with open(export_dir / name, "r+b") as f:
        f.truncate(200 << 30)
    with no_hang(10), pytest.raises(ArtifactError, match=f"file '{name}' is 214,748,364,800 bytes, the manifest"):
        bnnkit.export.load(export_dir)


def _other_weights(export_dir, tmp_path):
    """The export's model.safetensors with other values of the same shapes (and size)."""
    from bnnkit.artifacts import read_tensors, tensor_bytes

    tensors = read_tensors(str(export_dir / "model.safetensors"))
    other = {k: (v.flip(0) if v.is_floating_point() and v.dim() else v) for k, v in tensors.items()}
    data = tensor_bytes(other)
    assert len(data) == (export_dir / "model.safetensors").stat().st_size
    return data


def test_what_is_hashed_is_what_is_loaded(export_dir, tmp_path, monkeypatch):
    """A file swapped right after it was hashed (the old loader hashed, closed and reopened:
    other weights passed the checksum in 20 of 100 tries): the loader parses the bytes it
    hashed, so the swap changes nothing. Deterministic: the swap happens inside the loader,
    between the hash and the parse."""
    import bnnkit.artifacts as artifacts

    x = torch.randn(4, 1, 8, 8)
    expected = bnnkit.export.load(export_dir)(x)
    evil, good = _other_weights(export_dir, tmp_path), (export_dir / "model.safetensors").read_bytes()
    real = artifacts.tensors_from_bytes

    def swap_then_parse(data, what, path):
        (export_dir / "model.safetensors").write_bytes(evil)  # a concurrent writer, right now
        return real(data, what, path)

    monkeypatch.setattr(artifacts, "tensors_from_bytes", swap_then_parse)
    assert torch.equal(bnnkit.export.load(export_dir)(x), expected)
    monkeypatch.undo()
    (export_dir / "model.safetensors").write_bytes(good)

    stop = threading.Event()

    def swapper():  # the race, many times: every load either refuses or gives the listed weights
        while not stop.is_set():
            for data in (evil, good):
                tmp = export_dir / ".swap"
                tmp.write_bytes(data)
                os.replace(tmp, export_dir / "model.safetensors")

    thread = threading.Thread(target=swapper)
    thread.start()
    outcomes = []
    try:
        for _ in range(30):
            try:
                outcomes.append(torch.equal(bnnkit.export.load(export_dir)(x), expected))
            except ArtifactError as e:
                assert "checksum mismatch" in str(e) or "changed while" in str(e), e
    finally:
        stop.set()
        thread.join()
    assert all(outcomes)


def test_the_onnx_and_trained_runtimes_use_the_bytes_they_checked(export_dir, monkeypatch):
    from bnnkit.export.validation import runtimes
    from bnnkit.train import checkpoint

    x = torch.randn(4, 1, 8, 8)
    onnx_before = runtimes.load_onnx_cpu(str(export_dir)).run(x)
    with torch.no_grad():
        trained_before = runtimes.load_trained_model(str(export_dir))(x)
    real_check, real_model = runtimes.check_onnx_model, checkpoint.run_files_model

    def swap_onnx(data, path):
        (export_dir / "model.onnx").write_bytes(b"garbage")  # after the check, before onnxruntime gets it
        return real_check(data, path)

    def swap_trained(config, model, manifest, run_dir, *args):
        (export_dir / "trained" / "model.safetensors").write_bytes(b"garbage")
        return real_model(config, model, manifest, run_dir, *args)

    good_onnx = (export_dir / "model.onnx").read_bytes()
    monkeypatch.setattr(runtimes, "check_onnx_model", swap_onnx)
    monkeypatch.setattr(checkpoint, "run_files_model", swap_trained)
    assert torch.equal(runtimes.load_onnx_cpu(str(export_dir)).run(x), onnx_before)
    (export_dir / "model.onnx").write_bytes(good_onnx)
    with torch.no_grad():
        assert torch.equal(runtimes.load_trained_model(str(export_dir))(x), trained_before)


@pytest.mark.parametrize("case", ["npz", "negative shape", "huge shape", "object dtype", "truncated", "not npy"])
def test_npy_inputs_are_checked_from_their_header(export_dir, tmp_path, capsys, case):
    path = tmp_path / "x.npy"
    if case == "npz":
        np.savez(tmp_path / "x.npz", a=np.zeros((1, 8, 8)))
        os.replace(tmp_path / "x.npz", path)
        match = "a .npz archive"
    elif case in ("negative shape", "huge shape"):
        np.save(path, np.zeros((2, 8, 8)))
        _set_npy_shape(path, "(-2, 8, 8)" if case == "negative shape" else "(1000000000000, 8, 8)")
        match = "expected at most 8 non-negative dims" if case == "negative shape" else "the file has"
    elif case == "object dtype":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        match = "arrays of object are not raw inputs"
    elif case == "truncated":
        np.save(path, np.zeros((2, 8, 8)))
        path.write_bytes(path.read_bytes()[:-8])
        match = "the file has"
    else:
        path.write_bytes(b"hello")
        match = "not a .npy array"
    code, _, err = cli(["predict", str(export_dir), str(path)], capsys)
    assert code == 2, err
    import re

    assert re.search(match, one_line(err)), err


def _set_npy_shape(path, shape: str) -> None:
    """Rewrite the shape in a .npy header, keeping the header's length (its padding absorbs it)."""
    data = path.read_bytes()
    start, end = data.index(b"{"), data.index(b"\n", 10)
    header = data[start:end].decode()
    new = header[:header.index("(")] + shape + header[header.index(")") + 1:]
    new = new.rstrip() + " " * (len(header) - len(new.rstrip()))
    assert len(new) == len(header)
    path.write_bytes(data[:start] + new.encode() + data[end:])


def test_a_trained_config_field_of_the_wrong_type_is_one_line(export_dir, capsys):
    """validate reads the trained copy's config (checked field by field) for the input shape
    and the dataset: ``train: [1]`` once made a traceback."""
    from hostile import edit_json, reseal_run

    edit_json(export_dir / "trained" / "config.json", lambda c: c.update(train=[1]))
    reseal_run(export_dir / "trained", "config.json")
    for rel in ("trained/config.json", "trained/run-manifest.json"):
        reseal_export(export_dir, rel)
    code, _, err = cli(["validate", str(export_dir), "--samples", "4"], capsys)
    assert code == 2 and "train must be an object of training options" in one_line(err)
