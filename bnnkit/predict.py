"""Predictions of an exported model on image files and raw arrays, preprocessed as in training.

    from bnnkit.predict import Predictor
    predictor = Predictor.from_export("exports/digits", runtime="packed")   # or "onnxruntime", "trained"
    for p in predictor.predict(["seven.png", "more_digits/", "batch.npy"], top_k=3):
        print(p.input, p.names, p.probabilities)

    Predictor.from_model(bnnkit.export.load("exports/digits")).predict(...)   # a PackedModel in memory

Inputs: image files (PNG, JPEG, ... read with Pillow), folders of them (walked in sorted
order), ``.npy`` arrays (``numpy.load(allow_pickle=False)``), and in Python also numpy arrays,
torch tensors and PIL images. Arrays hold raw inputs as the dataset stores them (digits:
0..16; images: 0..255 pixels), one ``(*shape)`` or a batch ``(N, *shape)``. Everything is
preprocessed with the export's :class:`~bnnkit.inputs.InputSpec` and run through one
runtime of :mod:`bnnkit.export.validation.runtimes`, in batches. Every input is checked before
any is run; a bad one raises a one-line ``ValueError`` naming it and what is expected. Files
are opened only when they are regular files (a FIFO named ``b.png`` is refused by name, never
waited on), images only in the formats listed above and within the pixel bound of
:mod:`bnnkit.limits`; outputs that are not finite are an error, never ``nan`` probabilities.

``invert=True`` (``bnnkit predict --invert``) turns image pixels ``p`` into ``255 - p``
before preprocessing, for dark-on-light drawings given to a model trained on bright ink on a
dark background (the digits). When the training images' brightness is recorded (the input
spec's ``statistics``) and an image is far from it, :meth:`Predictor.predict` warns once
(:class:`InputStatisticsWarning`).
``bnnkit predict`` is this module on the command line.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from bnnkit.choices import PREDICT_RUNTIMES
from bnnkit.images import IMAGE_EXTENSIONS, is_image_file
from bnnkit.inputs import FAR_FROM_TRAINING, InputSpec, spec_from_optional_json

#: ``bnnkit predict --runtime`` names -> runtimes of :data:`bnnkit.export.validation.runtimes.RUNTIMES`
#: (``onnxruntime``: CUDA when onnxruntime has it, else CPU; ``onnxruntime-cpu`` / ``-cuda``: that provider).
RUNTIME_CHOICES = PREDICT_RUNTIMES


class InputStatisticsWarning(UserWarning):
    """Some inputs look unlike the model's training images (e.g. dark ink on a light page)."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top classes of one input, most probable first. ``probabilities``: softmax of the
    model's outputs."""

    input: str
    classes: tuple[int, ...]
    names: tuple[str, ...]
    probabilities: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "top": [{"class": n, "index": c, "probability": p}
                                             for c, n, p in zip(self.classes, self.names, self.probabilities)]}


@dataclasses.dataclass(frozen=True)
class _Item:
    """One input: a row of a raw array (``array`` holds ``(*shape)``) or an image (``image``:
    a path or a PIL image)."""

    name: str
    array: np.ndarray | None = None
    image: Any = None


class Predictor:
    """A runtime (anything with ``run(float32 batch) -> outputs (N, classes)``) and the input
    spec that prepares its inputs."""

    def __init__(self, runtime: Any, spec: InputSpec, *, source: str = "model") -> None:
        if not isinstance(spec, InputSpec):
            raise TypeError(f"spec must be a bnnkit.inputs.InputSpec, got {type(spec).__name__}")
        self.runtime = runtime
        self.spec = spec
        self.source = source

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike, runtime: str = "packed") -> Predictor:
        """The ``runtime`` (one of :data:`RUNTIME_CHOICES`: ``packed``, ``onnxruntime``,
        ``onnxruntime-cpu``, ``onnxruntime-cuda``, ``trained``) of an export directory, with the
        input spec that runtime's own file records."""
        export_dir = os.fspath(export_dir)
        _check_export_dir(export_dir)
        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
        loaded = _load_runtime(export_dir, runtime)
        spec = _recorded_spec(export_dir, loaded)
        if spec is None:
            raise ValueError(f"{export_dir}: the {loaded.name} model records no input spec (how raw inputs are "
                             "preprocessed; exports made before bnnkit recorded one): export the run again with "
                             "bnnkit export RUN_DIR --out DIR --overwrite, or for your own model pass input_spec= to "
                             "bnnkit.export.pack / to_onnx")
        return cls(loaded, spec, source=export_dir)

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: InputSpec | None = None) -> Predictor:
        """Any torch model (a :class:`~bnnkit.export.PackedModel` from ``bnnkit.export.load``, a
        trained model) with ``spec`` (default: the model's ``input_spec`` attribute)."""
        from bnnkit.export.validation.runtimes import TorchModuleRuntime

        spec = spec if spec is not None else getattr(model, "input_spec", None)
        if spec is None:
            raise ValueError(f"{type(model).__name__} has no input spec; pass spec=InputSpec(...)")
        return cls(TorchModuleRuntime(type(model).__name__, model, "PyTorch, eval mode"), spec)

    # --- inputs -------------------------------------------------------------------------
    def collect(self, inputs: Any) -> list[_Item]:
        """Every input of ``inputs`` (a path, array, tensor, PIL image, or a list of them),
        checked: files readable, shapes, channels, dtypes and value ranges as the spec says."""
        sources = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not sources:
            raise ValueError("no inputs given")
        items: list[_Item] = []
        for k, source in enumerate(sources):
            items += self._collect_one(source, f"input{k}" if len(sources) > 1 else "input")
        return items

    def _collect_one(self, source: Any, label: str) -> list[_Item]:
        Image = _pil_image_class()
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if os.path.isdir(path):
                files = _images_in_folder(path)
                if not files:
                    raise ValueError(f"{path}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
                return [self._image_item(f) for f in files]
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path}: no such file or folder")
            if path.lower().endswith(".npy"):
                return self._array_items(_load_npy(path), path)
            if is_image_file(path):
                return [self._image_item(path)]
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_EXTENSIONS)}) nor a .npy array of raw inputs")
        if isinstance(source, torch.Tensor):
            return self._array_items(source.detach().cpu().numpy(), label)
        if isinstance(source, np.ndarray):
            return self._array_items(source, label)
        if Image is not None and isinstance(source, Image.Image):
            self._require_images(label)
            return [_Item(label, image=source)]
        raise TypeError(f"{label}: unsupported input type {type(source).__name__}; give paths (images, folders, "
                        ".npy), numpy arrays, torch tensors or PIL images")

    def _require_images(self, name: str) -> None:
        spec = self.spec
        if not spec.takes_images:
            image_like = spec.layout == "NCHW" and spec.channels in (1, 3)
            why = ("its input spec states no value range for pixels" if image_like
                   else "its inputs are not 1- or 3-channel images")
            raise ValueError(f"{name}: this model does not take image files ({why}); give a .npy array of raw inputs "
                             f"of shape (N, {', '.join(map(str, spec.shape))})")

    def _image_item(self, path: str) -> _Item:
        from bnnkit.images import image_header

        self._require_images(path)
        size, _ = image_header(path, self.spec.resize)  # the header only: format, mode and size, within bounds
        if self.spec.resize is None and size != self.spec.image_size[::-1]:
            h, w = self.spec.image_size
            raise ValueError(f"{path}: a {size[1]}x{size[0]} image; this model takes {h}x{w} images (its input "
                             "spec does not resize)")
        return _Item(path, image=path)

    def _array_items(self, arr: np.ndarray, name: str) -> list[_Item]:
        spec = self.spec
        if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError(f"{name}: arrays of {arr.dtype} are not raw inputs; give integer or float values")
        batch = _as_batch(arr, spec, name)
        if not np.isfinite(batch).all():
            raise ValueError(f"{name}: holds NaN or infinite values")
        spec.check_range(batch, name)
        return [_Item(f"{name}[{i}]", array=batch[i]) for i in range(batch.shape[0])]

    def _raw(self, item: _Item, invert: bool = False) -> np.ndarray:
        """One input as raw values, ``(*shape)`` float64 (``invert``: image pixels ``p`` become
        ``255 - p`` first)."""
        if item.array is not None:
            return np.asarray(item.array, dtype=np.float64)
        from bnnkit.images import check_image_pixels, image_to_channels, open_image, resize_center_crop, to_chw

        if isinstance(item.image, str):
            img = open_image(item.image, self.spec.resize)
        else:
            img = item.image
            check_image_pixels(*img.size, item.name, self.spec.resize)
        img = image_to_channels(img, self.spec.channels, item.name)
        h, w = self.spec.image_size
        if self.spec.resize is not None:
            img = resize_center_crop(img, self.spec.resize, h, w)
        elif img.size != (w, h):
            raise ValueError(f"{item.name}: a {img.size[1]}x{img.size[0]} image; this model takes {h}x{w} images")
        pixels = to_chw(img)
        return self.spec.pixels_to_raw(255 - pixels if invert else pixels)

    # --- running --------------------------------------------------------------------------
    def predict(self, inputs: Any, *, top_k: int = 5, batch_size: int = 64, progress: bool = False,
                invert: bool = False) -> list[Prediction]:
        """Top-``top_k`` classes (at most the number of classes) of every input, in order.
        ``invert``: image pixels ``p`` become ``255 - p`` (dark-on-light images for a model
        trained on bright ink on a dark background); arrays are taken as they are. Warns once
        (:class:`InputStatisticsWarning`) when images are far from the training images'
        brightness."""
        items = self.collect(inputs)
        names, probs = self._probabilities(items, batch_size, progress, bool(invert))
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top-k must be an int >= 1, got {top_k!r}")
        k = min(top_k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [Prediction(name, tuple(idx.tolist()), tuple(self.spec.class_name(i) for i in idx.tolist()),
                           tuple(v.tolist())) for name, idx, v in zip(names, indices, values)]

    def _probabilities(self, items: Sequence[_Item], batch_size: int, progress: bool,
                       invert: bool = False) -> tuple[list[str], torch.Tensor]:
        from tqdm.auto import tqdm

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch size must be an int >= 1, got {batch_size!r}")
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        out, unlike = [], []
        for batch in tqdm(batches, desc="predict", unit="batch", disable=not progress or len(batches) < 2):
            raw = np.stack([self._raw(item, invert) for item in batch])
            unlike += [(item.name, r) for item, r in zip(batch, raw)
                       if item.image is not None and (self.spec.far_from_training(r) or 0) > FAR_FROM_TRAINING]
            logits = self.runtime.run(self.spec.normalize(raw))
            self._check_outputs(logits, batch)
            out.append(torch.softmax(logits.double(), dim=1))
        if unlike:
            warnings.warn(self._unlike_message(unlike, sum(item.image is not None for item in items), invert),
                          InputStatisticsWarning, stacklevel=3)
        return [item.name for item in items], torch.cat(out)

    def _unlike_message(self, unlike: list[tuple[str, np.ndarray]], images: int, invert: bool) -> str:
        """One line: how many images look unlike the training images, and what to try."""
        means, stds = self.spec.statistics
        mean, std = sum(means) / len(means), sum(stds) / len(stds)
        lo, hi = self.spec.value_range
        first, raw = unlike[0]
        brightness = float(raw.mean())
        count = f"{len(unlike)} of {images} images" if images > 1 else "the image"
        text = (f"{count} (first: {first}) look unlike the training images: mean raw value {brightness:.3g}, theirs "
                f"{mean:.3g} +- {std:.3g} on [{lo:g}, {hi:g}]")
        if abs(lo + hi - brightness - mean) < abs(brightness - mean):  # inverting would bring it closer
            polarity = "bright ink on a dark background" if mean < (lo + hi) / 2 else "dark ink on a light background"
            advice = "drop --invert" if invert else "pass --invert for the other polarity"
            text += f"; the model takes {polarity} ({advice})"
        return text + "; predictions may be wrong"

    def _check_outputs(self, logits: torch.Tensor, batch: Sequence[_Item]) -> None:
        n = len(batch)
        if logits.dim() != 2 or logits.shape[0] != n:
            raise ValueError(f"the {self.runtime.name} model returned outputs of shape {tuple(logits.shape)}; "
                             f"predict needs class scores (N, classes) for N = {n} inputs")
        finite = torch.isfinite(logits).all(dim=1)
        if not bool(finite.all()):
            bad = [item.name for item, ok in zip(batch, finite.tolist()) if not ok]
            raise ValueError(f"the {self.runtime.name} model returned NaN or infinite scores for {len(bad)} input(s) "
                             f"(first: {bad[0]}); no probabilities can be given (a corrupt or crafted model)")
        names = self.spec.class_names
        if names is not None and len(names) != logits.shape[1]:
            raise ValueError(f"the input spec of {self.source} names {len(names)} classes, the model outputs "
                             f"{logits.shape[1]} scores")


def predict(export_dir: str | os.PathLike, inputs: Any, *, runtime: str = "packed", top_k: int = 5,
            batch_size: int = 64, progress: bool = False, invert: bool = False) -> list[Prediction]:
    """:meth:`Predictor.predict` of :meth:`Predictor.from_export` in one call."""
    return Predictor.from_export(export_dir, runtime).predict(inputs, top_k=top_k, batch_size=batch_size,
                                                              progress=progress, invert=invert)


def format_table(predictions: Iterable[Prediction]) -> str:
    """One row per input: the input, then ``class  probability`` for each of the top classes."""
    predictions = list(predictions)
    k = max((len(p.classes) for p in predictions), default=0)
    header = ["input"] + [_ordinal(i + 1) for i in range(k)]
    rows = [[p.input] + [f"{n} {v:.3f}" for n, v in zip(p.names, p.probabilities)] for p in predictions]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def _ordinal(n: int) -> str:
    return f"{n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


# --- helpers ----------------------------------------------------------------------------------
def _pil_image_class():
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image


def _check_export_dir(export_dir: str) -> None:
    from bnnkit.export.layout import PACKED_MANIFEST, TRAINED_DIR

    if not os.path.isdir(export_dir):
        raise FileNotFoundError(f"export directory {export_dir!r} does not exist")
    if not os.path.isdir(os.path.join(export_dir, TRAINED_DIR)) and not os.path.lexists(
            os.path.join(export_dir, PACKED_MANIFEST)):
        if os.path.isfile(os.path.join(export_dir, "config.json")):
            raise ValueError(f"{export_dir!r} is a training run, not an export directory; make one with: "
                             f"bnnkit export {export_dir} --out EXPORT_DIR --onnx")
        raise FileNotFoundError(f"{export_dir!r} is not an export directory (no {PACKED_MANIFEST}, no {TRAINED_DIR}/); "
                                "make one with bnnkit export RUN_DIR --out EXPORT_DIR --onnx")


def _trained_runtime(export_dir: str):
    from bnnkit.export.validation.runtimes import TorchModuleRuntime, load_trained

    model, config = load_trained(export_dir)
    runtime = TorchModuleRuntime("trained", model, "PyTorch eager, eval mode")
    runtime.config = config  # the checked run config, read from the same bytes as the model
    return runtime


def _load_runtime(export_dir: str, runtime: str):
    from bnnkit.export.validation.runtimes import RUNTIMES, RuntimeUnavailable

    loaders = {**RUNTIMES, "trained": _trained_runtime}
    names = ["onnxruntime-cuda", "onnxruntime-cpu"] if runtime == "onnxruntime" else [runtime]
    reasons = []
    for name in names:
        try:
            return loaders[name](export_dir)
        except RuntimeUnavailable as e:
            reasons.append(str(e))
    hint = " (export with --onnx)" if runtime.startswith("onnxruntime") else ""
    raise FileNotFoundError(f"{export_dir}: runtime {runtime!r} is not available: {reasons[-1]}{hint}")


def _recorded_spec(export_dir: str, runtime) -> InputSpec | None:
    """The input spec in the file the runtime loaded: the manifest (packed), trained/config.json
    (trained, checked with the model) or the ONNX file's metadata (onnxruntime)."""
    from bnnkit.artifacts import parse_json
    from bnnkit.export.layout import ONNX_FILE

    if hasattr(runtime, "session"):
        from bnnkit.export.onnx.export import INPUT_SPEC_KEY

        text = runtime.metadata.get(INPUT_SPEC_KEY)
        where = f"{os.path.join(export_dir, ONNX_FILE)!r} metadata {INPUT_SPEC_KEY}"
        if text is None:
            return None
        return spec_from_optional_json(parse_json(text.encode(), "input spec", where), where)
    if runtime.name == "trained":
        return spec_from_optional_json(runtime.config["input_spec"], f"{export_dir!r} trained/config.json input_spec")
    return getattr(runtime.module, "input_spec", None)


def _images_in_folder(folder: str) -> list[str]:
    """Image files under ``folder`` (sub-folders included, hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, files in sorted(os.walk(folder)):  # links to sub-folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if is_image_file(f) and not f.startswith(".")]
    return found


#: What a .npy file of raw inputs may hold: at most this many dims, integer or float values.
MAX_NPY_DIMS = 8


def _load_npy(path: str) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only. Only a regular file is opened (a
    FIFO is refused, never waited on); its header is read and checked first (``.npy`` magic,
    not a ``.npz`` archive, a plain integer or float dtype, at most :data:`MAX_NPY_DIMS`
    non-negative dims, a file size that is exactly the header plus the data), without pickles."""
    from bnnkit.reading import open_regular

    fd = open_regular(path, ".npy array")
    with os.fdopen(fd, "rb") as f:
        magic = f.read(6)
        if magic[:4] == b"PK\x03\x04":
            raise ValueError(f"{path}: a .npz archive (a zip of arrays), not a .npy array; save one array with "
                             "numpy.save, or extract it: numpy.load(PATH)[NAME]")
        if magic != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy array (no NumPy header); save raw inputs with numpy.save")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"format version {version} (bnnkit reads 1.0 and 2.0)")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except (ValueError, SyntaxError, TypeError, OverflowError, RecursionError) as e:
            raise ValueError(f"{path}: not a readable .npy array ({str(e).splitlines()[0][:200]})") from None
        if not (isinstance(shape, tuple) and len(shape) <= MAX_NPY_DIMS
                and all(type(d) is int and 0 <= d < 2**40 for d in shape)):
            raise ValueError(f"{path}: a .npy array of shape {_short(shape)}; expected at most {MAX_NPY_DIMS} "
                             "non-negative dims")
        if dtype.hasobject or dtype.fields is not None or dtype.kind not in "iuf":
            raise ValueError(f"{path}: arrays of {dtype} are not raw inputs; give integer or float values")
        count = 1
        for d in shape:
            count *= d
        offset, size = f.tell(), os.fstat(f.fileno()).st_size
        if size != offset + count * dtype.itemsize:
            raise ValueError(f"{path}: a .npy array of shape {shape} and dtype {dtype} takes "
                             f"{offset + count * dtype.itemsize:,} bytes; the file has {size:,}")
        if count == 0:
            return np.empty(shape, dtype=dtype)
        return np.memmap(f, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _short(value: Any) -> str:
    from bnnkit.schema import show

    return show(value)


def _as_batch(arr: np.ndarray, spec: InputSpec, name: str) -> np.ndarray:
    """``arr`` as ``(N, *shape)``: one input ``(*shape)`` or a batch; for 1-channel images also
    without the channel dim (``(H, W)`` or ``(N, H, W)``)."""
    shape = spec.shape
    if arr.shape == shape:
        return arr[None]
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape and arr.shape[0] > 0:
        return arr
    no_channel = spec.layout == "NCHW" and spec.channels == 1
    if no_channel and arr.shape == shape[1:]:
        return arr[None, None]
    if no_channel and arr.ndim == 3 and arr.shape[1:] == shape[1:] and arr.shape[0] > 0:
        return arr[:, None]
    dims = ", ".join(map(str, shape))
    expected = f"(N, {dims}) or ({dims})"
    if no_channel:
        expected += f" (or without the channel dim: (N, {shape[1]}, {shape[2]}) or ({shape[1]}, {shape[2]}))"
    hint = ""
    if spec.layout == "NCHW" and arr.ndim >= 3 and arr.shape[-3:] == (shape[1], shape[2], shape[0]):
        hint = "; it looks channels-last (NHWC): the layout is NCHW, transpose it (x.transpose(0, 3, 1, 2))"
    elif spec.layout == "NCHW" and arr.ndim >= 3 and arr.shape[-2:] == shape[1:] and arr.shape[-3] != shape[0]:
        hint = f"; it has {arr.shape[-3]} channels, the model takes {shape[0]}"
    rng = spec.value_range
    values = f", raw values in [{rng[0]:g}, {rng[1]:g}]" if rng else ""
    raise ValueError(f"{name}: raw inputs of shape {tuple(arr.shape)}; this model takes {expected}{values}{hint}")
