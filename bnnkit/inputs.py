"""What a model takes and how raw inputs become its inputs: :class:`InputSpec`.

``bnnkit train`` records the spec of its dataset in the run's ``config.json``
(``"input_spec"``); ``bnnkit export`` carries it into the packed manifest, the trained copy
and the ONNX file (``metadata_props["bnnkit.input_spec"]``); ``bnnkit predict`` applies it.
The training loaders normalize with :meth:`InputSpec.normalize` too, so a model sees the
same numbers in training and in prediction.

Raw inputs are what the dataset stores: digits pixels 0..16, CIFAR-10 / ImageNet pixels
0..255. A batch of them ``(N, *shape)`` becomes the model's float32 input by::

    x = float32(raw * scale + offset)          computed in float64, rounded once
    x[:, c] = (x[:, c] - mean[c]) / std[c]     in float32, when mean / std are given

(float64 then one rounding gives exactly the float32 results of the loaders' ``x / 8 - 1``
and ``ToTensor``'s ``x / 255``). An 8-bit image pixel ``p`` is the raw value
``lo + p * (hi - lo) / 255`` with ``(lo, hi) = value_range``; an image is first converted to
the model's channels (1: grayscale, 3: RGB), its shorter side resized to ``resize``
(bilinear) and its center cropped to the model's height and width.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import numpy as np
import torch

SPEC_VERSION = 1
DTYPES = ("float32",)
LAYOUTS = {"NCHW": 3, "NC": 1}  # layout -> dims of one input (without the batch dim)

_KEYS = ("version", "shape", "dtype", "layout", "preprocessing", "class_names")
_OPTIONAL_KEYS = ("statistics",)
_PREPROCESSING_KEYS = ("value_range", "scale", "offset", "mean", "std", "resize")
_STATISTICS_KEYS = ("image_mean", "image_mean_std")
#: How many standard deviations from the training images' mean brightness an image may be
#: before ``bnnkit predict`` warns that it looks unlike them (e.g. dark ink on a light page).
FAR_FROM_TRAINING = 5.0


def _show(value: Any) -> str:
    from bnnkit.schema import show

    return show(value)


def _is_number(v: Any) -> bool:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float's range
        return False


def _numbers(value: Any, field: str, length: int | None = None, each: str = "") -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise ValueError(f"{field}: expected a list of finite numbers, got {_show(value)}")
    if length is not None and len(value) != length:
        raise ValueError(f"{field}: expected {length} number{'s' * (length != 1)}{each}, got "
                         f"{len(value)} ({_show(list(value))})")
    return tuple(float(v) for v in value)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input of a model and the preprocessing it was trained with.

    Attributes:
        shape: one input's shape without the batch dim, e.g. ``(3, 32, 32)``.
        dtype: the model input's dtype (``"float32"``).
        layout: ``"NCHW"`` (images: channels, height, width) or ``"NC"`` (feature vectors).
        value_range: ``(lo, hi)`` of raw values (digits ``(0, 16)``, 8-bit images ``(0, 255)``);
            an 8-bit image pixel 0..255 maps linearly onto it. ``None``: no stated range (then
            image files are not accepted, raw arrays are not range-checked).
        scale, offset: ``raw * scale + offset`` (digits: ``1/8, -1``; images: ``1/255, 0``).
        mean, std: per-channel normalization after scale/offset, or ``None``.
        resize: images: the shorter side is resized to this before the center crop to the
            model's height x width; ``None``: images must have the model's size.
        class_names: one name per output class, or ``None`` (classes are then named by index).
        statistics: ``(image_mean, image_mean_std)`` per channel, over the training images, of
            each image's mean raw value, or ``None``: what :meth:`far_from_training` compares
            an input with (digits: bright ink on a dark background, a mean of about 4.9 of 16).
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    value_range: tuple[float, float] | None = None
    scale: float = 1.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    class_names: tuple[str, ...] | None = None
    statistics: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        shape = self.shape
        if not isinstance(shape, (list, tuple)) or not shape or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 2**20 for d in shape):
            raise ValueError(f"shape: expected one input's shape without the batch dim as positive ints, "
                             f"e.g. [3, 32, 32]; got {_show(shape)}")
        object.__setattr__(self, "shape", tuple(shape))
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ValueError(f"dtype: {_show(self.dtype)} is not supported; accepted: {', '.join(DTYPES)}")
        if not isinstance(self.layout, str) or self.layout not in LAYOUTS:
            raise ValueError(f"layout: {_show(self.layout)} is not known; accepted: {', '.join(LAYOUTS)}")
        if LAYOUTS[self.layout] != len(self.shape):
            raise ValueError(f"layout: {self.layout} describes {LAYOUTS[self.layout]}-dim inputs, the shape "
                             f"{list(self.shape)} has {len(self.shape)} dims")
        if self.value_range is not None:
            lo, hi = _numbers(self.value_range, "preprocessing.value_range", 2)
            if not lo < hi:
                raise ValueError(f"preprocessing.value_range: expected [low, high] with low < high, got {[lo, hi]}")
            object.__setattr__(self, "value_range", (lo, hi))
        if not _is_number(self.scale) or self.scale == 0:
            raise ValueError(f"preprocessing.scale: expected a finite non-zero number, got {_show(self.scale)}")
        if not _is_number(self.offset):
            raise ValueError(f"preprocessing.offset: expected a finite number, got {_show(self.offset)}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "offset", float(self.offset))
        if (self.mean is None) != (self.std is None):
            raise ValueError("preprocessing.mean / preprocessing.std: give both or neither")
        if self.mean is not None:
            channels = self.shape[0]
            object.__setattr__(self, "mean", _numbers(self.mean, "preprocessing.mean", channels, " (one per channel)"))
            std = _numbers(self.std, "preprocessing.std", channels, " (one per channel)")
            if not all(s > 0 for s in std):
                raise ValueError(f"preprocessing.std: expected positive numbers, got {list(std)}")
            object.__setattr__(self, "std", std)
        if self.resize is not None:
            if self.layout != "NCHW":
                raise ValueError(f"preprocessing.resize: only images (layout NCHW) are resized; layout is "
                                 f"{self.layout}")
            if (not isinstance(self.resize, int) or isinstance(self.resize, bool) or self.resize < max(self.shape[1:])
                    or self.resize > 2**20):
                raise ValueError(f"preprocessing.resize: expected an int >= the crop size {max(self.shape[1:])} "
                                 f"(the shorter side after resizing), got {_show(self.resize)}")
        if self.class_names is not None:
            names = self.class_names
            if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"class_names: expected a non-empty list of non-empty strings, got {_show(names)}")
            if len(set(names)) != len(names):
                dup = sorted(n for n, c in collections.Counter(names).items() if c > 1)
                raise ValueError(f"class_names: names must be unique; repeated: {_show(dup[:5])}")
            object.__setattr__(self, "class_names", tuple(names))
        if self.statistics is not None:
            if not isinstance(self.statistics, (list, tuple)) or len(self.statistics) != 2:
                raise ValueError(f"statistics: expected (image_mean, image_mean_std), got {_show(self.statistics)}")
            channels = self.shape[0] if self.layout == "NCHW" else 1
            mean = _numbers(self.statistics[0], "statistics.image_mean", channels, " (one per channel)")
            std = _numbers(self.statistics[1], "statistics.image_mean_std", channels, " (one per channel)")
            if not all(v >= 0 for v in std):
                raise ValueError(f"statistics.image_mean_std: expected numbers >= 0, got {list(std)}")
            object.__setattr__(self, "statistics", (mean, std))

    # --- what the spec says -------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(height, width)`` for images, else ``None``."""
        return (self.shape[1], self.shape[2]) if self.layout == "NCHW" else None

    @property
    def takes_images(self) -> bool:
        """Whether image files can be fed: NCHW with 1 or 3 channels and a stated value range."""
        return self.layout == "NCHW" and self.channels in (1, 3) and self.value_range is not None

    def class_name(self, index: int) -> str:
        return self.class_names[index] if self.class_names is not None else str(index)

    def with_statistics(self, raw_images: np.ndarray) -> InputSpec:
        """This spec with the :attr:`statistics` of the training images ``raw_images``
        (``(N, *shape)`` raw values, or ``(N, H, W, C)`` uint8 pixels of an ``NCHW`` spec, as
        CIFAR-10 stores them), rounded to 4 significant digits (the same on every machine)."""
        arr = np.asarray(raw_images)
        if self.layout == "NCHW" and arr.ndim == 4 and arr.shape[1:] != self.shape and arr.shape[-1] == self.channels:
            per_image = self.pixels_to_raw(arr.mean(axis=(1, 2)))  # (N, C); the pixel map is affine
        elif self.layout == "NCHW":
            per_image = arr.astype(np.float64).mean(axis=(2, 3))
        else:
            per_image = arr.astype(np.float64).mean(axis=1, keepdims=True)
        mean = tuple(float(f"{v:.4g}") for v in per_image.mean(axis=0))
        std = tuple(float(f"{v:.4g}") for v in per_image.std(axis=0))
        return dataclasses.replace(self, statistics=(mean, std))

    def far_from_training(self, raw: np.ndarray) -> float | None:
        """How far one input's brightness (``raw``: ``(*shape)`` raw values) is from the
        training images': the largest over channels of ``|mean - image_mean| / image_mean_std``
        (``None`` without :attr:`statistics`). Above :data:`FAR_FROM_TRAINING` the input does
        not look like what the model was trained on."""
        if self.statistics is None:
            return None
        means = raw.reshape(raw.shape[0], -1).mean(axis=1) if self.layout == "NCHW" else np.array([raw.mean()])
        span = (self.value_range[1] - self.value_range[0]) if self.value_range else 1.0
        return max(abs(m - mu) / max(sd, 1e-3 * span) for m, mu, sd in zip(means, *self.statistics))

    # --- applying it ----------------------------------------------------------------------
    def normalize(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw inputs ``(N, *shape)`` (any real dtype) -> the model's float32 inputs ``(N, *shape)``."""
        arr = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        if arr.shape[1:] != self.shape:
            raise ValueError(f"normalize takes raw inputs of shape (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(arr.shape)}")
        x = torch.from_numpy((arr.astype(np.float64) * self.scale + self.offset).astype(np.float32))
        if self.mean is not None:
            view = (-1,) + (1,) * (len(self.shape) - 1)
            x = (x - torch.tensor(self.mean, dtype=torch.float32).view(view)) / \
                torch.tensor(self.std, dtype=torch.float32).view(view)
        return x

    def pixels_to_raw(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit image pixels (uint8, any shape) -> raw values (float64) on ``value_range``."""
        if self.value_range is None:
            raise ValueError("the input spec states no value_range, so image pixels cannot be mapped to raw inputs")
        lo, hi = self.value_range
        return lo + pixels.astype(np.float64) * ((hi - lo) / 255.0)

    def check_range(self, raw: np.ndarray, name: str) -> None:
        """Refuse raw values outside ``value_range`` (e.g. already normalized inputs, or 0..255
        pixels given to a 0..16 model): a wrongly scaled input would give confident nonsense."""
        if self.value_range is None or raw.size == 0:
            return
        lo, hi = self.value_range
        low, high = float(raw.min()), float(raw.max())
        slack = 1e-6 * (hi - lo)
        if low < lo - slack or high > hi + slack:
            raise ValueError(f"{name}: values span [{low:g}, {high:g}]; this model's raw inputs are in "
                             f"[{lo:g}, {hi:g}] (input spec value_range); give raw values as the dataset stores "
                             "them, not preprocessed ones")

    # --- text and JSON ----------------------------------------------------------------
    def to_text(self) -> str:
        """Two or three lines for ``bnnkit summary``."""
        dims = ", ".join(map(str, self.shape))
        lines = [f"input: {self.dtype} (N, {dims}), layout {self.layout}"]
        steps = []
        if self.value_range is not None:
            steps.append(f"raw values in [{self.value_range[0]:g}, {self.value_range[1]:g}]")
        if (self.scale, self.offset) != (1.0, 0.0):
            steps.append(self._affine_text())
        if self.mean is not None:
            steps.append(f"per channel (x - mean) / std, mean {_short(self.mean)}, std {_short(self.std)}")
        if self.resize is not None:
            h, w = self.image_size
            steps.append(f"images: shorter side resized to {self.resize}, center crop {h}x{w}")
        lines.append("preprocessing: " + ("; ".join(steps) or "none (raw inputs are the model's inputs)"))
        if self.class_names is not None:
            shown = ", ".join(self.class_names[:12]) + (", ..." if len(self.class_names) > 12 else "")
            lines.append(f"classes ({len(self.class_names)}): {shown}")
        return "\n".join(lines)

    def _affine_text(self) -> str:
        inverse = 1 / self.scale
        text = f"x / {round(inverse)}" if abs(inverse - round(inverse)) < 1e-9 else f"x * {self.scale:.6g}"
        if self.offset:
            text += f" {'+' if self.offset > 0 else '-'} {abs(self.offset):g}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SPEC_VERSION,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "preprocessing": {
                "value_range": None if self.value_range is None else list(self.value_range),
                "scale": self.scale, "offset": self.offset,
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std),
                "resize": self.resize,
            },
            "class_names": None if self.class_names is None else list(self.class_names),
            **({} if self.statistics is None else {"statistics": {"image_mean": list(self.statistics[0]),
                                                                  "image_mean_std": list(self.statistics[1])}}),
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "input_spec") -> InputSpec:
        """The spec in ``obj`` (as written by :meth:`to_json`). A malformed one raises
        :class:`~bnnkit.artifacts.ArtifactError` naming ``where`` and the field."""
        from bnnkit.artifacts import ArtifactError

        def bad(field: str, message: str) -> ArtifactError:
            return ArtifactError(f"{where}{'.' + field if field else ''}: {message}")

        if not isinstance(obj, dict):
            raise bad("", f"expected an object with {', '.join(_KEYS)}; got {type(obj).__name__}")
        if obj.get("version") != SPEC_VERSION:
            raise bad("version", f"{_show(obj.get('version'))} is not a version this bnnkit reads ({SPEC_VERSION})")
        unknown = sorted(str(k)[:40] for k in set(obj) - set(_KEYS) - set(_OPTIONAL_KEYS))[:5]
        missing = sorted(set(_KEYS) - set(obj))
        if unknown or missing:
            raise bad("", f"unknown field(s) {unknown}, missing field(s) {missing}; expected {', '.join(_KEYS)}")
        pre = obj["preprocessing"]
        if not isinstance(pre, dict) or set(pre) != set(_PREPROCESSING_KEYS):
            got = sorted(str(k)[:40] for k in pre)[:8] if isinstance(pre, dict) else type(pre).__name__
            raise bad("preprocessing", f"expected the fields {', '.join(_PREPROCESSING_KEYS)}; got {got}")
        stats = obj.get("statistics")
        if stats is not None and (not isinstance(stats, dict) or set(stats) != set(_STATISTICS_KEYS)):
            raise bad("statistics", f"expected null or the fields {', '.join(_STATISTICS_KEYS)}")
        names = obj["class_names"]
        if isinstance(names, list) and len(names) > 100_000:
            raise bad("class_names", f"expected at most 100,000 names, got {len(names):,}")
        try:
            for field, value in (("shape", obj["shape"]), ("preprocessing.mean", pre["mean"]),
                                 ("preprocessing.std", pre["std"]), ("class_names", names)):
                if isinstance(value, list) and len(value) > 100_000:
                    raise ValueError(f"{field}: expected a short list, got {len(value):,} items")
            return cls(shape=obj["shape"], dtype=obj["dtype"], layout=obj["layout"],
                       value_range=pre["value_range"], scale=pre["scale"], offset=pre["offset"],
                       mean=pre["mean"], std=pre["std"], resize=pre["resize"], class_names=names,
                       statistics=None if stats is None else (stats["image_mean"], stats["image_mean_std"]))
        except (ValueError, TypeError, OverflowError) as e:
            raise ArtifactError(f"{where}.{e}") from None


def _short(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def spec_from_optional_json(obj: Any, where: str) -> InputSpec | None:
    """``None`` for an absent (``None``) spec, else :meth:`InputSpec.from_json`: artifacts
    written before input specs existed still load."""
    return None if obj is None else InputSpec.from_json(obj, where)
