"""Image reading and the recipes' transforms without torchvision: exact against the formulas here,
and against torchvision itself where it is installed (it is not in the CPU set-up; see the README)."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bnnkit import data
from bnnkit.inputs import InputSpec
from bnnkit.images import (center_crop, image_to_channels, open_image, random_crop_with_padding,
                           random_horizontal_flip, random_resized_crop,
                           random_resized_crop_box, resize_center_crop, resize_shorter_side)


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_to_tensor_normalize_is_exactly_torchvisions_formula():
    """ToTensor = float32(p) / 255, Normalize = (x - mean) / std in float32: every pixel value."""
    spec = dataclasses.replace(data.dataset_input_spec("cifar10"), shape=(3, 8, 8))
    # every value 0..255 in every channel: (4, 3, 8, 8), channel c of image n rolled by 64n + c
    pixels = np.stack([np.stack([np.roll(np.arange(256, dtype=np.uint8), 64 * n + c)[:64].reshape(8, 8)
                                 for c in range(3)]) for n in range(4)])
    ours = spec.normalize(spec.pixels_to_raw(pixels))
    t = torch.from_numpy(pixels).to(torch.float32).div(255)
    expected = t.sub(torch.tensor(spec.mean).view(-1, 1, 1)).div(torch.tensor(spec.std).view(-1, 1, 1))
    assert torch.equal(ours, expected)
    every = np.arange(256, dtype=np.float64)[None, None, :, None]
    gray = InputSpec((1, 256, 1), value_range=(0, 255), scale=1 / 255)
    assert torch.equal(gray.normalize(every), torch.arange(256, dtype=torch.float32).div(255).view(1, 1, 256, 1))


def test_digits_preprocessing_matches_the_loader_formula():
    raw, _ = data.load_digits_raw("test")
    x, _ = data.load_digits_tensors("test")
    assert torch.equal(x, torch.from_numpy(raw.astype(np.float32) / 8.0 - 1.0))


def test_random_crop_with_padding_is_a_shifted_window_of_the_zero_padded_image():
    img = _rgb(32, 32)
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    offsets = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = random_crop_with_padding(img, 32, 4)
        torch.manual_seed(seed)
        i, j = (int(torch.randint(0, 9, (1,)).item()) for _ in range(2))
        assert np.array_equal(out, padded[i:i + 32, j:j + 32])
        offsets.add((i, j))
    assert len(offsets) > 20


def test_flip_and_resized_crop_draw_like_torchvision():
    torch.manual_seed(3)
    flips = [random_horizontal_flip(np.arange(6).reshape(1, 6, 1))[0, 0, 0] == 5 for _ in range(200)]
    assert 60 < sum(flips) < 140
    torch.manual_seed(0)
    for _ in range(200):
        i, j, h, w = random_resized_crop_box(300, 200, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= i and 0 <= j and i + h <= 300 and j + w <= 200
        assert 0.08 * 60000 * 0.9 <= h * w <= 60000
    # an extreme aspect ratio falls back to a center crop within the ratio range after 10 tries
    assert random_resized_crop_box(10, 1000, (0.99, 1.0), (3 / 4, 4 / 3)) == (0, 493, 10, 13)


def test_resize_and_center_crop_follow_torchvision_rounding():
    img = Image.fromarray(_rgb(300, 451))
    resized = resize_shorter_side(img, 256)
    assert resized.size == (int(256 * 451 / 300), 256)
    assert resize_shorter_side(img, 300) is img  # already that size: untouched
    crop = center_crop(Image.fromarray(_rgb(5, 8)), 2, 3)
    assert np.array_equal(np.asarray(crop), _rgb(5, 8)[2:4, 2:5])  # round(1.5) = 2, round(2.5) = 2
    assert resize_center_crop(img, 256, 224, 224).size == (224, 224)
    with pytest.raises(ValueError, match="cannot center-crop"):
        center_crop(Image.fromarray(_rgb(5, 8)), 6, 3)


def test_reading_images_and_channel_rules(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "gray-as-rgb.png")
    Image.fromarray(_rgb(8, 8)).save(tmp_path / "color.jpg", quality=95)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    g = image_to_channels(open_image(str(tmp_path / "g.png")), 1, "g")
    assert np.array_equal(np.asarray(g), gray)
    assert np.array_equal(np.asarray(image_to_channels(open_image(str(tmp_path / "gray-as-rgb.png")), 1, "x")), gray)
    assert np.asarray(image_to_channels(g, 3, "g")).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="color.jpg: a color image .*1-channel"):
        image_to_channels(open_image(str(tmp_path / "color.jpg")), 1, "color.jpg")
    with pytest.raises(ValueError, match="broken.png: cannot be read as an image"):
        open_image(str(tmp_path / "broken.png"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="16-bit or float"):
        image_to_channels(Image.fromarray(np.zeros((4, 4), np.float32)), 1, "f")
    with pytest.raises(ValueError, match="4-channel inputs"):
        image_to_channels(g, 4, "g")


def _image_tree(root, classes=("cat", "dog"), extra_class=None):
    for k, name in enumerate(classes):
        os.makedirs(root / name / "nested", exist_ok=True)
        Image.fromarray(_rgb(40 + k, 50, seed=k)).save(root / name / "b.png")
        Image.fromarray(_rgb(60, 30, seed=10 + k)).save(root / name / "nested" / "a.JPG")
        (root / name / "notes.txt").write_text("not an image")
    if extra_class:
        os.makedirs(root / extra_class)


def test_image_folder_finds_classes_and_samples_like_torchvision(tmp_path):
    _image_tree(tmp_path / "d" / "train")
    _image_tree(tmp_path / "d" / "val")
    splits = data.load_dataset("imagefolder", str(tmp_path / "d"))
    assert splits.train.classes == ("cat", "dog") and splits.num_classes == 2
    assert [os.path.relpath(p, tmp_path / "d" / "train") for p, _ in splits.train.samples] == \
        ["cat/b.png", "cat/nested/a.JPG", "dog/b.png", "dog/nested/a.JPG"]
    x, y = splits.test[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    assert splits.input_spec.class_names == ("cat", "dog")
    torch.manual_seed(0)
    assert splits.train[0][0].shape == (3, 224, 224)


def test_image_folder_errors_name_the_folder(tmp_path):
    _image_tree(tmp_path / "d" / "train", extra_class="empty")
    _image_tree(tmp_path / "d" / "val")
    with pytest.raises(FileNotFoundError, match="empty.* holds no images"):
        data.load_dataset("imagefolder", str(tmp_path / "d"))
    os.rmdir(tmp_path / "d" / "train" / "empty")
    _image_tree(tmp_path / "d" / "val", classes=("cow",))
    with pytest.raises(ValueError, match=r"only in val/: \['cow'\]"):
        data.load_dataset("imagefolder", str(tmp_path / "d"))


# --- against torchvision, where it is installed ---------------------------------------------
def test_transforms_equal_torchvisions(tmp_path):
    tv = pytest.importorskip("torchvision")
    T = tv.transforms
    spec = data.dataset_input_spec("cifar10")
    cifar_tv = T.Compose([T.RandomCrop(32, padding=data.CIFAR10_CROP_PADDING), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)])
    cifar_ours = data._CifarTrainTransform(spec, data.CIFAR10_CROP_PADDING)
    for seed in range(30):
        img = _rgb(32, 32, seed)
        torch.manual_seed(seed)
        expected = cifar_tv(Image.fromarray(img))
        torch.manual_seed(seed)
        assert torch.equal(cifar_ours(img), expected), seed
        assert torch.equal(data._TestTransform(spec)(img), T.Compose([T.ToTensor(), T.Normalize(
            data.CIFAR10_MEAN, data.CIFAR10_STD)])(Image.fromarray(img)))

    _image_tree(tmp_path / "d" / "train")
    _image_tree(tmp_path / "d" / "val")
    ours = data.load_dataset("imagefolder", str(tmp_path / "d"))
    normalize = T.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)
    theirs_train = tv.datasets.ImageFolder(str(tmp_path / "d" / "train"), T.Compose([
        T.RandomResizedCrop(data.IMAGENET_TRAIN_CROP, data.IMAGENET_CROP_SCALE, data.IMAGENET_CROP_RATIO),
        T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    theirs_test = tv.datasets.ImageFolder(str(tmp_path / "d" / "val"), T.Compose([
        T.Resize(data.IMAGENET_RESIZE), T.CenterCrop(data.IMAGENET_CROP), T.ToTensor(), normalize]))
    assert [(os.path.relpath(p, tmp_path), c) for p, c in ours.train.samples] == \
        [(os.path.relpath(p, tmp_path), c) for p, c in theirs_train.samples]
    assert tuple(theirs_train.classes) == ours.train.classes
    for index in range(len(theirs_train)):
        for seed in range(5):
            torch.manual_seed(seed)
            expected = theirs_train[index]
            torch.manual_seed(seed)
            got = ours.train[index]
            assert got[1] == expected[1] and torch.equal(got[0], expected[0]), (index, seed)
        assert torch.equal(ours.test[index][0], theirs_test[index][0])
    for h, w in [(500, 375), (224, 224), (100, 700), (37, 41)]:
        img = Image.fromarray(_rgb(h, w))
        for seed in range(10):
            torch.manual_seed(seed)
            expected = T.RandomResizedCrop(224)(img)
            torch.manual_seed(seed)
            assert np.array_equal(np.asarray(random_resized_crop(img, 224, (0.08, 1.0), (3 / 4, 4 / 3))),
                                  np.asarray(expected)), (h, w, seed)
        assert np.array_equal(np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(img)),
                              np.asarray(resize_center_crop(img, 256, 224, 224)))
