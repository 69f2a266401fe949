"""bnnkit: binary neural networks for PyTorch, trained with ReSTE and deployed packed.

Public API::

    import bnnkit
    model = bnnkit.models.create("resnet20")          # a 1w1a zoo model
    bnnkit.binarize(float_model)                      # or convert your own, in place
    schedule = bnnkit.OSchedule(model, epochs=200)    # ReSTE's o schedule
    y = bnnkit.functional.reste_sign(x, o=2.0)        # the estimator itself

``import bnnkit`` loads nothing but the version: every sub-module and re-exported name is
imported on first use (PEP 562), so the command line starts without torch. The
``torch.ops.bnnkit`` operators are registered when ``bnnkit.ops`` is imported (by
``bnnkit.functional``, ``bnnkit.nn``, ``bnnkit.models``, ``bnnkit.export``, ...).
"""

from bnnkit._lazy import lazy_attributes
from bnnkit.version import __version__

_EXPORTS = {
    "OSchedule": "bnnkit.schedule",
    "binarize": "bnnkit.convert",
    "get_backend": "bnnkit.backend",
    "list_estimators": "bnnkit.estimators",
    "set_backend": "bnnkit.backend",
    "use_backend": "bnnkit.backend",
}
_SUBMODULES = ("artifacts", "backend", "benchmarks", "choices", "cifar10", "cli", "convert", "data", "estimators",
               "export", "functional", "images", "inputs", "kernels", "models", "nn", "ops", "plot", "predict",
               "renames", "schedule", "schema", "study", "summary", "train", "version")

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES)

__all__ = [
    "OSchedule",
    "__version__",
    "binarize",
    "functional",
    "get_backend",
    "list_estimators",
    "models",
    "nn",
    "set_backend",
    "use_backend",
]
