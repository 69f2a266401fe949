"""Shared set-up of the export tests: models with random BatchNorm statistics whose inputs to
binarization contain exact zeros, and every zoo model exported once per session."""

import dataclasses
import pathlib

import pytest
import torch
from torch import nn

from bnnkit import models

# Small inputs keep the exporter and the tests fast; every zoo model accepts them.
SMALL_INPUT = {"digits_mlp": (1, 8, 8), "digits_cnn": (1, 8, 8), "resnet20": (3, 32, 32),
               "resnet20_bireal": (3, 32, 32), "resnet18_cifar": (3, 32, 32), "vgg_small": (3, 32, 32),
               "resnet18": (3, 32, 32), "resnet34": (3, 32, 32)}


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, except that every fourth channel maps
    0 to exactly 0 (mean 0, bias 0): after a ReLU those channels feed exact zeros to the next
    binarization, where bnnkit gives +1 and ONNX Sign would give 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_mean[::4] = 0
                m.bias[::4] = 0
    return model.eval()


def inputs_with_zeros(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    x[:, :, : max(1, shape[1] // 4)] = 0  # exact zeros in the top rows of every image
    x[0] = 0  # and one all-zero sample
    return x


@dataclasses.dataclass
class Exported:
    name: str
    model: nn.Module
    path: str
    info: object


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory):
    """Every zoo model with random BatchNorm statistics, exported packed once per graph form
    (``ops="integer"``, the default, or ``"float"``), lazily."""
    from bnnkit.export import to_onnx

    directory = tmp_path_factory.mktemp("zoo_onnx")
    cache: dict[tuple[str, str], Exported] = {}

    def get(name: str, ops: str = "integer") -> Exported:
        if (name, ops) not in cache:
            torch.manual_seed(0)
            model = randomize_batchnorm(models.create(name), seed=1)
            path = str(directory / f"{name}-{ops}.onnx")
            info = to_onnx(model, path, inputs_with_zeros(2, SMALL_INPUT[name], seed=2), ops=ops)
            cache[name, ops] = Exported(name, model, path, info)
        return cache[name, ops]

    return get


@pytest.fixture(scope="session")
def digits_artifact(tmp_path_factory):
    """An export directory of a briefly trained digits_mlp (bnnkit export --onnx): the packed
    artifact, trained/ (the run's best model) and model.onnx."""
    from bnnkit.export import export_run
    from bnnkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("digits_artifact")
    run_dir = str(root / "run")
    train(TrainConfig(model="digits_mlp", dataset="digits", out=run_dir, epochs=3, batch_size=16,
                      model_kwargs={"hidden": 64}, progress=False), log=lambda *a: None)
    return pathlib.Path(export_run(run_dir, root / "artifact", onnx=True).directory)
