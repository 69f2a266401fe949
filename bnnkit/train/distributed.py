"""Data-parallel training across processes with PyTorch's DistributedDataParallel.

``torchrun --nproc_per_node N -m bnnkit train ...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` in each; :func:`setup` reads them, joins the process group
(nccl for CUDA devices, gloo for CPU) and gives each process one device (``cuda:LOCAL_RANK``).
Without those variables (or with ``WORLD_SIZE=1``) training runs in one process, unchanged.

What the training loop relies on:

- ``--batch-size`` is the global batch: each process takes ``batch_size / world_size`` samples
  per step, so a run with N processes steps through the same global batches as a run with one
  (exactly when the training set size is a multiple of N; otherwise DistributedSampler repeats
  up to N - 1 samples per epoch so that every process gets as many).
- :func:`train_sampler` draws one permutation per (seed, epoch), the same on every process and
  the same as the single-process order; process r takes every N-th index from r.
- The test set is split without repetition (:func:`eval_sampler`); sums are all-reduced.
- Rank 0's BatchNorm running statistics are copied to every process before each evaluation
  (:meth:`DistributedContext.sync_buffers`): those are the ones checkpointed, DDP's own
  convention. ``--sync-bn`` instead normalizes with the statistics of the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

T = TypeVar("T")

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run (``world_size == 1``: a single process).

    ``device`` is this process's device; collectives run on it (nccl) or on the CPU (gloo).
    """

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files, logs and draws progress bars."""
        return self.rank == 0

    def local_batch_size(self, global_batch_size: int) -> int:
        """Samples per step on this process for a global batch of ``global_batch_size``."""
        if global_batch_size % self.world_size:
            lower = global_batch_size // self.world_size * self.world_size
            raise ValueError(f"--batch-size {global_batch_size} is the global batch, split evenly across "
                             f"{self.world_size} processes; it must be a multiple of {self.world_size} "
                             f"(e.g. {max(lower, self.world_size)} or {lower + self.world_size})")
        return global_batch_size // self.world_size

    def rank_seed(self, seed: int) -> int:
        """A seed for this process's random augmentations; rank 0 keeps ``seed`` unchanged."""
        return (seed + self.rank * 0x9E3779B97F4A7C15) % (2**63)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel (rank 0's parameters and buffers are broadcast
        to every process here); the model itself in a single process."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)

    def convert_sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """BatchNorm layers of ``model`` as SyncBatchNorm (same parameter and buffer names, so
        checkpoints load either way). In a single process there is nothing to synchronize and
        ``model`` is returned unchanged."""
        if not self.enabled:
            return model
        if self.device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm does not run on CPU; "
                             "train on GPUs or leave out --sync-bn")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of ``values`` over all processes (float64), the same on each."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.tolist()

    @torch.no_grad()
    def sync_buffers(self, model: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every process."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def in_turn(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 first, then on the first process of every other node, then on
        the rest, so that a download lands once per file system (shared or per node)."""
        if not self.enabled:
            return fn()
        turn = 0 if self.rank == 0 else 1 if self.local_rank == 0 else 2
        result = None
        for step in range(3):
            if step == turn:
                result = fn()
            self.barrier()
        return result

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def environment() -> tuple[int, int, int] | None:
    """``(rank, local_rank, world_size)`` set by torchrun, or None outside a multi-process launch."""
    present = [name for name in ENV_VARS if name in os.environ]
    if not present:
        return None
    if len(present) < len(ENV_VARS):
        missing = sorted(set(ENV_VARS) - set(present))
        raise ValueError(f"distributed environment incomplete: {', '.join(present)} set but {', '.join(missing)} "
                         "missing; launch with torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE")
    try:
        rank, local_rank, world_size = (int(os.environ[name]) for name in ENV_VARS)
    except ValueError:
        values = ", ".join(f"{name}={os.environ[name]!r}" for name in ENV_VARS)
        raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, got {values}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"inconsistent distributed environment: RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"WORLD_SIZE={world_size}")
    return (rank, local_rank, world_size) if world_size > 1 else None


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"distributed training runs on CUDA (nccl) or CPU (gloo), not {device.type!r}")
    if device.index is not None:
        raise ValueError(f"--device {device} names one GPU, but under torchrun each process takes "
                         "cuda:LOCAL_RANK; pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(f"process with LOCAL_RANK={local_rank} needs GPU {local_rank}, but this node sees {count}; "
                         f"use --nproc_per_node {count} or fewer")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def setup(device: torch.device) -> Iterator[DistributedContext]:
    """The :class:`DistributedContext` of this process, joining the process group for its life.

    ``device`` is the resolved ``--device``: under torchrun ``cuda`` becomes ``cuda:LOCAL_RANK``.
    A process group that the caller already initialized is used as it is and left open.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        if world_size == 1:
            yield DistributedContext(device)
            return
        rank = dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        yield DistributedContext(_rank_device(device, local_rank), rank, local_rank, world_size)
        return

    env = environment()
    if env is None:
        yield DistributedContext(device)
        return
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 asks for distributed training, but this PyTorch build has no "
                         "torch.distributed")
    rank, local_rank, world_size = env
    device = _rank_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    try:
        yield DistributedContext(device, rank, local_rank, world_size)
    finally:
        dist.destroy_process_group()


def train_sampler(dataset: Dataset, seed: int, epoch: int, context: DistributedContext) -> DistributedSampler:
    """This process's share of one shuffled epoch.

    The permutation is ``torch.randperm(len(dataset))`` from a generator seeded with
    ``seed + epoch``, the same on every process (one process takes it whole, so single-process
    runs use this sampler too); process r takes positions r, r + N, r + 2N, ... so that step s
    of all processes together covers positions ``[s * B, (s + 1) * B)`` of the permutation
    for a global batch B.
    """
    sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return sampler


def eval_sampler(size: int, context: DistributedContext) -> range | None:
    """Indices of a ``size``-sample evaluation set for this process: every sample exactly once
    over all processes (None, the whole set in order, for a single process)."""
    return range(context.rank, size, context.world_size) if context.enabled else None
