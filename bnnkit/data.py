"""Datasets for training and validation.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download),
  a fixed stratified split (25% held out, seed 0); pixels 0..16 mapped to [-1, 1] by
  ``x / 8 - 1``; tensors ``(N, 1, 8, 8)`` float32.
- ``cifar10``: torchvision's CIFAR-10 from ``data_dir`` (the paper's augmentation:
  RandomCrop(32, padding=4) + horizontal flip; normalized, as the reference code does, with
  the ImageNet mean/std, :data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`).
- ``imagefolder``: ``data_dir/train`` and ``data_dir/val`` class folders (ImageNet layout):
  RandomResizedCrop(224, scale=(0.08, 1.25)) + flip for training (the reference code's crop
  scale, :data:`IMAGENET_TRAIN_CROP_SCALE`), Resize(256) + CenterCrop(224) for testing.
- ``synthetic``: random inputs of a given shape labelled by a fixed random linear rule, so it
  is learnable; for tests and smoke runs.

cifar10 and imagefolder need torchvision (``pip install "bnnkit[vision]"``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

DATASETS = ("digits", "cifar10", "imagefolder", "synthetic")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference code normalizes CIFAR-10 with the ImageNet statistics, not CIFAR-10's own
# ((0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616)): its checkpoints expect these inputs.
CIFAR10_MEAN = IMAGENET_MEAN
CIFAR10_STD = IMAGENET_STD
IMAGENET_TRAIN_CROP_SCALE = (0.08, 1.25)
"""The reference code's RandomResizedCrop(224) area range (torchvision's default is (0.08, 1.0))."""


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """Train and test sets of one dataset, with what a model needs to know about them."""

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(DATASETS)}")
    return name


def load_digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64)`` of the digits ``split``
    (``"train"`` or ``"test"``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    x = data.images.astype(np.float32) / 8.0 - 1.0
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def _digits() -> DatasetSplits:
    return DatasetSplits("digits", TensorDataset(*load_digits_tensors("train")),
                         TensorDataset(*load_digits_tensors("test")), (1, 8, 8), 10)


def synthetic_tensors(n: int, input_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` standard-normal inputs labelled by the argmax of a fixed random projection.

    The projection depends only on the shape and class count, so every split shares the rule.
    """
    rule = torch.Generator().manual_seed(1234)
    dim = int(np.prod(input_shape))
    projection = torch.randn(dim, num_classes, generator=rule)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *input_shape, generator=g)
    y = (x.flatten(1) @ projection).argmax(dim=1)
    return x, y


def _synthetic(input_shape: tuple[int, ...], num_classes: int, train_size: int, test_size: int) -> DatasetSplits:
    return DatasetSplits("synthetic",
                         TensorDataset(*synthetic_tensors(train_size, input_shape, num_classes, seed=1)),
                         TensorDataset(*synthetic_tensors(test_size, input_shape, num_classes, seed=2)),
                         tuple(input_shape), num_classes)


def _torchvision():
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as e:
        raise ImportError('cifar10 and imagefolder data need torchvision: pip install "bnnkit[vision]"') from e
    return torchvision, transforms


def _require_dir(data_dir: str | None, dataset: str) -> str:
    if not data_dir:
        raise ValueError(f"dataset {dataset!r} needs --data-dir (the directory that holds it)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir!r} for dataset {dataset!r} does not exist")
    return data_dir


def _cifar10(data_dir: str | None, download: bool) -> DatasetSplits:
    if download and data_dir:
        os.makedirs(data_dir, exist_ok=True)
    root = _require_dir(data_dir, "cifar10")
    torchvision, T = _torchvision()
    normalize = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test_tf = T.Compose([T.ToTensor(), normalize])
    try:
        train = torchvision.datasets.CIFAR10(root, train=True, transform=train_tf, download=download)
        test = torchvision.datasets.CIFAR10(root, train=False, transform=test_tf, download=download)
    except RuntimeError as e:
        raise FileNotFoundError(f"CIFAR-10 not found in {root!r} ({e}); pass --download to fetch it") from None
    return DatasetSplits("cifar10", train, test, (3, 32, 32), 10)


def _imagefolder(data_dir: str | None) -> DatasetSplits:
    root = _require_dir(data_dir, "imagefolder")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"imagefolder data needs {os.path.join(root, split)!r} (one folder per class)")
    torchvision, T = _torchvision()
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = torchvision.datasets.ImageFolder(os.path.join(root, "train"), T.Compose(
        [T.RandomResizedCrop(224, scale=IMAGENET_TRAIN_CROP_SCALE), T.RandomHorizontalFlip(), T.ToTensor(),
         normalize]))
    test = torchvision.datasets.ImageFolder(os.path.join(root, "val"), T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]))
    return DatasetSplits("imagefolder", train, test, (3, 224, 224), len(train.classes))


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10,
                 synthetic_sizes: tuple[int, int] = (512, 256)) -> DatasetSplits:
    """Train and test splits of dataset ``name`` (see the module docstring).

    ``input_shape`` and ``num_classes`` shape the synthetic set (other datasets have their own).
    """
    check_dataset_name(name)
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic(tuple(input_shape), num_classes, *synthetic_sizes)
    if name == "cifar10":
        return _cifar10(data_dir, download)
    return _imagefolder(data_dir)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, sampler=None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (one generator per loader)."""
    generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, drop_last=drop_last,
                      persistent_workers=False, pin_memory=pin_memory)
