"""Checks of what a run directory's files say (run format 2), each field's type and range,
before anything is built from it: the run's ``config.json``, its training options and the
progress recorded in a checkpoint's header.

A run directory can come from anywhere (an export's ``trained/`` copy, a shared folder), so
a malformed or hostile field is an :class:`~bnnkit.artifacts.ArtifactError` naming it, never
a ``TypeError`` deep inside training, a finished run reported for an ``epoch`` of 10**12, or
an optimizer tensor of the wrong shape that fails only at the first step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bnnkit import schema
from bnnkit.errors import ArtifactError
from bnnkit.train import environment
from bnnkit.train.config import MAX_EPOCHS

MAX_CLASSES = 1_000_000
_TEXT = 4096


def _zoo_name(value: Any, where: str) -> str:
    from bnnkit.models import list_models

    return schema.string(value, where, tuple(list_models()))


def _optional_choice(choices):
    return schema.optional(lambda v, w: schema.string(v, w, tuple(choices)))


def _model_kwargs(value: Any, where: str) -> dict[str, Any]:
    """Model arguments as recorded; a bnnkit 0.1 estimator name is replaced by its meaning."""
    from bnnkit.train.config import saved_model_kwargs

    return saved_model_kwargs(schema.dict_of(schema.json_value, key=lambda k, w: schema.string(k, w, max_len=64),
                                             max_len=64)(value, where))


def _train_fields() -> dict[str, schema.Check]:
    from bnnkit.data import DATASETS
    from bnnkit.train.config import AMP_DTYPES, LR_SCHEDULES

    def count(lo: int, hi: int) -> schema.Check:
        return lambda v, w: schema.integer(v, w, lo, hi)

    text = lambda v, w: schema.string(v, w, max_len=_TEXT)  # noqa: E731
    number = schema.number
    return {
        "model": _zoo_name, "out": text, "dataset": _optional_choice(DATASETS),
        "data_dir": schema.optional(text), "download": schema.boolean, "model_kwargs": _model_kwargs,
        "epochs": schema.optional(count(1, MAX_EPOCHS)), "batch_size": schema.optional(count(1, 2**31 - 1)),
        "lr": number, "momentum": number, "weight_decay": number,
        "warmup_epochs": schema.optional(count(0, MAX_EPOCHS)), "lr_schedule": _optional_choice(LR_SCHEDULES),
        "o_end": number, "t": schema.optional(number), "seed": count(0, 2**63 - 1),
        "device": lambda v, w: schema.string(v, w, max_len=64),
        "workers": count(0, 1024), "progress": schema.boolean,
        "amp": _optional_choice([k for k in AMP_DTYPES if k]), "compile": schema.boolean, "sync_bn": schema.boolean,
        "threads": schema.optional(count(1, 4096)), "input_size": schema.optional(count(1, 4096)),
    }


def train_options(value: Any, where: str) -> dict[str, Any]:
    """Training options as :meth:`~bnnkit.train.TrainConfig.to_json` writes them: only fields of
    ``TrainConfig``, each of its type and in its range (a field this table does not know yet
    must be plain JSON); :meth:`TrainConfig.resolved` checks how they combine."""
    from bnnkit.train.config import TrainConfig

    if type(value) is not dict:
        raise schema.fail(where, "an object of training options", value)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        raise ArtifactError(f"{where} has unknown option(s) {', '.join(map(schema.show, unknown[:5]))}")
    fields = _train_fields()
    return {k: fields.get(k, schema.json_value)(v, f"{where}.{k}") for k, v in value.items()}


def _best(value: Any, where: str) -> dict[str, Any]:
    if value == {}:
        return {}
    return schema.record({"test_acc": lambda v, w: schema.number(v, w, 0, 1),
                          "epoch": lambda v, w: schema.integer(v, w, 0, MAX_EPOCHS - 1)})(value, where)


def _input_spec(value: Any, where: str):
    """The input spec as recorded (JSON), after checking it parses."""
    from bnnkit.inputs import spec_from_optional_json

    spec_from_optional_json(value, where)
    return value


_RUN_CONFIG_FIELDS = {
    "kind": lambda v, w: schema.string(v, w, ("bnnkit-run",)),
    "format_version": None,  # filled in by run_config (the run format's version)
    "bnnkit_version": lambda v, w: schema.string(v, w, max_len=64),
    "model": _zoo_name,
    "model_kwargs": _model_kwargs,
    "input_shape": schema.input_shape,
    "num_classes": lambda v, w: schema.integer(v, w, 1, MAX_CLASSES),
    "input_spec": _input_spec,
    "train": train_options,
    "best": _best,
}


def run_config(value: Any, where: str) -> dict[str, Any]:
    """A run's ``config.json``: every field this bnnkit writes, checked (the input spec must
    parse as an :class:`~bnnkit.inputs.InputSpec` whose shape is ``input_shape``); fields it
    does not know (written by a newer bnnkit) must be plain JSON and are ignored. Returns the
    fields as recorded."""
    from bnnkit.train.config import RUN_FORMAT_VERSION

    if type(value) is not dict:
        raise schema.fail(where, "a JSON object", value)
    if value.get("kind") != "bnnkit-run":
        raise ArtifactError(f"{where} is not a bnnkit training run config (kind {schema.show(value.get('kind'))}, "
                            "'bnnkit-run' expected)")
    if value.get("format_version") != RUN_FORMAT_VERSION:
        raise ArtifactError(f"{where}: run format version {schema.show(value.get('format_version'))}; this bnnkit "
                            f"reads {RUN_FORMAT_VERSION}")
    missing = [k for k in _RUN_CONFIG_FIELDS if k not in value]
    if missing:
        raise ArtifactError(f"{where} lacks the field(s) {', '.join(missing)}")
    out = {}
    for key, v in value.items():
        check = _RUN_CONFIG_FIELDS.get(key, schema.json_value)
        out[key] = v if check is None else check(v, f"{where}: {key}")
    spec = out["input_spec"]
    if spec is not None and tuple(spec["shape"]) != tuple(out["input_shape"]):
        raise ArtifactError(f"{where}: input_spec.shape {spec['shape']} differs from input_shape "
                            f"{list(out['input_shape'])}")
    out["input_shape"] = list(out["input_shape"])
    return out


def _grad_scaler(value: Any, where: str) -> dict[str, Any] | None:
    if value is None or value == {}:
        return value
    positive = lambda v, w: schema.number(v, w, 1e-45, 3.4e38)  # noqa: E731  (a float32 scale)
    return schema.record({"scale": positive, "growth_factor": positive, "backoff_factor": positive,
                          "growth_interval": lambda v, w: schema.integer(v, w, 1, 2**31 - 1),
                          "_growth_tracker": lambda v, w: schema.integer(v, w, 0, 2**31 - 1)})(value, where)


def _metric(value: Any, where: str) -> Any:
    """A metric: null, a bool, an integer, any float (NaN too: an indicator can be undefined for
    an epoch) or a short string."""
    if value is None or type(value) in (bool, float):
        return value
    if type(value) is int:
        return schema.integer(value, where)
    return schema.string(value, where, max_len=256)


def _metrics_row(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict or len(value) > 256:
        raise schema.fail(where, "an object of at most 256 metrics", value)
    return {schema.string(k, f"{where} key", max_len=64): _metric(v, f"{where}[{k!r}]") for k, v in value.items()}


def progress_fields(state: dict[str, Any], where: str) -> dict[str, Any]:
    """The progress in a checkpoint header (:class:`~bnnkit.train.checkpoint.Progress`'s
    fields), checked: ``epoch`` a finished epoch of the run's ``epochs``, ``best`` an epoch
    up to it with an accuracy in [0, 1], one metrics row per finished epoch (its ``epoch``
    the row's index), the training options, the gradient scaler's state."""
    train = train_options(state.get("train"), f"{where}: train")
    epochs = train.get("epochs")
    if type(epochs) is not int:
        raise ArtifactError(f"{where}: train.epochs must be the run's number of epochs, got {schema.show(epochs)}")
    epoch = schema.integer(state.get("epoch"), f"{where}: epoch", 0, epochs - 1)
    best = schema.record({"test_acc": lambda v, w: schema.number(v, w, 0, 1),
                          "epoch": lambda v, w: schema.integer(v, w, 0, epoch)})(state.get("best"), f"{where}: best")
    metrics = schema.list_of(_metrics_row, epoch + 1, epoch + 1)(state.get("metrics"), f"{where}: metrics")
    for i, row in enumerate(metrics):
        if row.get("epoch") != i:
            raise ArtifactError(f"{where}: metrics[{i}] is for epoch {schema.show(row.get('epoch'))}, not {i}")
    return {"epoch": epoch, "best": best, "metrics": metrics, "train": train,
            "grad_scaler": _grad_scaler(state.get("grad_scaler"), f"{where}: grad_scaler"),
            "environment": environment.check(state.get("environment"), f"{where}: environment")}


def expected_checkpoint_table(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
                              ) -> tuple[dict[str, dict[str, Any]], dict[int, torch.Tensor]]:
    """What a checkpoint of ``model`` may hold: ``model.*`` (and optionally ``best.*``) tensors
    exactly as the model's state dict, and the optimizer's per-parameter tensors (index ->
    parameter, which each ``optimizer.<index>.<key>`` tensor must match in shape and dtype, or
    be a 0-d tensor)."""
    from bnnkit.artifacts import tensor_table

    table = tensor_table(model.state_dict())
    params: dict[int, torch.Tensor] = {}
    if optimizer is not None:
        flat = [p for group in optimizer.param_groups for p in group["params"]]
        params = dict(enumerate(flat))
    return table, params


def check_checkpoint_table(on_disk: dict[str, dict[str, Any]], model_table: dict[str, dict[str, Any]],
                           params: dict[int, torch.Tensor] | None, where: str) -> None:
    """The checkpoint's tensors (from its header, before any is read) against what the run's
    model and optimizer hold (:func:`expected_checkpoint_table`)."""
    model = {k[len("model."):]: v for k, v in on_disk.items() if k.startswith("model.")}
    best = {k[len("best."):]: v for k, v in on_disk.items() if k.startswith("best.")}
    other = sorted(k for k in on_disk if not k.startswith(("model.", "best.", "optimizer.")))
    if other:
        raise ArtifactError(f"{where} holds tensors a checkpoint does not: {other[:5]}")
    for name, part in (("model", model), ("best", best)):
        if part and part != model_table:
            diff = sorted(k for k in set(part) | set(model_table) if part.get(k) != model_table.get(k))
            raise ArtifactError(f"{where}: its {name} tensors do not match the run's model at {diff[:5]}")
    if not model:
        raise ArtifactError(f"{where} holds no model tensors")
    if params is None:
        return
    for key, spec in on_disk.items():
        if not key.startswith("optimizer."):
            continue
        _, index, field = (key.split(".", 2) + ["", ""])[:3]
        if not (index.isascii() and index.isdigit() and int(index) in params and schema.IDENTIFIER.fullmatch(field)):
            raise ArtifactError(f"{where}: optimizer tensor {key!r} names no parameter of the model")
        param = params[int(index)]
        want = {"dtype": str(param.dtype).removeprefix("torch."), "shape": list(param.shape)}
        if spec != want and spec["shape"] != []:
            raise ArtifactError(f"{where}: optimizer tensor {key!r} is {spec}; its parameter is {want}")


def optimizer_state(plain: Any, optimizer: torch.optim.Optimizer | None, where: str) -> dict[str, Any]:
    """The optimizer's non-tensor state from a checkpoint header: ``param_groups`` shaped as the
    run's optimizer's (same groups, keys, parameter indices; values of the same types, finite)
    and per-parameter plain values."""
    plain = schema.record({"param_groups": lambda v, w: schema.list_of(lambda x, _: x, 1, 64)(v, w),
                           "state": lambda v, w: schema.dict_of(lambda x, _: x, max_len=1_000_000)(v, w)}
                          )(plain, f"{where}: optimizer")
    if optimizer is not None:
        live = optimizer.state_dict()["param_groups"]
        groups = plain["param_groups"]
        if len(groups) != len(live):
            raise ArtifactError(f"{where}: optimizer has {len(groups)} parameter group(s); the run's has {len(live)}")
        for i, (group, ref) in enumerate(zip(groups, live)):
            w = f"{where}: optimizer.param_groups[{i}]"
            if type(group) is not dict or set(group) != set(ref):
                raise ArtifactError(f"{w} must have the fields {', '.join(sorted(ref))}")
            if group["params"] != ref["params"]:
                raise ArtifactError(f"{w}.params must be {ref['params'][:8]}...")
            for key, value in ref.items():
                if key == "params":
                    continue
                got = group[key]
                if isinstance(value, bool) or value is None or isinstance(value, str):
                    if type(got) is not type(value) and not (value is None and got is None):
                        raise schema.fail(f"{w}.{key}", f"a {type(value).__name__}", got)
                elif isinstance(value, (int, float)):
                    schema.number(got, f"{w}.{key}")
                elif not isinstance(got, type(value)):
                    raise schema.fail(f"{w}.{key}", f"a {type(value).__name__}", got)
        count = sum(len(g["params"]) for g in live)
        for index, entries in plain["state"].items():
            if not (type(index) is str and index.isascii() and index.isdigit() and int(index) < count):
                raise ArtifactError(f"{where}: optimizer.state key {schema.show(index)} names no parameter")
            schema.dict_of(lambda v, w: schema.json_value(v, w, 0), max_len=16)(entries,
                                                                            f"{where}: optimizer.state[{index}]")
    return plain
