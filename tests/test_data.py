"""Datasets: the embedded digits split, synthetic data, clear errors."""

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
