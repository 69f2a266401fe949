"""Image files and the image transforms of the zoo's recipes, with Pillow and torch only.

Reading (:func:`open_image`, :func:`image_header`) serves both the ImageFolder loader and
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
#: The Pillow formats of those files, the only ones bnnkit opens (``Image.open(formats=...)``),
#: whatever a file's name or first bytes say: never PostScript / EPS, which Pillow hands to
#: Ghostscript, nor any other of Pillow's formats.
PIL_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP")
#: Largest image file read.
MAX_IMAGE_FILE_BYTES = 256 << 20
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


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """``(width, height)`` after torchvision's ``Resize(size)``: the shorter side becomes
    ``size``, the longer ``int(size * long / short)``."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def check_image_pixels(width: int, height: int, name: str, resize: int | None = None) -> None:
    """Refuse, from its header alone, an image whose pixels or whose resize to ``resize``
    (shorter side) exceed :attr:`bnnkit.limits.Limits.image_pixels`: a 4 KB PNG can declare
    a 1 x 4,000,000 image, which a resize of its shorter side to 8 makes 32 million pixels."""
    from bnnkit.limits import limits

    bound = limits().image_pixels
    how = "raise the bound for images you trust with BNNKIT_LIMITS=image_pixels=N"
    if width * height > bound:
        raise ValueError(f"{name}: a {height}x{width} image ({width * height:,} pixels); bnnkit decodes images of at "
                         f"most {bound:,} pixels ({how})")
    if resize is not None:
        w, h = resized_size(width, height, resize)
        if w * h > bound:
            raise ValueError(f"{name}: resizing this {height}x{width} image to a shorter side of {resize} makes "
                             f"{h}x{w} = {w * h:,} pixels; bnnkit resizes to at most {bound:,} ({how})")


def _open(path: str, resize: int | None, decode: bool):
    from bnnkit.reading import open_regular

    Image = pil()
    fd = open_regular(path, "image")  # ArtifactError (a ValueError) for a FIFO, a device, a directory
    try:
        size = os.fstat(fd).st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise ValueError(f"{path}: a {size:,}-byte file; bnnkit reads image files of at most "
                             f"{MAX_IMAGE_FILE_BYTES:,} bytes")
        with os.fdopen(os.dup(fd), "rb") as f:
            try:
                img = Image.open(f, formats=PIL_FORMATS)
                check_image_pixels(*img.size, path, resize)
                if not decode:
                    return img.size, img.mode
                if img.mode not in _GRAY_MODES + _COLOR_MODES:
                    raise ValueError(f"{path}: image mode {img.mode!r} (16-bit or float pixels) is not supported; "
                                     "save it as an 8-bit grayscale or RGB image")
                img.load()
            except (OSError, SyntaxError, Image.DecompressionBombError) as e:
                raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}; bnnkit reads "
                                 "JPEG, PNG, PPM/PGM, BMP, TIFF and WebP files)") from None
    finally:
        os.close(fd)
    return img


def image_header(path: str, resize: int | None = None) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of the image file ``path`` from its header (nothing is
    decoded); checked as :func:`open_image` checks it."""
    return _open(path, resize, decode=False)


def open_image(path: str, resize: int | None = None) -> "Image.Image":
    """The image at ``path``, decoded. Only a regular file is opened (a FIFO or device is
    refused without blocking), only in one of :data:`PIL_FORMATS`, and only when its pixel
    count, and that after a resize of its shorter side to ``resize``, are within
    :attr:`bnnkit.limits.Limits.image_pixels` (checked from the header, before decoding).
    Anything else raises a one-line ``ValueError`` naming ``path``."""
    return _open(path, resize, decode=True)


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
    new_w, new_h = resized_size(w, h, size)
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
