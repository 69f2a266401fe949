"""The recipe as the reference code runs it: learning rates, recipes per (model, dataset),
CIFAR-10 normalization, the ImageNet crop, and loading a reference checkpoint's state dict."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnnkit import data, models
from bnnkit.train import TrainConfig, train
from bnnkit.train.config import MODEL_RECIPES, lr_at, recipe_for


def reference_main_loop_lrs(epochs: int, base_lr: float, warm_up: bool) -> list[float]:
    """The learning rate each epoch trains with when the reference code's main loop drives
    torch's CosineAnnealingLR: a real model, real SGD steps, its warm-up override, its
    scheduler construction (last_epoch = start_epoch - 4 * warm_up, start_epoch = -1) and
    its ``if epoch >= 4 * warm_up: lr_scheduler.step()`` after training."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "initial_lr": base_lr}], base_lr, momentum=0.9,
                                weight_decay=1e-4)
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs - warm_up * 4, eta_min=0,
                                                              last_epoch=-1 - warm_up * 4)
    used = []
    for epoch in range(-1 + 1, epochs):
        if warm_up and epoch < 5:
            for param_group in optimizer.param_groups:
                param_group["lr"] = base_lr * (epoch + 1) / 5
        used.append(optimizer.param_groups[0]["lr"])
        loss = model(torch.randn(4, 3)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if epoch >= 4 * warm_up:
            lr_scheduler.step()
    return used


@pytest.mark.parametrize("epochs", [6, 7, 8, 9, 12, 40, 101, 1000, 2000])
@pytest.mark.parametrize("warm_up", [True, False])
def test_reference_schedule_is_torchs_cosine_annealing_driven_the_reference_way(epochs, warm_up):
    for base_lr in (0.1, 0.05):
        ours = [lr_at(e, epochs, base_lr, 5 if warm_up else 0, "reference") for e in range(epochs)]
        assert ours == reference_main_loop_lrs(epochs, base_lr, warm_up)


def test_reference_schedule_values_and_its_quirk():
    warmup = [lr_at(e, 1000, 0.1, 5, "reference") for e in range(5)]
    assert warmup == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1], rel=1e-15)
    # after the warm-up: 0.1 (1 + cos(pi (e - 8) / T)) / (1 + cos(4 pi / T)), T = epochs - 4;
    # at 1000 epochs that is 0.05 (1 + cos(pi (e - 8) / 996)) to 4e-5
    for epochs in (12, 40, 1000):
        t = epochs - 4
        for e in range(5, epochs):
            expected = 0.1 * (1 + math.cos(math.pi * (e - 8) / t)) / (1 + math.cos(4 * math.pi / t))
            assert lr_at(e, epochs, 0.1, 5, "reference") == pytest.approx(expected, rel=1e-12)
    for e in range(5, 1000):
        assert lr_at(e, 1000, 0.1, 5, "reference") == pytest.approx(0.05 * (1 + math.cos(math.pi * (e - 8) / 996)),
                                                                     rel=5e-5)
    # the overshoot on short runs: the peak is at epoch 8
    assert max(lr_at(e, 12, 0.1, 5, "reference") for e in range(12)) == pytest.approx(0.2, rel=1e-12)
    assert max(lr_at(e, 40, 0.1, 5, "reference") for e in range(40)) == pytest.approx(0.1031, abs=5e-5)
    # without warm-up (ImageNet) it is the plain cosine, as is the clean schedule
    for e in range(250):
        assert lr_at(e, 250, 0.1, 0, "reference") == pytest.approx(lr_at(e, 250, 0.1, 0, "cosine"), rel=1e-12)
        assert lr_at(e, 250, 0.1, 0, "cosine") == pytest.approx(0.05 * (1 + math.cos(math.pi * e / 250)), rel=1e-15)


def test_cosine_schedule_anneals_to_zero_without_overshoot():
    lrs = [lr_at(e, 1000, 0.1, 5, "cosine") for e in range(1000)]
    assert max(lrs) == pytest.approx(0.1) and lrs[5] == pytest.approx(0.1)
    assert lrs[6:] == sorted(lrs[6:], reverse=True) and 0 < lrs[-1] < 1e-6


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="--warmup-epochs must be 0 or 5, got 3"):
        lr_at(0, 20, 0.1, 3, "reference")
    with pytest.raises(ValueError, match="needs more than 5 epochs"):
        lr_at(0, 5, 0.1, 5, "reference")
    with pytest.raises(ValueError, match="choose reference or cosine"):
        lr_at(0, 20, 0.1, 0, "step")
    with pytest.raises(ValueError, match=r"epoch must be in \[0, 20\)"):
        lr_at(20, 20, 0.1, 0, "reference")
    with pytest.raises(ValueError, match="--warmup-epochs must be 0 or 5"):
        TrainConfig(model="resnet20", dataset="synthetic", epochs=10, warmup_epochs=2, lr_schedule="reference").resolved()


def test_recipes_per_model_and_dataset():
    def resolved(model, dataset=None, **given):
        cfg = TrainConfig(model=model, dataset=dataset, **given).resolved()
        return cfg.epochs, cfg.batch_size, cfg.warmup_epochs, cfg.lr_schedule

    assert resolved("resnet20") == (1000, 256, 5, "reference")
    assert resolved("resnet20_bireal") == resolved("vgg_small") == (1000, 256, 5, "reference")
    assert resolved("resnet18_cifar") == (2000, 96, 5, "reference")
    assert resolved("resnet18") == resolved("resnet34") == (250, 750, 0, "reference")
    assert resolved("digits_mlp") == resolved("digits_cnn") == (40, 16, 0, "cosine")
    assert resolved("resnet18_cifar", "synthetic") == (3, 64, 0, "cosine")  # another dataset: its defaults
    for (model, dataset), recipe in MODEL_RECIPES.items():
        assert models.model_info(model).dataset == dataset and recipe_for(model, dataset) is recipe
    given = dict(epochs=7, batch_size=8, warmup_epochs=0, lr_schedule="cosine")
    assert resolved("resnet18_cifar", **given) == (7, 8, 0, "cosine")


def test_train_help_shows_the_recipes(capsys):
    from bnnkit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lr-schedule {reference,cosine}" in out
    assert "resnet18_cifar on cifar10: 2000 epochs, batch 96, 5-epoch warm-up, reference lr schedule" in out
    assert "resnet18, resnet34 on imagefolder: 250 epochs, batch 750, reference lr schedule" in out


def test_a_run_uses_the_schedule_it_is_given(tmp_path):
    from bnnkit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "digits_mlp", "--dataset", "synthetic", "--out", str(out), "--epochs", "7",
                 "--batch-size", "128", "--model-arg", "hidden=16", "--warmup-epochs", "5",
                 "--lr-schedule", "reference", "--no-progress"]) == 0
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == reference_main_loop_lrs(7, 0.1, True)
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["lr_schedule"] == "reference"


def test_indicators_of_the_run_are_reported_at_the_end(tmp_path):
    """config.json and the result carry the reference's end-of-run figures: the mean of the
    per-epoch estimating errors and the sum of the per-epoch gradient stabilities."""
    import json

    cfg = TrainConfig(model="digits_mlp", dataset="synthetic", out=str(tmp_path / "r"), epochs=3, batch_size=128,
                      model_kwargs={"hidden": 16}, progress=False)
    result = train(cfg, log=lambda *a: None)
    ee = [r["estimating_error"] for r in result.metrics]
    gs = [r["gradient_stability"] for r in result.metrics]
    assert result.indicators["mean_estimating_error"] == pytest.approx(sum(ee) / 3, rel=1e-12)
    assert result.indicators["total_gradient_stability"] == pytest.approx(sum(gs), rel=1e-12)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert {k: rows[-1][k] for k in result.indicators} == result.indicators  # the final metrics row


def test_cifar10_is_normalized_with_imagenet_statistics_and_imagenet_crops_scale_to_1_25(tmp_path):
    from PIL import Image

    cifar = data.dataset_input_spec("cifar10")
    assert cifar.mean == (0.485, 0.456, 0.406) and cifar.std == (0.229, 0.224, 0.225)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30)).save(tmp_path / split / cls / "x.png")
    splits = data.load_dataset("imagefolder", str(tmp_path))
    assert splits.train.transform.scale == (0.08, 1.25) and splits.train.transform.size == 224
    assert splits.input_spec.mean == (0.485, 0.456, 0.406) and splits.input_spec.resize == 256


# --- a checkpoint of the reference code --------------------------------------------------------

class RefBinarizeConv2d(nn.Conv2d):
    """The reference's BinarizeConv2d forward: torch.sign (sign(0) = 0), alpha = mean |w|."""

    def forward(self, x):
        bw = torch.sign(self.weight) * self.weight.abs().mean()
        return F.conv2d(torch.sign(x), bw, self.bias, self.stride, self.padding)


class RefBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = RefBinarizeConv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = RefBinarizeConv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if stride != 1 or in_planes != planes else None

    def forward(self, x):
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.bn2(F.relu(self.conv2(out)))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return out + shortcut


class RefResNet20(nn.Module):
    """The reference code's resnet20_1w1a module names and forward (CIFAR-10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.max_pool = nn.MaxPool2d(3, 1, 1)  # built, never used, as in the reference
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for stride in [1 if i == 0 else 2, 1, 1]:
                blocks.append(RefBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm1d(64)
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3]).flatten(1)
        return self.linear(self.bn2(out))


def _trained_like(model, seed):
    """Random weights and BatchNorm statistics of the magnitudes training produces."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(1234)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 2 + 0.1)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * (0.3 if t.dim() > 1 else 1.0))
    return model


def test_a_reference_state_dict_loads_and_evaluates_identically():
    reference = _trained_like(RefResNet20().double(), seed=3).eval()
    state = reference.state_dict()
    ours = models.create("resnet20").double().eval()
    ours.load_state_dict(state)  # strict: the same keys and shapes
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert torch.allclose(got, expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_exact_zeros_are_where_they_differ():
    """sign(0) = +1 in bnnkit, 0 in the reference: a channel of exact zeros reaching a binary
    conv (here the stem BatchNorm scaled to 0) changes the outputs."""
    reference = _trained_like(RefResNet20().double(), seed=3).eval()
    with torch.no_grad():
        reference.bn1.weight[0] = 0.0
        reference.bn1.bias[0] = 0.0
    ours = models.create("resnet20").double().eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.allclose(ours(x), reference(x), rtol=1e-6, atol=1e-6)
