"""The model zoo registry: names -> constructors, with the input each model expects."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A zoo entry: constructor, input shape ``(C, H, W)`` without batch, class count, dataset."""

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    description: str


_MODELS: dict[str, ModelInfo] = {}


def register_model(name: str, input_shape: tuple[int, ...], num_classes: int, dataset: str, description: str):
    """Decorator adding a constructor to the zoo under ``name``."""

    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelInfo(name, builder, tuple(input_shape), num_classes, dataset, description)
        return builder

    return add


def list_models() -> list[str]:
    """Names of the zoo's models."""
    return sorted(_MODELS)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; unknown names raise, listing the known ones."""
    try:
        return _MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}") from None


def create(name: str, **kwargs) -> nn.Module:
    """Build zoo model ``name``; ``kwargs`` go to its constructor (e.g. ``num_classes``,
    ``a32=True`` for real-valued activations, ``estimator``, ``scale``).

    The model remembers how it was built: ``model.zoo_architecture`` is ``{"name": name,
    "kwargs": kwargs}`` (see :func:`zoo_architecture`), so ``bnnkit.export.pack(model)`` can
    record the zoo model and its input shape without being told."""
    info = model_info(name)
    try:
        model = info.builder(**kwargs)
    except TypeError as e:
        import inspect

        accepted = ", ".join(p for p in inspect.signature(info.builder).parameters if p not in ("args", "kwargs"))
        raise ValueError(f"bad arguments for model {name!r}: {e}; it accepts: {accepted}") from None
    model.zoo_architecture = {"name": name, "kwargs": dict(kwargs)}
    return model


def zoo_architecture(model: nn.Module) -> dict | None:
    """``{"name", "kwargs"}`` that :func:`create` recorded on ``model`` (a copy), or ``None`` for
    a model not built by it."""
    arch = getattr(model, "zoo_architecture", None)
    if not isinstance(arch, dict) or not isinstance(arch.get("name"), str) or arch["name"] not in _MODELS:
        return None
    return {"name": arch["name"], "kwargs": dict(arch.get("kwargs") or {})}
