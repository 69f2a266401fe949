"""Entry point of tests/test_distributed.py's training processes (under torchrun or alone).

Runs ``bnnkit.cli.main(argv)`` with two test-only additions:

- the model ``ddp_test_ln_mlp``: the digits MLP's layout with LayerNorm in place of BatchNorm.
  LayerNorm normalizes each sample on its own, so a data-parallel step computes exactly the
  gradient of the single-process step on the same global batch (BatchNorm would normalize
  each process's share with its own statistics); it is registered only in these processes,
  so the zoo seen by the other tests is unchanged;
- ``BNNKIT_TEST_DTYPE=float64`` trains in float64, so that summing in another order (per
  process, then across processes) cannot flip a binarized value near 0;
- ``BNNKIT_TEST_DUMP=DIR``: after every epoch, each process writes the state it evaluates
  (parameters and buffers) to ``DIR/rank{R}_epoch{E}.safetensors``;
- ``BNNKIT_TEST_STOP_AFTER=K``: the run is interrupted before epoch K's training steps.
"""

import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.artifacts import write_tensors
from bnnkit.cli import main
from bnnkit.models.registry import register_model
from bnnkit.nn.layers import BinaryLinear
from bnnkit.train import loop


class LayerNormMLP(nn.Module):
    """Flatten -> FP Linear(64, h) -> ReLU -> LN -> BinaryLinear(h, h) -> ReLU -> LN -> FP Linear(h, classes)."""

    def __init__(self, num_classes: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.fc0 = nn.Linear(64, hidden, bias=False)
        self.norm0 = nn.LayerNorm(hidden)
        self.fc1 = BinaryLinear(hidden, hidden, bias=False)
        self.norm1 = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm0(F.relu(self.fc0(x.flatten(1))))
        x = self.norm1(F.relu(self.fc1(x)))
        return self.classifier(x)


register_model("ddp_test_ln_mlp", (1, 8, 8), 10, "synthetic", "test-only LayerNorm MLP")(LayerNormMLP)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _instrument(dump_dir: str | None, stop_after: int | None) -> None:
    real_train, real_evaluate = loop.train_one_epoch, loop.evaluate
    epochs = {"trained": 0, "evaluated": 0}

    def train_one_epoch(*args, **kwargs):
        if stop_after is not None and epochs["trained"] == stop_after:
            if torch.distributed.is_initialized():
                torch.distributed.barrier()  # rank 0 has written the last checkpoint before anyone stops
            raise KeyboardInterrupt
        epochs["trained"] += 1
        return real_train(*args, **kwargs)

    def evaluate(model, *args, **kwargs):
        if dump_dir is not None:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            write_tensors(os.path.join(dump_dir, f"rank{_rank()}_epoch{epochs['evaluated']}.safetensors"), state)
        epochs["evaluated"] += 1
        return real_evaluate(model, *args, **kwargs)

    loop.train_one_epoch, loop.evaluate = train_one_epoch, evaluate


if __name__ == "__main__":
    if os.environ.get("BNNKIT_TEST_DTYPE") == "float64":
        torch.set_default_dtype(torch.float64)
    stop = os.environ.get("BNNKIT_TEST_STOP_AFTER")
    _instrument(os.environ.get("BNNKIT_TEST_DUMP"), int(stop) if stop else None)
    sys.exit(main(sys.argv[1:]))
