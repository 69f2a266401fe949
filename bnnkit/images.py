"""Image files and the image transforms of the zoo's recipes, with Pillow and torch only.

Reading (:func:`open_image`, :func:`image_pixels`) serves both the ImageFolder loader and
``bnnkit predict``. The transforms reproduce torchvision's (``RandomCrop(size, padding)``,
``RandomHorizontalFlip``, ``RandomResizedCrop``, ``Resize`` + ``CenterCrop``) operation for
operation on PIL images and uint8 ``HWC`` arrays, drawing their random numbers from torch's
global generator in the same order, so a seeded epoch sees the same crops and flips as
with torchvision (tests/test_images.py checks this against torchvision where it is
installed).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image

#: File name endings read as images (torchvision's ImageFolder list), matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_GRAY_MODES = ("1", "L", "LA")
_COLOR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA", "RGBX", "RGBa", "La")


def pil():
    """The ``PIL.Image`` module (Pillow is a dependency of bnnkit)."""
    try:
        from PIL import Image
    except ImportError as e:  # only in an installation that skipped bnnkit's dependencies
        raise ImportError("reading images needs Pillow, a dependency of bnnkit: pip install pillow") from e
    return Image


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str) -> "Image.Image":
    """The image at ``path``, decoded; unreadable files raise a ValueError naming ``path``."""
    Image = pil()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None
    return img


def image_to_channels(img: "Image.Image", channels: int, name: str) -> "Image.Image":
    """``img`` as a 1-channel (``L``) or 3-channel (``RGB``) 8-bit image.

    Any 8-bit image becomes RGB, as torchvision's ImageFolder loader does (alpha dropped,
    grayscale repeated). For 1 channel, grayscale images are taken as they are and color
    images only when their three channels are equal (a gray image saved as RGB): a color
    photo given to a grayscale model is an error, not a silent conversion.
    """
    if img.mode not in _GRAY_MODES + _COLOR_MODES:
        raise ValueError(f"{name}: image mode {img.mode!r} (16-bit or float pixels) is not supported; "
                         "save it as an 8-bit grayscale or RGB image")
    if channels == 3:
        return img if img.mode == "RGB" else img.convert("RGB")
    if channels != 1:
        raise ValueError(f"{name}: the model takes {channels}-channel inputs, which no image file holds; "
                         "give a .npy array of raw inputs")
    if img.mode in _GRAY_MODES:
        return img if img.mode == "L" else img.convert("L")
    rgb = np.asarray(img.convert("RGB"))
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ValueError(f"{name}: a color image ({img.mode}); this model takes 1-channel (grayscale) images")
    return img.convert("RGB").convert("L")


def to_chw(img: "Image.Image | np.ndarray") -> np.ndarray:
    """uint8 ``(C, H, W)`` of a PIL image or a uint8 ``(H, W[, C])`` array."""
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


# --- deterministic geometry ------------------------------------------------------------
def resize_shorter_side(img: "Image.Image", size: int) -> "Image.Image":
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer
    ``int(size * long / short)``; bilinear (Pillow's, antialiased when shrinking)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), pil().Resampling.BILINEAR)


def center_crop(img: "Image.Image", height: int, width: int) -> "Image.Image":
    """torchvision ``CenterCrop((height, width))`` of an image at least that large."""
    w, h = img.size
    if h < height or w < width:
        raise ValueError(f"cannot center-crop {height}x{width} from a {h}x{w} image")
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def resize_center_crop(img: "Image.Image", resize: int, height: int, width: int) -> "Image.Image":
    """torchvision ``Compose([Resize(resize), CenterCrop((height, width))])``."""
    return center_crop(resize_shorter_side(img, resize), height, width)


# --- random augmentations (torch's global generator, torchvision's draw order) ----------
def random_crop_with_padding(img: np.ndarray, size: int, padding: int) -> np.ndarray:
    """torchvision ``RandomCrop(size, padding=padding)`` (zero fill) of a uint8 ``(H, W, C)`` array."""
    padded = np.pad(img, ((padding, padding), (padding, padding), (0, 0)))
    h, w = padded.shape[:2]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from a padded {h}x{w} image")
    if (h, w) == (size, size):
        return padded
    i = int(torch.randint(0, h - size + 1, size=(1,)).item())
    j = int(torch.randint(0, w - size + 1, size=(1,)).item())
    return padded[i:i + size, j:j + size]


def random_horizontal_flip(img: "np.ndarray | Image.Image", p: float = 0.5):
    """torchvision ``RandomHorizontalFlip(p)`` of a ``(H, W, C)`` array or a PIL image."""
    if torch.rand(1) < p:
        if isinstance(img, np.ndarray):
            return img[:, ::-1]
        return img.transpose(pil().Transpose.FLIP_LEFT_RIGHT)
    return img


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: ``(top, left, h, w)`` of a crop covering
    a random fraction in ``scale`` of the area with a log-uniform aspect ratio in ``ratio``
    (10 tries, then a center crop within ``ratio``)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect_ratio = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,)).item())
            j = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: "Image.Image", size: int, scale: tuple[float, float],
                        ratio: tuple[float, float]) -> "Image.Image":
    """torchvision ``RandomResizedCrop(size, scale, ratio)`` (bilinear) of a PIL image."""
    width, height = img.size
    i, j, h, w = random_resized_crop_box(height, width, scale, ratio)
    return img.crop((j, i, j + w, i + h)).resize((size, size), pil().Resampling.BILINEAR)
