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
any is run; a bad one raises a one-line ``ValueError`` naming it and what is expected.
``bnnkit predict`` is this module on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from bnnkit.choices import PREDICT_RUNTIMES
from bnnkit.images import IMAGE_EXTENSIONS, is_image_file
from bnnkit.inputs import InputSpec, spec_from_optional_json

#: ``bnnkit predict --runtime`` names -> runtimes of :data:`bnnkit.export.validation.runtimes.RUNTIMES`
#: (``onnxruntime``: CUDA when onnxruntime has it, else CPU; ``onnxruntime-cpu`` / ``-cuda``: that provider).
RUNTIME_CHOICES = PREDICT_RUNTIMES


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
        from bnnkit.images import pil

        self._require_images(path)
        Image = pil()
        try:
            with Image.open(path) as img:  # the header only: format, mode and size
                size = img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path}: cannot be read as an image ({type(e).__name__}: {e})") from None
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

    def _raw(self, item: _Item) -> np.ndarray:
        """One input as raw values, ``(*shape)`` float64."""
        if item.array is not None:
            return np.asarray(item.array, dtype=np.float64)
        from bnnkit.images import image_to_channels, open_image, resize_center_crop, to_chw

        img = open_image(item.image) if isinstance(item.image, str) else item.image
        img = image_to_channels(img, self.spec.channels, item.name)
        h, w = self.spec.image_size
        if self.spec.resize is not None:
            img = resize_center_crop(img, self.spec.resize, h, w)
        elif img.size != (w, h):
            raise ValueError(f"{item.name}: a {img.size[1]}x{img.size[0]} image; this model takes {h}x{w} images")
        return self.spec.pixels_to_raw(to_chw(img))

    # --- running --------------------------------------------------------------------------
    def predict(self, inputs: Any, *, top_k: int = 5, batch_size: int = 64, progress: bool = False) -> list[Prediction]:
        """Top-``top_k`` classes (at most the number of classes) of every input, in order."""
        items = self.collect(inputs)
        names, probs = self._probabilities(items, batch_size, progress)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top-k must be an int >= 1, got {top_k!r}")
        k = min(top_k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [Prediction(name, tuple(idx.tolist()), tuple(self.spec.class_name(i) for i in idx.tolist()),
                           tuple(v.tolist())) for name, idx, v in zip(names, indices, values)]

    def _probabilities(self, items: Sequence[_Item], batch_size: int, progress: bool) -> tuple[list[str], torch.Tensor]:
        from tqdm.auto import tqdm

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch size must be an int >= 1, got {batch_size!r}")
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        out = []
        for batch in tqdm(batches, desc="predict", unit="batch", disable=not progress or len(batches) < 2):
            x = self.spec.normalize(np.stack([self._raw(item) for item in batch]))
            logits = self.runtime.run(x)
            self._check_outputs(logits, len(batch))
            out.append(torch.softmax(logits.double(), dim=1))
        return [item.name for item in items], torch.cat(out)

    def _check_outputs(self, logits: torch.Tensor, n: int) -> None:
        if logits.dim() != 2 or logits.shape[0] != n:
            raise ValueError(f"the {self.runtime.name} model returned outputs of shape {tuple(logits.shape)}; "
                             f"predict needs class scores (N, classes) for N = {n} inputs")
        names = self.spec.class_names
        if names is not None and len(names) != logits.shape[1]:
            raise ValueError(f"the input spec of {self.source} names {len(names)} classes, the model outputs "
                             f"{logits.shape[1]} scores")


def predict(export_dir: str | os.PathLike, inputs: Any, *, runtime: str = "packed", top_k: int = 5,
            batch_size: int = 64, progress: bool = False) -> list[Prediction]:
    """:meth:`Predictor.predict` of :meth:`Predictor.from_export` in one call."""
    return Predictor.from_export(export_dir, runtime).predict(inputs, top_k=top_k, batch_size=batch_size,
                                                              progress=progress)


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
    if not os.path.isdir(os.path.join(export_dir, TRAINED_DIR)) and not os.path.isfile(
            os.path.join(export_dir, PACKED_MANIFEST)):
        if os.path.isfile(os.path.join(export_dir, "config.json")):
            raise ValueError(f"{export_dir!r} is a training run, not an export directory; make one with: "
                             f"bnnkit export {export_dir} --out EXPORT_DIR --onnx")
        raise FileNotFoundError(f"{export_dir!r} is not an export directory (no {PACKED_MANIFEST}, no {TRAINED_DIR}/); "
                                "make one with bnnkit export RUN_DIR --out EXPORT_DIR --onnx")


def _load_runtime(export_dir: str, runtime: str):
    from bnnkit.export.validation.runtimes import RUNTIMES, RuntimeUnavailable, TorchModuleRuntime, load_trained_model

    loaders = {**RUNTIMES, "trained": lambda d: TorchModuleRuntime("trained", load_trained_model(d),
                                                                   "PyTorch eager, eval mode")}
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
    (trained) or the ONNX file's metadata (onnxruntime)."""
    from bnnkit.artifacts import ArtifactError, read_json
    from bnnkit.export.layout import ONNX_FILE, TRAINED_DIR

    if hasattr(runtime, "session"):
        from bnnkit.export.onnx.export import INPUT_SPEC_KEY

        text = runtime.session.get_modelmeta().custom_metadata_map.get(INPUT_SPEC_KEY)
        where = f"{os.path.join(export_dir, ONNX_FILE)!r} metadata {INPUT_SPEC_KEY}"
        if text is None:
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{where}: not valid JSON ({e})") from None
        return spec_from_optional_json(obj, where)
    if runtime.name == "trained":
        path = os.path.join(export_dir, TRAINED_DIR, "config.json")
        return spec_from_optional_json(read_json(path, "trained model config").get("input_spec"),
                                       f"{path!r} input_spec")
    return getattr(runtime.module, "input_spec", None)


def _images_in_folder(folder: str) -> list[str]:
    """Image files under ``folder`` (sub-folders included, hidden files and folders skipped), sorted."""
    found = []
    for root, dirs, files in sorted(os.walk(folder)):  # links to sub-folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if is_image_file(f) and not f.startswith(".")]
    return found


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a .npy array of numbers ({e})") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read as a .npy array ({e})") from None


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
