"""The training loop: the paper's recipe (SGD; the reference code's learning rates or a clean
warm-up + cosine, see :func:`bnnkit.train.config.lr_at`; ReSTE's o schedule).

Every epoch is a pure function of (seed, epoch, state at its start): the shuffling order and
the random augmentations are seeded from ``(seed, epoch)``, so ``--resume`` from the
checkpoint of epoch e continues exactly as the uninterrupted run would have.

Under torchrun the same loop runs data-parallel (see :mod:`bnnkit.train.distributed`):
``batch_size`` is the global batch, metrics are summed over processes, rank 0 writes the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bnnkit import models
from bnnkit.data import DatasetSplits, load_dataset, make_loader
from bnnkit.nn.layers import binary_layers
from bnnkit.schedule import OSchedule
from bnnkit.train import checkpoint as ckpt
from bnnkit.train import distributed, environment, rundir
from bnnkit.train.config import AMP_DTYPES, TrainConfig, lr_at, peak_lr
from bnnkit.train.distributed import DistributedContext
from bnnkit.train.indicators import estimating_error_tensor, gradient_stability_tensor, run_indicators


@dataclasses.dataclass
class TrainResult:
    run_dir: str
    best_test_acc: float
    best_epoch: int
    epochs: int
    metrics: list[dict[str, Any]]
    rank: int = 0
    world_size: int = 1
    indicators: dict[str, float] = dataclasses.field(default_factory=dict)
    """The run's ``mean_estimating_error`` and ``total_gradient_stability`` (see
    :func:`bnnkit.train.indicators.run_indicators`), also in ``config.json``."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are
    checked (CUDA must be there, N below the device count); any other device (``meta``,
    ``mps``, ``xpu``, ...) is refused: bnnkit trains on CPUs and CUDA GPUs."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name) if isinstance(name, str) and len(name) <= 64 else None
    except RuntimeError:
        device = None
    if device is None:
        raise ValueError(f"unknown device {str(name)[:64]!r}; use auto, cpu, cuda or cuda:N")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"bnnkit trains on cpu or cuda, not {device.type!r} (--device {name}); use auto, cpu, cuda "
                         "or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextlib.contextmanager
def _threads(count: int | None):
    """PyTorch's intra-op threads set to ``count`` for the block (``None``: unchanged)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count is not None:
            torch.set_num_threads(before)


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def build_model(config: TrainConfig, splits: DatasetSplits) -> nn.Module:
    info = models.model_info(config.model)
    if tuple(info.input_shape[:1]) != tuple(splits.input_shape[:1]):
        raise ValueError(f"model {config.model!r} takes {info.input_shape[0]}-channel inputs "
                         f"{info.input_shape}, dataset {splits.name!r} has {splits.input_shape}")
    model = models.create(config.model, **{**config.model_kwargs, "num_classes": splits.num_classes})
    for _, layer in binary_layers(model):
        layer.t = config.t
    return model


@dataclasses.dataclass
class Precision:
    """How a training step runs: under ``torch.autocast`` (``dtype``) or not, with an fp16
    gradient scaler or not, and through which forward (the model or its compiled form)."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    device_type: str = "cpu"
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def from_config(cls, config: TrainConfig, model: nn.Module, device: torch.device) -> Precision:
        dtype = None if config.amp is None else getattr(torch, AMP_DTYPES[config.amp])
        scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
        # The o schedule changes a 0-d tensor each epoch, so the compiled graph is reused across
        # epochs (see bnnkit.ops). Evaluation runs the model eagerly.
        forward = torch.compile(model) if config.compile else model
        return cls(forward, device.type, dtype, scaler)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


PROGRESS_EVERY = 50
"""With a progress bar, the running loss is read to the host (one sync) every this many steps."""


def _read_totals(values: list[torch.Tensor]) -> list[float]:
    """One host read for several 0-d device tensors."""
    return torch.stack([v.double() for v in values]).tolist()


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device,
             context: DistributedContext | None = None) -> tuple[float, float]:
    """``(mean cross-entropy, top-1 accuracy in [0, 1])`` of ``model`` in eval mode; with a
    distributed ``context`` each process passes its share of the set and gets the totals.
    Sums stay on the device; the host reads them once, at the end."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(dim=1) == y).sum()
        count += y.numel()
    totals = _read_totals([loss_sum, correct]) + [count]
    if context is not None:
        totals = context.sum(totals)
    loss_sum, correct, count = totals
    return loss_sum / max(count, 1), correct / max(count, 1)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, device: torch.device,
                    o_end: float, progress: bool, desc: str,
                    context: DistributedContext | None = None, precision: Precision | None = None) -> dict[str, float]:
    """One pass over ``loader``; indicators are taken at the last iteration (after its step),
    as the reference code logs them. With a distributed ``context`` loss and accuracy are
    over the samples of all processes (the indicators are the same on every process).
    ``precision``: autocast / loss scaling / compiled forward (default: float32, eager).

    No step reads a tensor to the host: loss, accuracy and indicators accumulate on the
    device and are read once, at the end of the epoch (with a progress bar, also the running
    loss every :data:`PROGRESS_EVERY` steps)."""
    model.train()
    precision = precision or Precision(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    nan = torch.full((), float("nan"), dtype=torch.float64, device=device)
    indicators = [nan, nan]
    n = len(loader)
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for i, (x, y) in enumerate(bar):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            out = precision.forward(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is None:
            loss.backward()
            optimizer.step()
        else:  # fp16: scale the loss so small gradients do not underflow
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        loss_sum += loss.detach() * y.numel()
        correct += (out.detach().argmax(dim=1) == y).sum()
        count += y.numel()
        if i == n - 1:
            indicators = [estimating_error_tensor(model, o_end), gradient_stability_tensor(model)]
        if progress and (i + 1) % PROGRESS_EVERY == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / count:.3f}")
    loss_sum, correct, *indicators = _read_totals([loss_sum, correct, *indicators])
    if context is not None:
        loss_sum, correct, count = context.sum([loss_sum, correct, count])
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "estimating_error": indicators[0], "gradient_stability": indicators[1]}


def _check_resume_config(saved: dict[str, Any], config: TrainConfig, run_dir: str) -> TrainConfig:
    """The options the run in ``run_dir`` was started with (``saved``), after checking that
    ``config`` asks for the same run; only where and how it runs may change."""
    saved_cfg = TrainConfig.from_json(saved)
    if saved_cfg.epochs != config.epochs:
        raise ValueError(f"--resume cannot change --epochs: the run in {run_dir} has {saved_cfg.epochs} epochs, "
                         f"asked {config.epochs}; its cosine learning-rate and o schedules are laid out over its "
                         f"{saved_cfg.epochs} epochs (the learning rate anneals toward 0 at the end), so a longer run would "
                         f"be neither that run nor a {config.epochs}-epoch one; start a new run with --epochs "
                         f"{config.epochs}")
    mine = config.to_json()
    # The run is the directory given, wherever it is now and however its path is spelled.
    ignore = {"out", "progress", "workers", "device", "threads", "data_dir", "download", "sync_bn"}
    diffs = {k: (v, mine[k]) for k, v in saved_cfg.to_json().items() if k not in ignore and mine[k] != v}
    if diffs:
        listed = ", ".join(f"{k}: run has {a!r}, asked {b!r}" for k, (a, b) in diffs.items())
        raise ValueError(f"--resume continues the run as it was configured; these options differ: {listed}")
    return saved_cfg


def _check_finite(row: dict[str, Any], epoch: int, config: TrainConfig) -> None:
    """Stop a run whose loss became inf or nan (it cannot recover), rather than finish it silently."""
    bad = ", ".join(f"{k} {row[k]}" for k in ("train_loss", "test_loss") if not math.isfinite(row[k]))
    if bad:
        raise ValueError(f"training diverged in epoch {epoch + 1}/{config.epochs} ({bad} at learning rate "
                         f"{row['lr']:g}); the run keeps its files up to the epoch before; start a new run with a "
                         "lower --lr")


def train(config: TrainConfig, *, resume: bool = False, log=print) -> TrainResult:
    """Train ``config.model`` on ``config.dataset``; writes the run directory ``config.out``.

    With ``resume=True`` the run continues after its last finished epoch; the options must be
    those the run was started with (device, workers, data_dir, progress and sync_bn may
    change, and so may the number of processes).

    Under torchrun (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` set) every process calls this and
    trains data-parallel: ``config.batch_size`` is the global batch; only rank 0 writes the
    run directory, logs and shows progress; each process returns the same metrics.
    """
    config = config.resolved()
    rundir.check_destination(config.out, resume)
    if resume and config.threads is None:  # continue at the thread count the run was started with
        saved = rundir.saved_options(config.out) or {}
        threads = saved.get("threads")
        if isinstance(threads, int) and not isinstance(threads, bool) and 1 <= threads <= 4096:
            config = dataclasses.replace(config, threads=threads)
    with _threads(config.threads), distributed.setup(resolve_device(config.device)) as context:
        return _train(config, context, resume, log if context.is_main else _silent)


def _silent(*args, **kwargs) -> None:
    pass


def _train(config: TrainConfig, context: DistributedContext, resume: bool, log) -> TrainResult:
    run_dir = config.out
    device = context.device
    batch_size = context.local_batch_size(config.batch_size)
    recorded = config  # the options config.json records: those the run was started with
    if resume:
        saved = rundir.saved_options(run_dir)
        if saved is not None:
            recorded = _check_resume_config(saved, config, run_dir)
    info = models.model_info(config.model)

    def load() -> DatasetSplits:
        return load_dataset(config.dataset, config.data_dir, download=config.download,
                            input_shape=config.input_shape(), num_classes=info.num_classes)

    splits = context.in_turn(load) if config.download else load()  # one download per file system
    torch.manual_seed(config.seed)
    model = build_model(config, splits)
    if config.sync_bn:
        model = context.convert_sync_batchnorm(model)
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    schedule = OSchedule(model, config.epochs, o_end=config.o_end)
    pin = device.type == "cuda"
    test_loader = make_loader(splits.test, max(batch_size, 256), shuffle=False, workers=config.workers,
                              sampler=distributed.eval_sampler(len(splits.test), context), pin_memory=pin)

    with _claim_run_dir(run_dir, resume, context) as writer:  # only now: a bad option leaves no directory
        return _train_epochs(config, recorded, context, writer, log, splits, model, optimizer, schedule,
                             test_loader, batch_size, resume)


@contextlib.contextmanager
def _claim_run_dir(run_dir: str, resume: bool, context: DistributedContext):
    """Rank 0's :class:`rundir.RunWriter` (None on the other ranks), held for the block; when
    rank 0 cannot take the directory every process stops."""
    writer, error = None, None
    if context.is_main:
        try:
            writer = rundir.RunWriter.claim(run_dir, resume=resume)
        except (OSError, ValueError) as e:
            error = e
    if context.sum([error is not None])[0]:
        raise error or FileExistsError(f"rank 0 could not take the run directory {run_dir!r} (see its error)")
    try:
        yield writer
    finally:
        if writer is not None:
            writer.close()


def _train_epochs(config: TrainConfig, recorded: TrainConfig, context: DistributedContext,
                  writer: rundir.RunWriter | None, log, splits: DatasetSplits, model: nn.Module,
                  optimizer: torch.optim.Optimizer, schedule: OSchedule, test_loader, batch_size: int,
                  resume: bool) -> TrainResult:
    run_dir, device, main = config.out, context.device, context.is_main
    pin = device.type == "cuda"

    def config_json(best: dict[str, Any]) -> dict[str, Any]:
        return ckpt.run_config(recorded, splits.input_shape, splits.num_classes, best, splits.input_spec)

    start_epoch, best, history = 0, {"test_acc": -1.0, "epoch": -1}, []
    best_state: dict[str, torch.Tensor] = {}
    scaler_state = None
    running_in = environment.current(device.type)
    checkpoint = rundir.read_checkpoint_if_any(run_dir, model, optimizer) if resume else None
    if checkpoint is not None:
        ckpt.load_state(model, checkpoint.model_state, os.path.join(run_dir, ckpt.CHECKPOINT_FILE))
        optimizer.load_state_dict(checkpoint.optimizer_state)
        progress_state = checkpoint.progress
        start_epoch, best, history = progress_state.epoch + 1, progress_state.best, list(progress_state.metrics)
        best_state, scaler_state = checkpoint.best_state, progress_state.grad_scaler
        done = (f"{run_dir} finished all {config.epochs} epochs already; nothing to train"
                if start_epoch >= config.epochs else f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")
        log(f"{done} (best test accuracy {best['test_acc']:.4f} at epoch {best['epoch'] + 1})")
        changed = environment.difference(progress_state.environment, running_in)
        if changed and start_epoch < config.epochs:
            log(changed)
    elif resume:
        log(f"{run_dir} has no finished epoch: training from the beginning")
    context.barrier()  # every process has read the checkpoint before rank 0 rewrites the files
    if writer is not None:
        if checkpoint is not None:
            writer.restore(checkpoint, config_json(best), log)
        else:
            writer.start(config_json({}))

    train_model = context.wrap(model)
    precision = Precision.from_config(config, train_model, device)
    if precision.scaler is not None and scaler_state:
        precision.scaler.load_state_dict(scaler_state)
    peak = peak_lr(config.epochs, config.lr, config.warmup_epochs, config.lr_schedule)
    if peak > 1.05 * config.lr:
        log(f"note: on {config.epochs} epochs the reference learning-rate schedule peaks at {peak:.4g}, above "
            f"--lr {config.lr:g}, as the reference code's does; --lr-schedule cosine does not overshoot")
    progress = config.progress and main
    epochs_bar = tqdm(range(start_epoch, config.epochs), desc=f"{config.model} on {config.dataset}",
                      disable=not progress or start_epoch >= config.epochs, initial=start_epoch, total=config.epochs)
    for epoch in epochs_bar:
        started = time.perf_counter()
        torch.manual_seed(context.rank_seed(epoch_seed(config.seed, epoch)))
        lr = lr_at(epoch, config.epochs, config.lr, config.warmup_epochs, config.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        o = schedule.step(epoch)
        sampler = distributed.train_sampler(splits.train, epoch_seed(config.seed, 0), epoch, context)
        train_loader = make_loader(splits.train, batch_size, shuffle=True, sampler=sampler,
                                   workers=config.workers, pin_memory=pin)
        stats = train_one_epoch(train_model, train_loader, optimizer, device, config.o_end, progress,
                                desc=f"epoch {epoch + 1}/{config.epochs}", context=context, precision=precision)
        context.sync_buffers(model)
        test_loss, test_acc = evaluate(model, test_loader, device, context)
        row = {"epoch": epoch, "lr": lr, "o": o, **stats, "test_loss": test_loss, "test_acc": test_acc,
               "time_s": time.perf_counter() - started, "world_size": context.world_size, **running_in}
        _check_finite(row, epoch, config)
        new_best = test_acc > best["test_acc"]
        if new_best:
            best = {"test_acc": test_acc, "epoch": epoch}
            if main:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        row["best_test_acc"] = best["test_acc"]
        row.update(run_indicators([*history, row]))  # the run's so far, as the reference reports them at its end
        history.append(row)
        if writer is not None:
            scaler = None if precision.scaler is None else precision.scaler.state_dict()
            progress_now = ckpt.Progress(epoch, best, list(history), recorded.to_json(), scaler, running_in)
            writer.save_epoch(model, optimizer, progress_now, best_state, config_json(best) if new_best else None)
        epochs_bar.set_postfix(loss=f"{stats['train_loss']:.3f}", test_acc=f"{test_acc:.4f}",
                               best=f"{best['test_acc']:.4f}")
    epochs_bar.close()
    indicators = run_indicators(history)
    log(f"best test accuracy {best['test_acc']:.4f} at epoch {best['epoch'] + 1}/{config.epochs}; mean estimating "
        f"error {indicators['mean_estimating_error']:.4g}, total gradient stability "
        f"{indicators['total_gradient_stability']:.4g}; model: {os.path.join(run_dir, ckpt.MODEL_FILE)}, metrics: "
        f"{os.path.join(run_dir, ckpt.METRICS_FILE)}")
    return TrainResult(run_dir, best["test_acc"], best["epoch"], config.epochs, history,
                       context.rank, context.world_size, indicators)
