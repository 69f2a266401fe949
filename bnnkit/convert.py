"""Turn a float model into a binary one: :func:`binarize` swaps Conv2d/Linear layers in place."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

from torch import nn

from bnnkit.estimators import Estimator
from bnnkit.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

Exclude = Callable[[str, nn.Module], bool] | Iterable[str] | None


def _excluder(exclude: Exclude) -> Callable[[str, nn.Module], bool]:
    if exclude is None:
        return lambda name, module: False
    if callable(exclude):
        return exclude
    if isinstance(exclude, str):
        exclude = [exclude]
    patterns = list(exclude)
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _binary_copy(module: nn.Module, **binary_kwargs) -> nn.Module:
    weight = module.weight
    factory = {"device": weight.device, "dtype": weight.dtype}
    if isinstance(module, nn.Conv2d):
        new = BinaryConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, module.bias is not None,
                           module.padding_mode, **factory, **binary_kwargs)
    else:
        new = BinaryLinear(module.in_features, module.out_features, module.bias is not None, **factory,
                           **binary_kwargs)
    new.load_state_dict(module.state_dict())
    new.train(module.training)
    return new


def binarize(
    model: nn.Module,
    exclude: Exclude = None,
    *,
    keep_first: bool = True,
    keep_last: bool = True,
    weight_estimator: Estimator = "reste",
    input_estimator: Estimator | None = "reste",
    scale: str = "tensor",
    o: float = 1.0,
    t: float | None = None,
) -> nn.Module:
    """Replace ``model``'s ``nn.Conv2d`` / ``nn.Linear`` layers by binary ones, in place.

    Weights and biases are copied. By default the first Conv2d/Linear layer (the stem, in
    module order) and the last ``nn.Linear`` (the classifier) stay full precision, as in
    the BNN literature. ``exclude`` keeps more layers full precision: glob patterns over
    module names (``["*downsample*"]``) or a predicate ``(name, module) -> bool``.
    Only ``padding_mode="zeros"`` convolutions can be binarized; others raise. ``t=None``
    gives each estimator its default threshold (1.5 for ReSTE, 1 for the clipped STE).
    Returns ``model`` (for chaining).
    """
    skip = _excluder(exclude)
    candidates = [(n, m) for n, m in model.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, BinaryLayer)
                  and type(m) in (nn.Conv2d, nn.Linear)]
    unsupported = [(n, type(m).__name__) for n, m in model.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, BinaryLayer)
                   and type(m) not in (nn.Conv2d, nn.Linear) and not skip(n, m)]
    if unsupported:
        names = ", ".join(f"{n} ({t})" for n, t in unsupported)
        raise TypeError(f"binarize() replaces plain nn.Conv2d and nn.Linear layers only; subclasses found: {names}. "
                        "Exclude them or convert them yourself.")
    keep: set[str] = set()
    if keep_first and candidates:
        keep.add(candidates[0][0])
    linears = [n for n, m in candidates if isinstance(m, nn.Linear)]
    if keep_last and linears:
        keep.add(linears[-1])
    binary_kwargs = dict(weight_estimator=weight_estimator, input_estimator=input_estimator, scale=scale, o=o, t=t)
    for name, module in candidates:
        if name in keep or skip(name, module):
            continue
        if name == "":
            raise ValueError("binarize() needs a container model; got a bare layer (build BinaryConv2d/BinaryLinear directly)")
        _set_submodule(model, name, _binary_copy(module, **binary_kwargs))
    return model
