"""Training configuration and the paper's recipe as per-dataset defaults."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from bnnkit.kernels.sign_grad import RESTE_M

RUN_FORMAT_VERSION = 2

AMP_DTYPES = {None: None, "bf16": "bfloat16", "fp16": "float16"}
"""``TrainConfig.amp`` values and the torch dtype (by name) autocast runs in."""


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    epochs: int
    batch_size: int
    warmup_epochs: int


# The paper's recipe: CIFAR-10 1000 epochs, batch 256, 5 warm-up epochs; ImageNet 250 epochs,
# batch 750. Digits: sized to finish in about a minute on 2 CPU cores; synthetic: smoke runs.
DATASET_DEFAULTS: dict[str, DatasetDefaults] = {
    "digits": DatasetDefaults(epochs=40, batch_size=16, warmup_epochs=0),
    "cifar10": DatasetDefaults(epochs=1000, batch_size=256, warmup_epochs=5),
    "imagefolder": DatasetDefaults(epochs=250, batch_size=750, warmup_epochs=0),
    "synthetic": DatasetDefaults(epochs=3, batch_size=64, warmup_epochs=0),
}


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as the run's config.json.

    ``epochs``, ``batch_size`` and ``warmup_epochs`` left as ``None`` take the dataset's
    defaults (:data:`DATASET_DEFAULTS`); ``dataset=None`` takes the model's own dataset.
    ``amp``: ``"bf16"`` or ``"fp16"`` runs forward and loss under ``torch.autocast`` (fp16
    with a gradient scaler), ``None`` trains in float32. ``compile``: train through
    ``torch.compile(model)``.
    ``batch_size`` is the global batch: under torchrun each of N processes takes
    ``batch_size / N`` samples per step. ``sync_bn`` turns BatchNorm into SyncBatchNorm when
    training on several GPUs (batch statistics over the global batch).
    """

    model: str = "digits_mlp"
    out: str = "runs/digits_mlp"
    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None
    o_end: float = 3.0
    t: float = 1.5
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    progress: bool = True
    amp: str | None = None
    compile: bool = False
    sync_bn: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with dataset defaults filled in and values checked."""
        from bnnkit.data import check_dataset_name
        from bnnkit.models import model_info

        info = model_info(self.model)
        dataset = check_dataset_name(self.dataset or info.dataset)
        d = DATASET_DEFAULTS[dataset]
        cfg = dataclasses.replace(
            self, dataset=dataset,
            epochs=d.epochs if self.epochs is None else self.epochs,
            batch_size=d.batch_size if self.batch_size is None else self.batch_size,
            warmup_epochs=d.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs,
        )
        if cfg.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {cfg.epochs}")
        if cfg.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}")
        if not 0 <= cfg.warmup_epochs < cfg.epochs:
            raise ValueError(f"warm-up epochs (--warmup-epochs, {cfg.warmup_epochs} here) must be in [0, --epochs="
                             f"{cfg.epochs}); pass --warmup-epochs 0 for a short run")
        if not 0 < cfg.lr <= MAX_LR:  # also refuses nan
            raise ValueError(f"learning rate (--lr) must be in (0, {MAX_LR:g}], got {cfg.lr}")
        if not (math.isfinite(cfg.t) and cfg.t > RESTE_M):
            raise ValueError(f"t (--t) must be a finite clipping threshold > {RESTE_M} (ReSTE's m), got {cfg.t}")
        if not (math.isfinite(cfg.o_end) and cfg.o_end >= 1):
            raise ValueError(f"o_end must be >= 1, got {cfg.o_end}")
        if cfg.workers < 0:
            raise ValueError(f"workers must be >= 0, got {cfg.workers}")
        if cfg.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(k for k in AMP_DTYPES if k)} or None, got {cfg.amp!r}")
        _check_optimizer_and_model(cfg)
        return cfg

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(names)}")
        return cls(**obj)


MAX_LR = 10.0
"""Largest learning rate accepted: beyond it SGD on these networks only diverges (and past
float32's range the update itself overflows)."""


def _check_optimizer_and_model(cfg: TrainConfig) -> None:
    """The checks of :meth:`TrainConfig.resolved` on SGD's other values, the integers, and the
    model: built on the meta device (no memory), its constructor checks its arguments, and
    it must have a binary layer."""
    import torch

    from bnnkit import models
    from bnnkit.nn.layers import binary_layers

    for name in ("epochs", "batch_size", "warmup_epochs", "seed", "workers"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError(f"seed (--seed) must be in [0, 2**63), got {cfg.seed}")
    if not 0 <= cfg.momentum < 1:  # also refuses nan
        raise ValueError(f"momentum (--momentum) must be in [0, 1), got {cfg.momentum}")
    if not 0 <= cfg.weight_decay < 1:
        raise ValueError(f"weight decay (--weight-decay) must be in [0, 1), got {cfg.weight_decay}")
    if not isinstance(cfg.model_kwargs, dict):
        raise ValueError(f"model arguments must be a dict, got {cfg.model_kwargs!r}")
    with torch.device("meta"):
        model = models.create(cfg.model, **cfg.model_kwargs)
    if not any(True for _ in binary_layers(model)):
        raise ValueError(f"model {cfg.model!r} with arguments {cfg.model_kwargs} has no binary layer; bnnkit trains "
                         "binary networks")


def lr_at(epoch: int, epochs: int, base_lr: float, warmup_epochs: int = 0) -> float:
    """Learning rate of ``epoch`` (0-based): linear warm-up to ``base_lr`` over ``warmup_epochs``
    (epoch e gets ``base_lr * (e + 1) / warmup_epochs``), then cosine annealing to 0 over the
    remaining epochs (``base_lr`` at the first of them). Set once per epoch, as the paper does."""
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    span = epochs - warmup_epochs
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
