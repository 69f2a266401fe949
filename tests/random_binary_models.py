"""Random small models built from the blocks users write, for the pack property tests.

``random_model(seed)`` draws a model from: binary conv / linear (scale tensor / channel /
none, with or without bias, 1w1a or 1w32a), BatchNorm before or after the activation or
none, ReLU (module or function) / Hardtanh / PReLU, residual adds with an identity, binary
or float 1x1 downsample shortcut, two binary branches summed, concatenation, average / max
pooling, flatten, float and binary heads, odd channel counts and spatial sizes, stride 2;
then random BatchNorm statistics (negative scales included) and random weight magnitudes.
``random_input`` gives inputs with exact zeros.
"""

from __future__ import annotations

import dataclasses
import random

import torch
import torch.nn.functional as F
from torch import nn

from bnnkit.nn.layers import BinaryConv2d, BinaryLinear

ACTIVATIONS = ("none", "relu", "relu_fn", "hardtanh", "prelu")
BN_PLACES = ("none", "before", "after")


class Unit(nn.Module):
    """``core`` then BatchNorm / activation in the drawn order."""

    def __init__(self, core: nn.Module, post: list[tuple[str, nn.Module | None]]) -> None:
        super().__init__()
        self.core = core
        self.kinds = [kind for kind, _ in post]
        self.post = nn.ModuleList([m if m is not None else nn.Identity() for _, m in post])

    def forward(self, x):
        y = self.core(x)
        for kind, m in zip(self.kinds, self.post):
            y = torch.relu(y) if kind == "relu_fn" else m(y)
        return y


class Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module | None, shortcut_first: bool) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.shortcut_first = shortcut_first

    def forward(self, x):
        s = x if self.shortcut is None else self.shortcut(x)
        return s + self.body(x) if self.shortcut_first else self.body(x) + s


class TwoBranches(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return self.a(x) + self.b(x)


class Concat(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class FlattenMethod(nn.Module):
    def forward(self, x):
        return x.flatten(1)


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class Net(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


@dataclasses.dataclass
class RandomModel:
    seed: int
    model: nn.Module
    input_shape: tuple[int, ...]
    description: list[str]


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.log: list[str] = []

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def channels(self) -> int:
        return self.rng.choice([1, 3, 5, 6, 7, 9, 12, 33])

    def post(self, features: int, conv: bool) -> list[tuple[str, nn.Module | None]]:
        bn = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(features)
        act = self.rng.choice(ACTIVATIONS)
        modules = {"none": None, "relu": nn.ReLU(), "relu_fn": None, "hardtanh": nn.Hardtanh(),
                   "prelu": nn.PReLU(features if self.chance(0.5) else 1)}
        place = self.rng.choice(BN_PLACES)
        acts = [] if act == "none" else [(act, modules[act])]
        if place == "none":
            return acts
        return [("bn", bn), *acts] if place == "before" else [*acts, ("bn", bn)]

    def binary_kwargs(self) -> dict:
        return dict(scale=self.rng.choice(["tensor", "channel", "none"]), bias=self.chance(0.3),
                    input_estimator=None if self.chance(0.2) else "reste")

    def conv_unit(self, c: int, h: int, w: int, *, out: int | None = None, stride: int | None = None,
                  kernel: int | None = None, binary: bool = True):
        out = out or self.channels()
        k = kernel or self.rng.choice([1, 3, 3])
        s = stride or (2 if self.chance(0.25) and min(h, w) >= 3 else 1)
        p = k // 2 if k == 1 or self.chance(0.85) else 0
        if (h + 2 * p - k) // s + 1 < 1 or (w + 2 * p - k) // s + 1 < 1:
            k, p = 1, 0
        if binary:
            kw = self.binary_kwargs()
            core = BinaryConv2d(c, out, k, stride=s, padding=p, **kw)
            self.log.append(f"bconv{k}x{k}/s{s}/p{p} {c}->{out} {kw['scale']}{' a32' if kw['input_estimator'] is None else ''}")
        else:
            core = nn.Conv2d(c, out, k, stride=s, padding=p, bias=self.chance(0.5))
            self.log.append(f"conv{k}x{k}/s{s}/p{p} {c}->{out}")
        post = self.post(out, conv=True)
        self.log[-1] += "".join(f" {kind}" for kind, _ in post)
        return Unit(core, post), (out, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)

    def linear_unit(self, f: int, *, out: int | None = None, binary: bool = True):
        out = out or self.channels()
        if binary:
            kw = self.binary_kwargs()
            core = BinaryLinear(f, out, **kw)
            self.log.append(f"blinear {f}->{out} {kw['scale']}{' a32' if kw['input_estimator'] is None else ''}")
        else:
            core = nn.Linear(f, out)
            self.log.append(f"linear {f}->{out}")
        post = self.post(out, conv=False)
        self.log[-1] += "".join(f" {kind}" for kind, _ in post)
        return Unit(core, post), out

    def conv_block(self, shape):
        c, h, w = shape
        kind = self.rng.choice(["unit", "unit", "residual", "downsample", "downsample", "two", "concat", "pool",
                                "float"])
        mark = len(self.log)  # where a composite block's name goes once it is built
        if kind == "residual":
            body, new = self.conv_unit(c, h, w, out=c, stride=1, kernel=self.rng.choice([1, 3]))
            if new != shape:  # padding 0 shrank it
                return body, new
            self.log.insert(mark, "residual(identity)")
            return Residual(body, None, self.chance(0.5)), shape
        if kind == "downsample" and min(h, w) >= 3:
            binary = self.chance(0.5)
            out = self.channels()
            body, new = self.conv_unit(c, h, w, out=out, stride=2, kernel=3)
            down = (BinaryConv2d(c, out, 1, stride=2, bias=False, **{k: v for k, v in self.binary_kwargs().items()
                                                                     if k != "bias"})
                    if binary else nn.Conv2d(c, out, 1, stride=2, bias=False))
            shortcut = nn.Sequential(down, nn.BatchNorm2d(out))
            if new != (out, (h - 1) // 2 + 1, (w - 1) // 2 + 1):
                return body, new
            self.log.insert(mark, f"residual({'binary' if binary else 'float'} 1x1/s2 downsample)")
            return Residual(body, shortcut, self.chance(0.5)), new
        if kind in ("two", "concat"):
            out = self.channels()
            s = 2 if self.chance(0.3) and min(h, w) >= 3 else 1
            a, sa = self.conv_unit(c, h, w, out=out, stride=s, kernel=3)
            b, sb = self.conv_unit(c, h, w, out=out if kind == "two" else None, stride=s, kernel=1)
            if sa[1:] != sb[1:] or (kind == "two" and sa != sb):
                del self.log[mark + 1:]  # only a is used
                return a, sa
            self.log.insert(mark, "two binary branches summed" if kind == "two" else "concatenation")
            if kind == "two":
                return TwoBranches(a, b), sa
            return Concat(a, b), (sa[0] + sb[0], *sa[1:])
        if kind == "pool" and min(h, w) >= 2:
            pool = nn.MaxPool2d(2) if self.chance(0.5) else nn.AvgPool2d(2)
            self.log.append(type(pool).__name__)
            return pool, (c, h // 2, w // 2)
        return self.conv_unit(c, h, w, binary=kind != "float")

    def linear_block(self, f: int):
        if self.chance(0.3):
            self.log.append("residual(identity)")
            body, _ = self.linear_unit(f, out=f)  # a linear layer keeps the shape
            return Residual(body, None, self.chance(0.5)), f
        return self.linear_unit(f, binary=not self.chance(0.15))

    def build(self) -> tuple[nn.Module, tuple[int, ...]]:
        blocks: list[nn.Module] = []
        if self.chance(0.8):  # images
            shape = (self.rng.choice([1, 2, 3]), self.rng.choice([5, 6, 7, 9]), self.rng.choice([5, 7, 8]))
            input_shape = shape
            if self.chance(0.6):
                stem, shape = self.conv_unit(*shape, binary=False)
                blocks.append(stem)
            for _ in range(self.rng.randint(1, 4)):
                block, shape = self.conv_block(shape)
                blocks.append(block)
            if self.chance(0.4):
                blocks.append(GlobalAvgPool())
                self.log.append("global avg pool")
                features = shape[0]
            else:
                blocks.append(self.rng.choice([nn.Flatten(), FlattenMethod()]))
                self.log.append("flatten")
                features = shape[0] * shape[1] * shape[2]
        else:
            features = self.channels()
            input_shape = (features,)
        for _ in range(self.rng.randint(0, 2)):
            block, features = self.linear_block(features)
            blocks.append(block)
        head_binary = self.chance(0.4)
        head = BinaryLinear(features, self.rng.choice([3, 10]), input_estimator=None if self.chance(0.2) else "reste",
                            scale=self.rng.choice(["tensor", "channel", "none"])) if head_binary \
            else nn.Linear(features, self.rng.choice([3, 10]))
        self.log.append(f"{'binary' if head_binary else 'float'} head")
        blocks.append(head)
        return Net(blocks), input_shape


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (negative scales included), random
    weight magnitudes per layer, random PReLU slopes; eval mode."""
    g = torch.Generator().manual_seed(seed)

    def u(n, lo, hi):
        return torch.rand(n, generator=g) * (hi - lo) + lo

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * float(u(1, 0.1, 2)))
                m.running_var.copy_(u(c, 0.05, 3.0))
                m.weight.copy_(torch.randn(c, generator=g) * float(u(1, 0.2, 3)))
                m.bias.copy_(torch.randn(c, generator=g))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                magnitude = 10.0 ** float(u(1, -2.0, 1.0))
                m.weight.mul_(magnitude / m.weight.abs().mean().clamp_min(1e-12))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * magnitude)
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def random_model(seed: int) -> RandomModel:
    builder = _Builder(seed)
    torch.manual_seed(seed)
    model, input_shape = builder.build()
    return RandomModel(seed, randomize(model, seed), input_shape, builder.log)


def random_input(shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))
    x[0] = 0.0  # exact zeros reach the first binarization
    x[-1].view(-1)[::3] = 0.0
    return x
