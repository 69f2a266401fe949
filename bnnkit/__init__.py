"""bnnkit: binary neural networks for PyTorch, trained with ReSTE and deployed packed.

Public API::

    import bnnkit
    model = bnnkit.models.create("resnet20")          # a 1w1a zoo model
    bnnkit.binarize(float_model)                      # or convert your own, in place
    schedule = bnnkit.OSchedule(model, epochs=200)    # ReSTE's o schedule
    y = bnnkit.functional.reste_sign(x, o=2.0)        # the estimator itself
"""

from bnnkit import functional, models, nn
from bnnkit.backend import get_backend, set_backend, use_backend
from bnnkit.convert import binarize
from bnnkit.estimators import list_estimators
from bnnkit.schedule import OSchedule
from bnnkit.version import __version__

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
