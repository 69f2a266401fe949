"""Datasets for training and validation.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download),
  a fixed stratified split (25% held out, seed 0); pixels 0..16 mapped to [-1, 1] by
  ``x / 8 - 1``; tensors ``(N, 1, 8, 8)`` float32.
- ``cifar10``: CIFAR-10 from ``data_dir`` (its binary version, or the python version read
  without unpickling: :mod:`bnnkit.cifar10`; ``download=True`` fetches the binary version);
  the paper's augmentation: random crop 32 with zero padding 4 + horizontal flip; pixels
  ``/ 255`` then normalized, as the reference code does, with the ImageNet mean/std
  (:data:`CIFAR10_MEAN` / :data:`CIFAR10_STD`).
- ``imagefolder``: ``data_dir/train`` and ``data_dir/val`` class folders (ImageNet layout), at
  the model's input size S (224 for the ImageNet models, 32 for the CIFAR ones, or
  ``--input-size``): random resized crop S with the reference code's area range (0.08, 1.25)
  (:data:`IMAGENET_CROP_SCALE`) + flip for training, resize ``round(S * 256 / 224)`` + center
  crop S for testing (:func:`imagefolder_geometry`; at 224: resize 256, as the recipe).
- ``synthetic``: random inputs of a given shape labelled by a fixed random linear rule, so it
  is learnable; for tests and smoke runs.

Each dataset's preprocessing is an :class:`~bnnkit.inputs.InputSpec` (:func:`dataset_input_spec`),
which the loaders apply and ``bnnkit train`` records for ``bnnkit predict``. The image
transforms (:mod:`bnnkit.images`) reproduce torchvision's with Pillow and torch alone.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bnnkit.choices import DATASETS
from bnnkit.inputs import InputSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The reference code normalizes CIFAR-10 with the ImageNet statistics, not CIFAR-10's own
# ((0.4914, 0.4822, 0.4465) / (0.2470, 0.2435, 0.2616)): its checkpoints expect these inputs.
CIFAR10_MEAN = IMAGENET_MEAN
CIFAR10_STD = IMAGENET_STD

# The recipes' geometry (torchvision's parameter names): CIFAR-10 RandomCrop(32, padding=4);
# ImageNet RandomResizedCrop(224, scale, ratio) for training, Resize(256) + CenterCrop(224) for testing.
CIFAR10_CROP_PADDING = 4
IMAGENET_TRAIN_CROP = 224
IMAGENET_CROP_SCALE = (0.08, 1.25)  # the reference code's area range (torchvision's default: (0.08, 1.0))
IMAGENET_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
IMAGENET_RESIZE = 256
IMAGENET_CROP = 224

DIGITS_MAX = 16  # scikit-learn's digits: pixels 0..16, mapped to [-1, 1] by x / 8 - 1
DIGITS_CLASSES = tuple(str(d) for d in range(10))


@dataclasses.dataclass(frozen=True)
class DatasetSplits:
    """Train and test sets of one dataset, with what a model needs to know about them.
    ``input_spec``: the test-time preprocessing and class names (``None`` when a synthetic
    shape has no layout)."""

    name: str
    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    input_spec: InputSpec | None = None


def check_dataset_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(DATASETS)}")
    return name


IMAGEFOLDER_DEFAULT_SHAPE = (3, IMAGENET_CROP, IMAGENET_CROP)
SYNTHETIC_DEFAULT_SHAPE = (3, 32, 32)


def imagefolder_geometry(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(crop, resize)`` of the ImageNet recipe scaled to a model that takes ``input_shape``
    ``(3, S, S)``: crops of S (random resized for training, center for testing) after resizing
    the shorter side to ``round(S * 256 / 224)`` for testing. Raises ``ValueError`` for other
    shapes."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2] or not 1 <= shape[1] <= 4096:
        raise ValueError(f"imagefolder trains models that take square RGB images (3, S, S), S in [1, 4096]; "
                         f"this one takes {shape}")
    crop = int(shape[1])
    return crop, max(crop, round(crop * IMAGENET_RESIZE / IMAGENET_CROP))


def dataset_input_spec(name: str, data_dir: str | None = None, input_shape: tuple[int, ...] | None = None,
                       num_classes: int = 10) -> InputSpec | None:
    """The :class:`~bnnkit.inputs.InputSpec` of dataset ``name``: what the test split's
    loader does to raw inputs, and the class names (for ``imagefolder``, the folder names of
    ``data_dir/train``, when it exists). ``input_shape``: the model's, which sets the synthetic
    set's shape and imagefolder's crops (:func:`imagefolder_geometry`; default (3, 224, 224));
    digits and cifar10 have their own. ``num_classes``: the synthetic set's."""
    check_dataset_name(name)
    if name == "digits":
        return _digits_spec()
    if name == "cifar10":
        from bnnkit.cifar10 import CLASSES

        return InputSpec((3, 32, 32), value_range=(0, 255), scale=1 / 255, mean=CIFAR10_MEAN, std=CIFAR10_STD,
                         resize=32, class_names=CLASSES)
    if name == "imagefolder":
        train_dir = os.path.join(data_dir, "train") if data_dir else None
        classes = image_folder_classes(train_dir) if train_dir and os.path.isdir(train_dir) else None
        crop, resize = imagefolder_geometry(input_shape or IMAGEFOLDER_DEFAULT_SHAPE)
        return InputSpec((3, crop, crop), value_range=(0, 255), scale=1 / 255, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, resize=resize, class_names=classes)
    input_shape = input_shape or SYNTHETIC_DEFAULT_SHAPE
    layout = {3: "NCHW", 1: "NC"}.get(len(input_shape))
    return InputSpec(tuple(input_shape), layout=layout) if layout else None


@functools.lru_cache(maxsize=1)
def _digits_spec() -> InputSpec:
    """The digits spec, with the brightness statistics of its training images."""
    spec = InputSpec((1, 8, 8), value_range=(0, DIGITS_MAX), scale=2 / DIGITS_MAX, offset=-1.0, resize=8,
                     class_names=DIGITS_CLASSES)
    return spec.with_statistics(load_digits_raw("train")[0])


def load_digits_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels (N, 1, 8, 8) float64 in 0..16, labels (N,) int64)`` of the digits ``split``
    (``"train"`` or ``"test"``): the fixed stratified split, before preprocessing."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    data = load_digits()
    x, y = data.images[:, None], data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def load_digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) int64)`` of the digits ``split``
    (``"train"`` or ``"test"``)."""
    x, y = load_digits_raw(split)
    return dataset_input_spec("digits").normalize(x), torch.from_numpy(y)


def _digits() -> DatasetSplits:
    return DatasetSplits("digits", TensorDataset(*load_digits_tensors("train")),
                         TensorDataset(*load_digits_tensors("test")), (1, 8, 8), 10, dataset_input_spec("digits"))


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
                         tuple(input_shape), num_classes,
                         dataset_input_spec("synthetic", None, input_shape, num_classes))


def _require_dir(data_dir: str | None, dataset: str) -> str:
    if not data_dir:
        raise ValueError(f"dataset {dataset!r} needs --data-dir (the directory that holds it)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data directory {data_dir!r} for dataset {dataset!r} does not exist")
    return data_dir


# --- image datasets ---------------------------------------------------------------------
def _to_input(spec: InputSpec, pixels_chw: np.ndarray) -> torch.Tensor:
    """uint8 ``(C, H, W)`` pixels -> the model's float32 ``(C, H, W)`` input (ToTensor + Normalize)."""
    return spec.normalize(spec.pixels_to_raw(pixels_chw[None]))[0]


class _CifarTrainTransform:
    """RandomCrop(32, padding) + RandomHorizontalFlip + ToTensor + Normalize of a uint8 ``(32, 32, 3)`` image."""

    def __init__(self, spec: InputSpec, padding: int) -> None:
        self.spec, self.padding = spec, padding

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        from bnnkit.images import random_crop_with_padding, random_horizontal_flip, to_chw

        img = random_horizontal_flip(random_crop_with_padding(img, img.shape[0], self.padding))
        return _to_input(self.spec, to_chw(img))


class _TestTransform:
    """ToTensor + Normalize of a uint8 ``(H, W, C)`` array, or Resize + CenterCrop first for a PIL image."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, img) -> torch.Tensor:
        from bnnkit.images import resize_center_crop, to_chw

        if not isinstance(img, np.ndarray):
            img = resize_center_crop(img, self.spec.resize, *self.spec.image_size)
        return _to_input(self.spec, to_chw(img))


class _ImageNetTrainTransform:
    """RandomResizedCrop(size, scale, ratio) + RandomHorizontalFlip + ToTensor + Normalize of a PIL image."""

    def __init__(self, spec: InputSpec, size: int, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        self.spec, self.size, self.scale, self.ratio = spec, size, scale, ratio

    def __call__(self, img) -> torch.Tensor:
        from bnnkit.images import random_horizontal_flip, random_resized_crop, to_chw

        img = random_horizontal_flip(random_resized_crop(img, self.size, self.scale, self.ratio))
        return _to_input(self.spec, to_chw(img))


class ArrayImages(Dataset):
    """In-memory uint8 ``(N, H, W, C)`` images and int labels; ``transform`` maps one image to a tensor."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def image_folder_classes(directory: str) -> tuple[str, ...]:
    """Sorted names of the sub-folders of ``directory`` (torchvision's ImageFolder classes)."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{directory!r} holds no class folders (ImageFolder layout: one folder per class)")
    return tuple(classes)


class ImageFolder(Dataset):
    """Images in class folders, as torchvision's ImageFolder finds them: classes are the sorted
    sub-folder names, samples every file with an image extension under each, walked in sorted
    order (symbolic links followed); a class without images is an error. Items are
    ``(transform(RGB PIL image), class index)``."""

    def __init__(self, root: str, transform) -> None:
        from bnnkit.images import is_image_file

        self.root, self.transform = root, transform
        self.classes = image_folder_classes(root)
        self.samples: list[tuple[str, int]] = []
        for index, name in enumerate(self.classes):
            before = len(self.samples)
            for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
                self.samples += [(os.path.join(folder, f), index) for f in sorted(files) if is_image_file(f)]
            if len(self.samples) == before:
                raise FileNotFoundError(f"class folder {os.path.join(root, name)!r} holds no images "
                                        "(.jpg, .jpeg, .png, ...)")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from bnnkit.images import image_to_channels, open_image

        path, label = self.samples[index]
        return self.transform(image_to_channels(open_image(path), 3, path)), label


def _cifar10(data_dir: str | None, download: bool) -> DatasetSplits:
    from bnnkit.cifar10 import download_cifar10, find_layout, read_cifar10

    if download and data_dir:
        os.makedirs(data_dir, exist_ok=True)
    root = _require_dir(data_dir, "cifar10")
    if download and find_layout(root) is None:
        download_cifar10(root)
    images, labels = read_cifar10(root, train=True)
    spec = dataset_input_spec("cifar10").with_statistics(images)
    train = ArrayImages(images, labels, _CifarTrainTransform(spec, CIFAR10_CROP_PADDING))
    test = ArrayImages(*read_cifar10(root, train=False), _TestTransform(spec))
    return DatasetSplits("cifar10", train, test, spec.shape, 10, spec)


def _imagefolder(data_dir: str | None, input_shape: tuple[int, ...]) -> DatasetSplits:
    root = _require_dir(data_dir, "imagefolder")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"imagefolder data needs {os.path.join(root, split)!r} (one folder per class)")
    spec = dataset_input_spec("imagefolder", root, input_shape)
    train = ImageFolder(os.path.join(root, "train"), _ImageNetTrainTransform(
        spec, spec.shape[1], IMAGENET_CROP_SCALE, IMAGENET_CROP_RATIO))
    test = ImageFolder(os.path.join(root, "val"), _TestTransform(spec))
    if test.classes != train.classes:
        only_train = sorted(set(train.classes) - set(test.classes))
        only_val = sorted(set(test.classes) - set(train.classes))
        raise ValueError(f"imagefolder {root!r}: train/ and val/ must have the same class folders (labels are "
                         f"their sorted positions); only in train/: {only_train[:5]}, only in val/: {only_val[:5]}")
    return DatasetSplits("imagefolder", train, test, spec.shape, len(train.classes), spec)


def load_dataset(name: str, data_dir: str | None = None, *, download: bool = False,
                 input_shape: tuple[int, ...] | None = None, num_classes: int = 10,
                 synthetic_sizes: tuple[int, int] = (512, 256)) -> DatasetSplits:
    """Train and test splits of dataset ``name`` (see the module docstring).

    ``input_shape`` (the model's) shapes the synthetic set (default (3, 32, 32)) and sets
    imagefolder's crops (default (3, 224, 224)); digits and cifar10 have their own.
    ``num_classes``: the synthetic set's.
    """
    check_dataset_name(name)
    if name == "digits":
        return _digits()
    if name == "synthetic":
        return _synthetic(tuple(input_shape or SYNTHETIC_DEFAULT_SHAPE), num_classes, *synthetic_sizes)
    if name == "cifar10":
        return _cifar10(data_dir, download)
    return _imagefolder(data_dir, tuple(input_shape or IMAGEFOLDER_DEFAULT_SHAPE))


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, sampler=None, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (one generator per loader)."""
    generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      generator=generator, num_workers=workers, drop_last=drop_last,
                      persistent_workers=False, pin_memory=pin_memory)
