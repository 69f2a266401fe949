"""bnnkit predict: PNGs, folders and .npy arrays through every runtime, preprocessed as in
training; every bad input is one line naming it and what is expected."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import bnnkit.export
from bnnkit.cli import main
from bnnkit.data import load_digits_raw, load_digits_tensors
from bnnkit.predict import Predictor, format_table
from bnnkit.train import load_run


def _digit_pngs(directory, count=6):
    """Held-out digits as 8-bit grayscale PNGs (0..16 -> 0..255) and the raw values they hold."""
    raw, labels = load_digits_raw("test")
    directory.mkdir(parents=True, exist_ok=True)
    pixels = np.round(raw[:count, 0] * 255 / 16).astype(np.uint8)
    paths = []
    for i in range(count):
        paths.append(directory / f"test-{i:03d}-label-{labels[i]}.png")
        Image.fromarray(pixels[i]).save(paths[i])
    return paths, pixels[:, None].astype(np.float64) * 16 / 255


@pytest.mark.parametrize("runtime", ["packed", "onnxruntime", "trained"])
def test_every_runtime_predicts_npy_pngs_and_folders_as_the_model_was_trained(digits_artifact, tmp_path, runtime):
    raw, _ = load_digits_raw("test")
    np.save(tmp_path / "digits.npy", raw[:40].astype(np.uint8))
    paths, png_raw = _digit_pngs(tmp_path / "pngs")
    predictor = Predictor.from_export(digits_artifact, runtime)
    assert predictor.spec.class_names == tuple("0123456789")

    model, _ = load_run(str(digits_artifact / "trained"))
    with torch.no_grad():
        expected = torch.softmax(model(load_digits_tensors("test")[0][:40]).double(), dim=1)
    got = predictor.predict(str(tmp_path / "digits.npy"), top_k=10, batch_size=16)
    assert [p.input for p in got] == [f"{tmp_path / 'digits.npy'}[{i}]" for i in range(40)]
    probs = torch.zeros(40, 10, dtype=torch.float64)
    for i, p in enumerate(got):
        probs[i, list(p.classes)] = torch.tensor(p.probabilities, dtype=torch.float64)
        assert list(p.probabilities) == sorted(p.probabilities, reverse=True)
        assert p.names == tuple(str(c) for c in p.classes)
    assert torch.allclose(probs, expected, atol=1e-5)  # the training preprocessing, every runtime

    from_folder = predictor.predict(str(tmp_path / "pngs"), top_k=3)
    from_files = predictor.predict([str(p) for p in paths], top_k=3)
    from_pixels = predictor.predict(png_raw, top_k=3)
    assert [p.input for p in from_folder] == [str(p) for p in paths]
    assert [p.classes for p in from_folder] == [p.classes for p in from_files] == [p.classes for p in from_pixels]
    assert np.allclose([p.probabilities for p in from_folder], [p.probabilities for p in from_pixels], atol=1e-6)


def test_python_api_on_a_loaded_packed_model_matches_the_export(digits_artifact):
    raw, _ = load_digits_raw("test")
    packed = bnnkit.export.load(digits_artifact)
    ours = Predictor.from_model(packed).predict(torch.from_numpy(raw[:8]), top_k=2)
    theirs = bnnkit.predict.predict(digits_artifact, raw[:8], top_k=2)
    assert [p.classes for p in ours] == [p.classes for p in theirs]
    assert [p.input for p in ours] == [f"input[{i}]" for i in range(8)]
    one = Predictor.from_model(packed).predict(raw[0, 0], top_k=1)  # one (H, W) digit, no channel dim
    assert len(one) == 1 and one[0].classes == ours[0].classes[:1]
    table = format_table(ours)
    assert table.splitlines()[0].split() == ["input", "1st", "2nd"] and len(table.splitlines()) == 10


def test_cli_prints_a_table_and_writes_json(digits_artifact, tmp_path, capsys):
    paths, _ = _digit_pngs(tmp_path / "pngs", count=3)
    raw, _ = load_digits_raw("test")
    np.save(tmp_path / "more.npy", raw[:70])
    out_json = tmp_path / "p.json"
    assert main(["predict", str(digits_artifact), str(tmp_path / "pngs"), str(tmp_path / "more.npy"), "--top-k", "3",
                 "--batch-size", "16", "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["input", "1st", "2nd", "3rd"] and len(lines) == 2 + 73 + 1
    assert "predict" in captured.err and "5/5" in captured.err  # the progress bar over 5 batches
    report = json.loads(out_json.read_text())
    assert report["runtime"] == "packed" and report["top_k"] == 3 and len(report["predictions"]) == 73
    first = report["predictions"][0]
    assert first["input"] == str(paths[0]) and len(first["top"]) == 3
    assert first["top"][0]["class"] == str(first["top"][0]["index"]) and 0 < first["top"][0]["probability"] <= 1
    assert report["input_spec"]["preprocessing"]["scale"] == 0.125


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line_errors_naming_them(digits_artifact, tmp_path, capsys):
    exp = str(digits_artifact)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert "broken.png: cannot be read as an image" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "broken.png")])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    assert "c.png: a color image (RGB); this model takes 1-channel (grayscale) images" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "c.png")])
    np.save(tmp_path / "small.npy", np.zeros((2, 1, 7, 7)))
    err = _one_line_error(capsys, ["predict", exp, str(tmp_path / "small.npy")])
    assert "small.npy: raw inputs of shape (2, 1, 7, 7); this model takes (N, 1, 8, 8) or (1, 8, 8)" in err
    assert "raw values in [0, 16]" in err
    np.save(tmp_path / "rgb.npy", np.zeros((2, 3, 8, 8)))
    assert "it has 3 channels, the model takes 1" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "rgb.npy")])
    np.save(tmp_path / "pixels.npy", np.full((2, 1, 8, 8), 255, np.uint8))
    assert "pixels.npy: values span [255, 255]; this model's raw inputs are in [0, 16]" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "pixels.npy")])
    np.save(tmp_path / "nan.npy", np.full((1, 8, 8), np.nan))
    assert "nan.npy: holds NaN or infinite values" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "nan.npy")])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "objects.npy: arrays of object are not raw inputs" in _one_line_error(
        capsys, ["predict", exp, str(tmp_path / "objects.npy")])
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt: not an image (.jpg" in _one_line_error(capsys, ["predict", exp, str(tmp_path / "notes.txt")])
    assert "missing.png: no such file" in _one_line_error(capsys, ["predict", exp, str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    assert "empty: the folder holds no images" in _one_line_error(capsys, ["predict", exp, str(tmp_path / "empty")])
    assert "--top-k must be >= 1" in _one_line_error(capsys, ["predict", exp, str(tmp_path / "c.png"), "--top-k", "0"])


def test_export_problems_are_one_line_errors(digits_artifact, tmp_path, capsys):
    paths, _ = _digit_pngs(tmp_path / "pngs", count=1)
    png = str(paths[0])
    no_onnx = tmp_path / "no-onnx"
    shutil.copytree(digits_artifact, no_onnx)
    (no_onnx / "model.onnx").unlink()
    err = _one_line_error(capsys, ["predict", str(no_onnx), png, "--runtime", "onnxruntime"])
    assert "runtime 'onnxruntime' is not available" in err and "export with --onnx" in err
    assert "is a training run, not an export directory" in _one_line_error(
        capsys, ["predict", str(digits_artifact / "trained"), png])
    assert "does not exist" in _one_line_error(capsys, ["predict", str(tmp_path / "nowhere"), png])

    old = tmp_path / "old"  # an export made before input specs: its manifest has no input_spec
    shutil.copytree(digits_artifact, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["input_spec"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert bnnkit.export.load(old).input_spec is None  # still loads
    err = _one_line_error(capsys, ["predict", str(old), png])
    assert "the packed model records no input spec" in err and "bnnkit export RUN_DIR --out DIR --overwrite" in err

    manifest["input_spec"] = {**json.loads((digits_artifact / "manifest.json").read_text())["input_spec"],
                              "class_names": ["a", "b"]}
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert "names 2 classes, the model outputs 10 scores" in _one_line_error(capsys, ["predict", str(old), png])


def test_an_image_model_without_a_value_range_takes_only_arrays(digits_artifact, tmp_path):
    from bnnkit.inputs import InputSpec

    packed = bnnkit.export.load(digits_artifact)
    predictor = Predictor.from_model(packed, InputSpec((1, 8, 8)))
    paths, _ = _digit_pngs(tmp_path, count=1)
    with pytest.raises(ValueError, match="does not take image files .*states no value range"):
        predictor.predict(str(paths[0]))
    assert len(predictor.predict(np.zeros((3, 1, 8, 8)))) == 3
    with pytest.raises(ValueError, match="no input spec"):
        Predictor.from_model(torch.nn.Linear(2, 2))


def test_the_demo_ends_by_predicting_held_out_digits_from_png_files(digits_artifact, tmp_path):
    """What the demo prints is the packed model's prediction on the first 8 held-out digits,
    read back from the PNG files it wrote (how many are right depends on the trajectory, which
    depends on the CPU and the thread count: not asserted)."""
    from bnnkit.cli.demo_cmd import predict_held_out_digits

    predictions, labels = predict_held_out_digits(str(digits_artifact), str(tmp_path / "digits"))
    assert labels == load_digits_raw("test")[1][:8].tolist()
    assert [p.input for p in predictions] == [str(tmp_path / "digits" / f"test-{i:03d}-label-{labels[i]}.png")
                                              for i in range(8)]
    _, png_raw = _digit_pngs(tmp_path / "again", count=8)
    direct = Predictor.from_export(digits_artifact, "packed").predict(png_raw, top_k=3)
    assert [p.classes for p in predictions] == [p.classes for p in direct]
    assert np.allclose([p.probabilities for p in predictions], [p.probabilities for p in direct], atol=1e-6)
