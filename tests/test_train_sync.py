"""The training loop reads nothing to the host per step: train_one_epoch and evaluate make the
same number of host reads for 2 steps as for 8 (one, at the end)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bnnkit import models
from bnnkit.data import make_loader, synthetic_tensors
from bnnkit.nn.layers import binary_layers
from bnnkit.train import loop


class HostReads(TorchDispatchMode):
    """Counts reads of tensor values into Python: ``aten._local_scalar_dense`` (``.item()``,
    ``float(t)``, ``bool(t)``, ...) and ``Tensor.tolist`` / ``Tensor.numpy``.

    ``host_scalars``: tensors that live on the host even when the model is on a GPU (the
    binary layers' o, which the estimator ops read in the backward); their reads are not
    counted, since on CPU every tensor is on the host. ``ops`` counts every op the mode sees."""

    def __init__(self, monkeypatch, host_scalars):
        super().__init__()
        self.reads = 0
        self.ops = 0
        self._host = {t.data_ptr() for t in host_scalars}
        for name in ("tolist", "numpy"):
            real = getattr(torch.Tensor, name)

            def counted(tensor, *args, _real=real, **kwargs):
                self.reads += 1
                return _real(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if func is torch.ops.aten._local_scalar_dense.default and args[0].data_ptr() not in self._host:
            self.reads += 1
        return func(*args, **(kwargs or {}))


def setup(steps: int, batch: int = 16):
    torch.manual_seed(0)
    model = models.create("digits_mlp", hidden=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = synthetic_tensors(steps * batch, (1, 8, 8), 10, seed=1)
    # the batches, drawn beforehand: the DataLoader reads its shuffling seeds on the host, which
    # it does wherever the model runs
    batches = list(make_loader(torch.utils.data.TensorDataset(x, y), batch, shuffle=True))
    return model, optimizer, batches


def count(monkeypatch, what: str, steps: int, progress: bool = False) -> HostReads:
    model, optimizer, loader = setup(steps)
    with monkeypatch.context() as m:
        mode = HostReads(m, [layer._o for _, layer in binary_layers(model)])
        with mode:
            if what == "train":
                loop.train_one_epoch(model, loader, optimizer, torch.device("cpu"), 3.0, progress, desc="")
            else:
                loop.evaluate(model, loader, torch.device("cpu"))
    return mode


@pytest.mark.parametrize("what", ["train", "evaluate"])
def test_host_reads_do_not_grow_with_the_number_of_steps(monkeypatch, what):
    few, many = count(monkeypatch, what, 2), count(monkeypatch, what, 8)
    assert few.reads == many.reads == 1
    assert many.ops > 3 * few.ops  # the mode saw every step


def test_the_progress_bar_reads_the_loss_every_n_steps(monkeypatch):
    monkeypatch.setattr(loop, "PROGRESS_EVERY", 3)
    assert count(monkeypatch, "train", 8, progress=True).reads == 1 + 8 // 3
