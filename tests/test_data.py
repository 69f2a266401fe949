"""Datasets: the embedded digits split, synthetic data, clear errors."""

import json

import pytest
import torch

from bnnkit.data import load_dataset, load_digits_tensors, synthetic_tensors


def test_digits_split_is_fixed_stratified_and_normalized():
    x_train, y_train = load_digits_tensors("train")
    x_test, y_test = load_digits_tensors("test")
    assert x_train.shape == (1347, 1, 8, 8) and x_test.shape == (450, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert x_train.min() >= -1 and x_train.max() <= 1
    # stratified: every class has the same share in both splits (within one sample)
    train_share = torch.bincount(y_train, minlength=10) / len(y_train)
    test_share = torch.bincount(y_test, minlength=10) / len(y_test)
    assert (train_share - test_share).abs().max() < 0.01
    again, _ = load_digits_tensors("test")
    assert torch.equal(again, x_test)
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_digits_tensors("val")


def test_synthetic_is_deterministic_and_shares_its_rule():
    a = synthetic_tensors(64, (1, 8, 8), 10, seed=5)
    b = synthetic_tensors(64, (1, 8, 8), 10, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    splits = load_dataset("synthetic", input_shape=(3, 4, 4), num_classes=3, synthetic_sizes=(32, 16))
    assert len(splits.train) == 32 and len(splits.test) == 16 and splits.input_shape == (3, 4, 4)
    assert len(torch.unique(splits.train.tensors[1])) > 1


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="available datasets: digits, cifar10, imagefolder, synthetic"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset("imagefolder", str(tmp_path))


def _image_folder(root, size=(40, 30), per_class=2):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, (60 * i, 100, 200)).save(root / split / cls / f"{i}.png")
    return root


def test_imagefolder_trains_at_the_models_input_size_with_the_recipes_crops_scaled(tmp_path):
    """resnet20 takes 3x32x32: imagefolder crops 32 (random resized for training, after a resize
    to round(32 * 256 / 224) = 37 for testing), not ImageNet's 224; --input-size overrides it."""
    from bnnkit.data import imagefolder_geometry
    from bnnkit.train import TrainConfig, train

    root = str(_image_folder(tmp_path / "d"))
    assert imagefolder_geometry((3, 224, 224)) == (224, 256) and imagefolder_geometry((3, 32, 32)) == (32, 37)
    splits = load_dataset("imagefolder", root, input_shape=(3, 32, 32))
    assert splits.input_shape == (3, 32, 32) and splits.train.transform.size == 32
    assert splits.input_spec.resize == 37 and splits.test[0][0].shape == splits.train[0][0].shape == (3, 32, 32)
    assert load_dataset("imagefolder", root).input_shape == (3, 224, 224)  # the ImageNet recipe's default

    result = train(TrainConfig(model="resnet20", dataset="imagefolder", data_dir=root, out=str(tmp_path / "run"),
                               epochs=1, batch_size=4, progress=False), log=lambda *a: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["input_shape"] == [3, 32, 32] and config["input_spec"]["preprocessing"]["resize"] == 37
    assert result.epochs == 1

    sized = TrainConfig(model="resnet18", dataset="imagefolder", data_dir=root, out="x", input_size=64).resolved()
    assert sized.input_shape() == (3, 64, 64)
    with pytest.raises(ValueError, match="--input-size applies to imagefolder and synthetic; digits images"):
        TrainConfig(model="digits_mlp", out="x", input_size=16).resolved()
    with pytest.raises(ValueError, match=r"model 'vgg_small' does not take inputs of shape \(3, 64, 64\)"):
        TrainConfig(model="vgg_small", dataset="imagefolder", data_dir=root, out="x", input_size=64).resolved()
