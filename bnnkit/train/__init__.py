"""Training: the paper's recipe, run directories, resume."""

from bnnkit.train.checkpoint import load_run
from bnnkit.train.config import DATASET_DEFAULTS, TrainConfig, lr_at
from bnnkit.train.loop import TrainResult, evaluate, train

__all__ = ["DATASET_DEFAULTS", "TrainConfig", "TrainResult", "evaluate", "load_run", "lr_at", "train"]
