"""Training: the paper's recipe, run directories, resume.

The names below are imported on first use (PEP 562): the command line reads
:mod:`bnnkit.train.config` to build its parser without importing torch.
"""

from bnnkit._lazy import lazy_attributes

_EXPORTS = {
    "DATASET_DEFAULTS": "bnnkit.train.config",
    "TrainConfig": "bnnkit.train.config",
    "TrainResult": "bnnkit.train.loop",
    "evaluate": "bnnkit.train.loop",
    "load_run": "bnnkit.train.checkpoint",
    "lr_at": "bnnkit.train.config",
    "train": "bnnkit.train.loop",
}
_SUBMODULES = ("checkpoint", "config", "distributed", "indicators", "loop", "rundir")

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS, _SUBMODULES)

__all__ = ["DATASET_DEFAULTS", "TrainConfig", "TrainResult", "evaluate", "load_run", "lr_at", "train"]
