"""The names users choose from (models, datasets, estimators, runtimes, ...), without torch.

The command line offers these as ``choices`` and the modules that implement them import them
from here, so that ``bnnkit --help``, ``bnnkit CMD --help`` and a bad option answer without
importing torch, Triton or ONNX Runtime. Three lists mirror registries that need torch to build
(the model zoo, the estimator kinds of the kernels, the kernels' weight scales);
``tests/test_startup.py`` checks each equals its registry.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

MODELS = ("digits_cnn", "digits_mlp", "resnet18", "resnet18_cifar", "resnet20", "resnet20_bireal", "resnet34",
          "vgg_small")
"""The built-in zoo models (:func:`bnnkit.models.list_models`, which also lists models registered later)."""


class ModelNames:
    """The ``--model`` choices: the built-in zoo, and the models registered with
    :func:`bnnkit.models.register_model` in this process (a script that registers a model, then
    runs :func:`bnnkit.cli.main`). Checking a built-in name imports nothing."""

    def _all(self) -> tuple[str, ...]:
        models = sys.modules.get("bnnkit.models")  # imported by whoever registered a model
        return tuple(models.list_models()) if models is not None else MODELS

    def __contains__(self, name: object) -> bool:
        return name in MODELS or name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())


MODEL_CHOICES = ModelNames()

DATASETS = ("digits", "cifar10", "imagefolder", "synthetic")
"""The datasets ``bnnkit train`` and ``validate`` read (:mod:`bnnkit.data`)."""

ESTIMATORS = ("identity_ste", "clipped_ste", "approx_sign", "reste")
"""The built-in estimators (:class:`bnnkit.kernels.kinds.EstimatorKind`'s values)."""

SCALE_MODES = ("tensor", "channel", "none")
"""Weight scales of the binary layers (:data:`bnnkit.kernels.weight_binarize.SCALE_MODES`)."""

ONNX_RUNTIMES = ("onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda")
"""How ``predict`` and ``validate`` name ONNX Runtime: ``onnxruntime`` is its CUDA provider when
ONNX Runtime has one here, else its CPU provider; the other two name a provider."""

PREDICT_RUNTIMES = ("packed", *ONNX_RUNTIMES, "trained")
"""``bnnkit predict --runtime``: the packed model, ONNX Runtime, or the trained PyTorch model."""

VALIDATE_RUNTIMES = ("packed", *ONNX_RUNTIMES)
"""``bnnkit validate --runtime``: the runtimes compared with the trained model."""
