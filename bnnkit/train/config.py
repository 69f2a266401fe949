"""Training configuration: the paper's recipes per (model, dataset) and the learning-rate schedules."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

# Imported by the command line to build its parser: torch and the kernels load where used.

RUN_FORMAT_VERSION = 2

AMP_DTYPES = {None: None, "bf16": "bfloat16", "fp16": "float16"}
"""``TrainConfig.amp`` values and the torch dtype (by name) autocast runs in."""


LR_SCHEDULES = ("reference", "cosine")
"""``TrainConfig.lr_schedule`` values (see :func:`lr_at`)."""

REFERENCE_WARMUP_EPOCHS = 5
"""The reference code's warm-up (``--warm_up``): on (5 epochs) or off, nothing in between."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Defaults of a training run: epochs, global batch, warm-up epochs, learning-rate schedule,
    and where they come from."""

    epochs: int
    batch_size: int
    warmup_epochs: int
    lr_schedule: str
    source: str

    def describe(self) -> str:
        warmup = f", {self.warmup_epochs}-epoch warm-up" if self.warmup_epochs else ""
        return f"{self.epochs} epochs, batch {self.batch_size}{warmup}, {self.lr_schedule} lr schedule"


_CIFAR = Recipe(1000, 256, REFERENCE_WARMUP_EPOCHS, "reference", "the reference code's README (CIFAR-10)")
_IMAGENET = Recipe(250, 750, 0, "reference", "the reference code's README (ImageNet)")

# Fallbacks for a model trained on a dataset other than its own (or a model without an entry in
# MODEL_RECIPES). Digits: sized to finish in about a minute on 2 CPU cores; synthetic: smoke runs.
DATASET_DEFAULTS: dict[str, Recipe] = {
    "digits": Recipe(40, 16, 0, "cosine", "bnnkit (sized for about a minute on 2 CPU cores)"),
    "cifar10": _CIFAR,
    "imagefolder": _IMAGENET,
    "synthetic": Recipe(3, 64, 0, "cosine", "bnnkit (smoke runs)"),
}

# The paper's recipes per (model, dataset), as the reference code's README trains them: SGD lr 0.1,
# momentum 0.9, weight decay 1e-4, o_end 3; CIFAR-10 with --warm_up, ImageNet without.
MODEL_RECIPES: dict[tuple[str, str], Recipe] = {
    ("resnet20", "cifar10"): _CIFAR,
    ("resnet20_bireal", "cifar10"): _CIFAR,
    ("vgg_small", "cifar10"): _CIFAR,
    ("resnet18_cifar", "cifar10"): Recipe(2000, 96, REFERENCE_WARMUP_EPOCHS, "reference",
                                          "the reference code's README (CIFAR-10, ResNet-18)"),
    ("resnet18", "imagefolder"): _IMAGENET,
    ("resnet34", "imagefolder"): _IMAGENET,
    ("digits_mlp", "digits"): DATASET_DEFAULTS["digits"],
    ("digits_cnn", "digits"): DATASET_DEFAULTS["digits"],
}


def recipe_for(model: str, dataset: str) -> Recipe:
    """The defaults of training ``model`` on ``dataset``: its entry in :data:`MODEL_RECIPES`, else
    the dataset's (:data:`DATASET_DEFAULTS`)."""
    return MODEL_RECIPES.get((model, dataset), DATASET_DEFAULTS[dataset])


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as the run's config.json.

    ``epochs``, ``batch_size``, ``warmup_epochs`` and ``lr_schedule`` left as ``None`` take the
    recipe of (model, dataset) (:func:`recipe_for`); ``dataset=None`` takes the model's own dataset.
    ``lr_schedule``: ``"reference"`` replays the reference code's learning rates, ``"cosine"`` is
    a clean warm-up + cosine (see :func:`lr_at`).
    ``amp``: ``"bf16"`` or ``"fp16"`` runs forward and loss under ``torch.autocast`` (fp16
    with a gradient scaler), ``None`` trains in float32. ``compile``: train through
    ``torch.compile(model)``.
    ``threads``: PyTorch's CPU threads while the run trains (``None``: PyTorch's default, one
    per physical core); every metrics row records the count in effect, and ``--resume`` without
    ``--threads`` takes the run's. A run resumed with another count (or another torch build or CPU kernels) continues, but its remaining epochs
    may differ in the last bits from the uninterrupted run's; the resume says so.
    ``input_size``: the height and width S of the images a run trains on, for ``imagefolder``
    and ``synthetic``; ``None`` takes the model's (its zoo entry's input shape: 224 for the
    ImageNet models, 32 for the CIFAR ones). imagefolder's crops follow it
    (:func:`bnnkit.data.imagefolder_geometry`).
    ``t``: the clipping threshold of the estimator (``model_kwargs["estimator"]``, ReSTE by
    default); ``None`` takes its default: 1.5 for ReSTE (the paper's), 1 for the clipped STE
    (the paper's STE); estimators that do not clip keep ``None``.
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
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int | None = None
    lr_schedule: str | None = None
    o_end: float = 3.0
    t: float | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    workers: int = 0
    progress: bool = True
    amp: str | None = None
    compile: bool = False
    sync_bn: bool = False

    def resolved(self) -> TrainConfig:
        """A copy with the recipe's defaults filled in and values checked."""
        from bnnkit.data import check_dataset_name
        from bnnkit.models import model_info

        info = model_info(self.model)
        dataset = check_dataset_name(self.dataset or info.dataset)
        d = recipe_for(self.model, dataset)
        cfg = dataclasses.replace(
            self, dataset=dataset,
            epochs=d.epochs if self.epochs is None else self.epochs,
            batch_size=d.batch_size if self.batch_size is None else self.batch_size,
            warmup_epochs=d.warmup_epochs if self.warmup_epochs is None else self.warmup_epochs,
            lr_schedule=d.lr_schedule if self.lr_schedule is None else self.lr_schedule,
        )
        _check_integers(cfg)
        if not 1 <= cfg.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be >= 1, got {cfg.epochs}" if cfg.epochs < 1 else
                             f"epochs (--epochs) must be at most {MAX_EPOCHS:,}, got {cfg.epochs:,}")
        if not 1 <= cfg.batch_size <= MAX_BATCH:
            raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}" if cfg.batch_size < 1 else
                             f"batch size (--batch-size) must be at most {MAX_BATCH:,}, got {cfg.batch_size:,}")
        if not 0 <= cfg.warmup_epochs < cfg.epochs:
            raise ValueError(f"warm-up epochs (--warmup-epochs, {cfg.warmup_epochs} here) must be in [0, --epochs="
                             f"{cfg.epochs}); pass --warmup-epochs 0 for a short run")
        if not 0 < cfg.lr <= MAX_LR:  # also refuses nan
            raise ValueError(f"learning rate (--lr) must be in (0, {MAX_LR:g}], got {cfg.lr}")
        _check_threshold(cfg)
        cfg = dataclasses.replace(cfg, t=_resolved_threshold(cfg))
        if not (math.isfinite(cfg.o_end) and cfg.o_end >= 1):
            raise ValueError(f"o_end must be >= 1, got {cfg.o_end}")
        if not 0 <= cfg.workers <= MAX_WORKERS:
            raise ValueError(f"workers (--workers) must be in [0, {MAX_WORKERS}], got {cfg.workers}")
        if cfg.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {', '.join(k for k in AMP_DTYPES if k)} or None, got {cfg.amp!r}")
        check_lr_schedule(cfg.lr_schedule, cfg.epochs, cfg.warmup_epochs)
        _check_optimizer_and_model(cfg)
        from bnnkit.train.loop import resolve_device

        resolve_device(cfg.device)  # --device meta / mps / xpu stop here, before any work
        return cfg

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input the run trains on: the model's, with ``input_size`` as its
        height and width when given."""
        from bnnkit.models import model_info

        shape = tuple(model_info(self.model).input_shape)
        if self.input_size is None:
            return shape
        return (*shape[:-2], self.input_size, self.input_size)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TrainConfig:
        """The options saved in a run's ``config.json``; estimator names of bnnkit 0.1 are read as
        the estimator they meant (:func:`bnnkit.estimators.saved_estimator_name`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{**obj, "model_kwargs": saved_model_kwargs(obj.get("model_kwargs", {}))})


def saved_model_kwargs(kwargs: Any) -> Any:
    """A saved run's model arguments with a bnnkit 0.1 estimator name replaced by its meaning."""
    from bnnkit.estimators import saved_estimator_name

    if isinstance(kwargs, dict) and "estimator" in kwargs:
        return {**kwargs, "estimator": saved_estimator_name(kwargs["estimator"])}
    return kwargs


def _estimator_of(cfg: TrainConfig) -> Any:
    kwargs = cfg.model_kwargs if isinstance(cfg.model_kwargs, dict) else {}
    return kwargs.get("estimator", "reste")


def _resolved_threshold(cfg: TrainConfig) -> float | None:
    from bnnkit.estimators import default_threshold

    return cfg.t if cfg.t is not None else default_threshold(_estimator_of(cfg))


def _check_threshold(cfg: TrainConfig) -> None:
    """``t`` is a finite number above ReSTE's m = 0.1 for ReSTE, above 0 for the others."""
    from bnnkit.estimators import check_estimator

    if cfg.t is None:
        check_estimator(_estimator_of(cfg))  # an unknown name is named here, not as a threshold problem
        return
    if isinstance(cfg.t, bool) or not isinstance(cfg.t, (int, float)):
        raise ValueError(f"t (--t) must be a number, got {cfg.t!r}")
    if _estimator_of(cfg) == "reste":
        from bnnkit.kernels.sign_grad import RESTE_M

        if not (math.isfinite(cfg.t) and cfg.t > RESTE_M):
            raise ValueError(f"t (--t) must be a finite clipping threshold > {RESTE_M} (ReSTE's m), got {cfg.t}")
    elif not (math.isfinite(cfg.t) and cfg.t > 0):
        raise ValueError(f"t (--t) must be a finite clipping threshold > 0, got {cfg.t}")


MAX_EPOCHS = 1_000_000
"""Most epochs a run may have (checked before any work; nothing loops over the epochs to plan)."""
MAX_BATCH = 2**31 - 1
MAX_WORKERS = 1024

MAX_LR = 10.0
"""Largest learning rate accepted: beyond it SGD on these networks only diverges (and past
float32's range the update itself overflows)."""


def _check_integers(cfg: TrainConfig) -> None:
    for name in ("epochs", "batch_size", "warmup_epochs", "seed", "workers"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    for name in ("lr", "momentum", "weight_decay", "o_end"):  # t: _check_threshold (None = the default)
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")


def _check_optimizer_and_model(cfg: TrainConfig) -> None:
    """The checks of :meth:`TrainConfig.resolved` on SGD's other values, the seed, and the
    model: built on the meta device (no memory), its constructor checks its arguments, and
    it must have a binary layer."""
    import torch

    from bnnkit import models
    from bnnkit.nn.layers import binary_layers

    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int)
                                    or not 1 <= cfg.threads <= 4096):
        raise ValueError(f"threads (--threads) must be an integer in [1, 4096], got {cfg.threads!r}")
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
    if cfg.input_size is not None:
        _check_input_size(cfg, model)


INPUT_SIZE_DATASETS = ("imagefolder", "synthetic")
"""The datasets whose image size follows the model (``--input-size``); digits and CIFAR-10 have their own."""


def _check_input_size(cfg: TrainConfig, model) -> None:
    """``input_size`` is an integer the dataset can produce and the model takes (a forward pass
    on the meta device: shapes only, no memory)."""
    import torch

    if isinstance(cfg.input_size, bool) or not isinstance(cfg.input_size, int) or not 1 <= cfg.input_size <= 4096:
        raise ValueError(f"input size (--input-size) must be an integer in [1, 4096], got {cfg.input_size!r}")
    if cfg.dataset not in INPUT_SIZE_DATASETS:
        raise ValueError(f"--input-size applies to {' and '.join(INPUT_SIZE_DATASETS)}; {cfg.dataset} images have "
                         "their own size")
    shape = cfg.input_shape()
    if len(shape) != 3:
        raise ValueError(f"--input-size sets the height and width of image inputs; model {cfg.model!r} takes "
                         f"inputs of shape {shape}")
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, *shape, device="meta"))
    except (RuntimeError, ValueError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model {cfg.model!r} does not take inputs of shape {shape} (--input-size "
                         f"{cfg.input_size}): {first}") from None


def check_lr_schedule(schedule: str, epochs: int, warmup_epochs: int) -> None:
    """Raise ``ValueError`` unless ``schedule`` can run ``epochs`` epochs with ``warmup_epochs``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (--lr-schedule); "
                         f"choose {' or '.join(LR_SCHEDULES)}")
    if schedule == "reference":
        if warmup_epochs not in (0, REFERENCE_WARMUP_EPOCHS):
            raise ValueError(f"the reference schedule warms up for {REFERENCE_WARMUP_EPOCHS} epochs or not at all "
                             f"(the reference code's --warm_up), so --warmup-epochs must be 0 or "
                             f"{REFERENCE_WARMUP_EPOCHS}, got {warmup_epochs}; --lr-schedule cosine takes any warm-up")
        if warmup_epochs and epochs <= REFERENCE_WARMUP_EPOCHS:
            raise ValueError(f"the reference schedule with its {REFERENCE_WARMUP_EPOCHS}-epoch warm-up needs more than "
                             f"{REFERENCE_WARMUP_EPOCHS} epochs, got {epochs}; pass --warmup-epochs 0 for a short run")


class _ReferenceReplay:
    """The reference code's per-epoch learning rates, replayed with torch's own scheduler one
    epoch at a time, as far as asked (the schedule is a recursion: epoch e needs e steps)."""

    def __init__(self, epochs: int, base_lr: float, warm_up: bool) -> None:
        import torch

        self.shift = 4 if warm_up else 0
        self.base_lr, self.warm_up = base_lr, warm_up
        param = torch.zeros(1, requires_grad=True)
        self.optimizer = torch.optim.SGD([{"params": [param], "initial_lr": base_lr}], lr=base_lr)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, epochs - self.shift, eta_min=0,
                                                                    last_epoch=-1 - self.shift)
        self.lrs: list[float] = []

    def lr(self, epoch: int) -> float:
        while len(self.lrs) <= epoch:
            e = len(self.lrs)
            group = self.optimizer.param_groups[0]
            if self.warm_up and e < REFERENCE_WARMUP_EPOCHS:
                group["lr"] = self.base_lr * (e + 1) / REFERENCE_WARMUP_EPOCHS
            self.lrs.append(float(group["lr"]))
            self.optimizer.step()  # no gradient: a no-op
            if e >= self.shift:
                self.scheduler.step()
        return self.lrs[epoch]


@functools.lru_cache(maxsize=32)
def _replay(epochs: int, base_lr: float, warm_up: bool) -> _ReferenceReplay:
    return _ReferenceReplay(epochs, base_lr, warm_up)


def reference_lrs(epochs: int, base_lr: float, warm_up: bool) -> tuple[float, ...]:
    """The learning rate of every epoch as the reference code's main loop sets it.

    The reference builds ``CosineAnnealingLR(optimizer, T_max=epochs - 4 * warm_up,
    last_epoch=-1 - 4 * warm_up)``; each epoch it first overrides the lr with the linear
    warm-up ``base_lr * (epoch + 1) / 5`` while ``epoch < 5`` (with ``--warm_up``), trains,
    then steps the scheduler once ``epoch >= 4 * warm_up``. This replays exactly that with
    torch's own scheduler (an optimizer step without gradients keeps its order check quiet).

    The quirk: the chainable scheduler multiplies whatever lr the warm-up left by
    ``(1 + cos(pi k / T)) / (1 + cos(pi (k - 1) / T))`` with ``k`` starting at -3, so after
    the warm-up the lr follows ``base_lr (1 + cos(pi (e - 8) / T)) / (1 + cos(4 pi / T))``: it
    keeps rising for three epochs to a peak above ``base_lr`` at epoch 8, then anneals to 0 by
    epoch ``epochs + 4``, not ``epochs``. At 1000 epochs that is
    ``0.05 (1 + cos(pi (e - 8) / 996))`` to 4e-5; at 40 epochs the peak is 0.1031, at 12
    epochs 0.2 (twice ``base_lr``). That is torch's scheduler as bnnkit supports it (>= 2.11);
    torch 2.0, the reference's, kept the lr when it passed ``last_epoch = 0`` (a relative
    difference of 2.5e-6 at 1000 epochs). Without warm-up it is the plain cosine
    ``0.5 base_lr (1 + cos(pi e / epochs))``.
    """
    replay = _replay(epochs, base_lr, warm_up)
    replay.lr(epochs - 1)
    return tuple(replay.lrs[:epochs])


def peak_lr(epochs: int, base_lr: float, warmup_epochs: int = 0, schedule: str = "cosine") -> float:
    """The largest learning rate of a run, from its first epochs only (no loop over all of
    them): the cosine schedule peaks at the end of its warm-up; the reference schedule within
    its first 9 epochs (without warm-up at epoch 0; with it at epoch 8, after which
    ``cos(pi (e - 8) / (epochs - 4))`` decreases)."""
    check_lr_schedule(schedule, epochs, warmup_epochs)
    first = warmup_epochs + 1 if schedule == "cosine" else REFERENCE_WARMUP_EPOCHS + 4
    return max(lr_at(e, epochs, base_lr, warmup_epochs, schedule) for e in range(min(epochs, first)))


def lr_at(epoch: int, epochs: int, base_lr: float, warmup_epochs: int = 0, schedule: str = "cosine") -> float:
    """Learning rate of ``epoch`` (0-based) of ``epochs``; set once per epoch, as the paper does.

    - ``"cosine"``: linear warm-up to ``base_lr`` over ``warmup_epochs`` (epoch e gets
      ``base_lr * (e + 1) / warmup_epochs``), then cosine annealing to 0 over the remaining
      epochs (``base_lr`` at the first of them).
    - ``"reference"``: what the reference code sets (:func:`reference_lrs`); ``warmup_epochs``
      is 0 or 5 (its ``--warm_up``).
    """
    check_lr_schedule(schedule, epochs, warmup_epochs)
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    if schedule == "reference":
        return _replay(epochs, float(base_lr), bool(warmup_epochs)).lr(epoch)
    if epoch < warmup_epochs:
        return base_lr * (epoch + 1) / warmup_epochs
    span = epochs - warmup_epochs
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))
