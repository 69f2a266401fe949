"""The estimator study: the paper's claim in miniature, on the digits models.

Every model of :attr:`StudySpec.models` is trained with every *arm* (an estimator, and for
ReSTE each o_end of :attr:`StudySpec.o_ends`) from seeds ``0 .. seeds-1``, with the paper's
recipe scaled to digits (:class:`StudySpec`). Each run is an ordinary ``bnnkit train`` run
(:func:`bnnkit.train.train`); the study keeps its per-epoch metrics.

The STE baseline is the paper's: ``clipped_ste`` at t = 1 (its reference code's
``Binary.backward`` passes the gradient where ``|x| <= 1``); ``identity_ste`` (never clipped)
and Bi-Real Net's ``approx_sign`` are the other baselines.

The record (``estimators.json``, :data:`STUDY_FORMAT` version :data:`STUDY_VERSION`)::

    {"format": "bnnkit-study-estimators", "version": 2,
     "device": ..., "torch": ..., "commit": ..., "date": ..., ...,   # as benchmark rows
     "jobs": 2, "threads_per_job": 1, "wall_s": 812.4, "resumed_runs": 0,
     "spec": {...StudySpec...},
     "runs": [{"model": "digits_mlp", "estimator": "reste", "o_end": 3.0, "t": 1.5, "seed": 0,
               "best_test_acc": ..., "best_epoch": ..., "final_test_acc": ...,
               "mean_estimating_error": ..., "total_gradient_stability": ..., "time_s": ...,
               "epochs": {"test_acc": [...], "estimating_error": [...], ...}}, ...]}

``epochs`` holds one list per field of :data:`EPOCH_FIELDS`, one value per epoch (accuracies
exact, the rest to 6 significant digits). Estimators without an o (clipped_ste,
identity_ste, approx_sign) record ``o_end`` = :attr:`StudySpec.indicator_o_end`: the o of the
reference code's estimating-error formula, which it applies whatever the estimator. ``t`` is
the clipping threshold the run used (``null`` for estimators that do not clip).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from bnnkit.choices import ESTIMATORS
from bnnkit.train.config import TrainConfig, check_lr_schedule

# The command line builds its parser from StudySpec: torch and the rest load where used.

STUDY_FORMAT = "bnnkit-study-estimators"
STUDY_VERSION = 2  # 2: the paper's STE (clipped_ste at t = 1), identity_ste, "t" per run
RECORD_FILE = "estimators.json"
EPOCH_FIELDS = ("lr", "o", "train_loss", "train_acc", "test_loss", "test_acc", "estimating_error",
                "gradient_stability")
EXACT_FIELDS = ("train_acc", "test_acc")  # recorded in full; the other per-epoch values to 6 significant digits
RUN_FIELDS = ("model", "estimator", "o_end", "t", "seed", "best_test_acc", "best_epoch", "final_test_acc",
              "mean_estimating_error", "total_gradient_stability", "time_s", "epochs")


@dataclasses.dataclass(frozen=True)
class Arm:
    """One estimator configuration of the study: the estimator, ReSTE's final o (the
    estimating error's o for the others) and the clipping threshold (``None``: no clipping)."""

    estimator: str
    o_end: float
    t: float | None

    @property
    def label(self) -> str:
        if self.estimator == "reste":
            return f"reste o_end={self.o_end:g}"
        return self.estimator if self.t is None else f"{self.estimator} t={self.t:g}"

    @property
    def slug(self) -> str:
        """The label as a file name part."""
        return self.label.replace(" o_end=", "-o").replace(" t=", "-t")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """What the study trains, and how: the paper's recipe scaled to digits.

    SGD (lr 0.1, momentum 0.9, weight decay 1e-4 on all parameters), the reference code's
    learning rates with its 5-epoch warm-up (the CIFAR-10 recipe), ReSTE's cosine o schedule
    from 1 to o_end, t = 1.5; 30 epochs of batch 32 instead of 1000 of 256 (1,347 training
    digits: 1,290 steps). The clipped STE clips at ``clipped_ste_t`` = 1, the paper's STE.
    ``baseline`` is the arm the report compares every other arm with, seed by seed.
    """

    models: tuple[str, ...] = ("digits_mlp", "digits_cnn")
    estimators: tuple[str, ...] = ("clipped_ste", "identity_ste", "approx_sign", "reste")
    o_ends: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0)
    seeds: int = 5
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    lr_schedule: str = "reference"
    t: float = 1.5
    clipped_ste_t: float = 1.0
    indicator_o_end: float = 3.0
    baseline: str = "clipped_ste"

    def check(self) -> StudySpec:
        """Raise ``ValueError`` naming the first bad field; returns ``self``."""
        from bnnkit.estimators import check_o
        from bnnkit.kernels.sign_grad import RESTE_M
        from bnnkit.models import model_info

        for model in self.models:
            if model_info(model).dataset != "digits":
                raise ValueError(f"the estimator study trains on the digits set; model {model!r} is a "
                                 f"{model_info(model).dataset} model (use digits_mlp or digits_cnn)")
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct and at least one, got {list(self.models)}")
        unknown = [e for e in self.estimators if e not in ESTIMATORS]
        if unknown or not self.estimators or len(set(self.estimators)) != len(self.estimators):
            raise ValueError(f"estimators must be distinct names among {', '.join(ESTIMATORS)}, "
                             f"got {list(self.estimators)}")
        if "reste" in self.estimators and not self.o_ends:
            raise ValueError("reste needs at least one o_end (--o-ends)")
        if not (math.isfinite(self.t) and self.t > RESTE_M and math.isfinite(self.clipped_ste_t)
                and self.clipped_ste_t > 0):
            raise ValueError(f"ReSTE's t must be > {RESTE_M} and the clipped STE's > 0, got {self.t}, "
                             f"{self.clipped_ste_t}")
        for o in (*self.o_ends, self.indicator_o_end):
            check_o(o)
        if self.seeds < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"seeds, epochs and batch size must be >= 1, got {self.seeds}, {self.epochs}, "
                             f"{self.batch_size}")
        check_lr_schedule(self.lr_schedule, self.epochs, self.warmup_epochs)
        return self

    def arms(self) -> list[Arm]:
        arms = []
        for estimator in self.estimators:
            if estimator == "reste":
                arms += [Arm("reste", float(o), float(self.t)) for o in self.o_ends]
            else:
                t = float(self.clipped_ste_t) if estimator == "clipped_ste" else None
                arms.append(Arm(estimator, float(self.indicator_o_end), t))
        return arms

    def baseline_arm(self) -> Arm | None:
        """The arm of :attr:`baseline` (the first, for ReSTE), if the study trains it."""
        return next((a for a in self.arms() if a.estimator == self.baseline), None)

    def train_config(self, model: str, arm: Arm, seed: int, out: str, device: str = "cpu") -> TrainConfig:
        return TrainConfig(model=model, dataset="digits", out=out, model_kwargs={"estimator": arm.estimator},
                           epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs,
                           lr_schedule=self.lr_schedule, o_end=arm.o_end, t=arm.t, seed=seed, device=device,
                           progress=False)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StudySpec:
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(obj, dict) or set(obj) - names:
            raise ValueError(f"a study spec has the fields {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in obj.items()})


def run_arm(run: dict[str, Any]) -> Arm:
    """The arm a recorded run belongs to."""
    return Arm(run["estimator"], run["o_end"], run["t"])


def runs_of(record: dict[str, Any], model: str, arm: Arm) -> list[dict[str, Any]]:
    """The recorded runs of ``model`` with ``arm``, in seed order."""
    return sorted((r for r in record["runs"] if r["model"] == model and run_arm(r) == arm), key=lambda r: r["seed"])


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}") if math.isfinite(value) else value


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Runs are single-threaded wherever they run (in this process or a worker), so a record
    does not depend on how many jobs made it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_one(config: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Train one run (a :class:`TrainConfig` as JSON; ``resume``: continue the run in its
    directory, or read it back when it is finished) and return its record entry. ``time_s``
    is the run's training time, the sum of its epochs'."""
    from bnnkit.train.loop import train

    cfg = TrainConfig.from_json(config)
    with _one_thread():
        result = train(cfg, resume=resume, log=lambda *a, **k: None)
    rows = result.metrics
    return {
        "model": cfg.model, "estimator": cfg.model_kwargs["estimator"], "o_end": cfg.o_end, "t": cfg.t,
        "seed": cfg.seed,
        "best_test_acc": result.best_test_acc, "best_epoch": result.best_epoch,
        "final_test_acc": rows[-1]["test_acc"],
        **{k: _significant(v) for k, v in result.indicators.items()},
        "time_s": round(sum(r["time_s"] for r in rows), 2),
        "epochs": {f: [float(r[f]) if f in EXACT_FIELDS else _significant(float(r[f])) for r in rows]
                   for f in EPOCH_FIELDS},
    }


def _run_metadata(device: str) -> dict[str, Any]:
    from bnnkit.benchmarks.environment import run_metadata
    from bnnkit.train.loop import resolve_device

    meta = run_metadata(resolve_device(device), quick=False)
    for key in ("quick", "run_id", "cpu_threads"):
        meta.pop(key, None)
    return meta


def run_study(spec: StudySpec, *, jobs: int = 1, device: str = "cpu", runs_dir: str | None = None,
              resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every (model, arm, seed) of ``spec`` and return the record (see the module
    docstring). ``jobs`` > 1 trains that many runs at once in worker processes; every run is
    single-threaded either way. Run directories go to ``runs_dir`` (kept) or a temporary
    directory (removed). ``resume=True`` continues an interrupted study from ``runs_dir``:
    its finished runs are read back, its interrupted ones resumed exactly (the record counts
    them in ``resumed_runs``)."""
    from bnnkit.train.rundir import holds_run

    spec.check()
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if resume and runs_dir is None:
        raise ValueError("resuming a study needs the directory of its runs")
    meta = _run_metadata(device)
    # seed by seed, so that an interrupted study holds whole seeds (it can be resumed, or recorded
    # with --seeds set to those it finished); the record lists the runs model by model
    tasks = [(model, arm, seed) for seed in range(spec.seeds) for model in spec.models for arm in spec.arms()]
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = runs_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bnnkit-study-"))
        configs = [spec.train_config(model, arm, seed,
                                     os.path.join(root, f"{model}-{arm.slug}-seed{seed}"),
                                     device).to_json()
                   for model, arm, seed in tasks]
        runs: list[dict[str, Any] | None] = [None] * len(tasks)
        continued = [resume and holds_run(config["out"]) for config in configs]

        def done(i: int, run: dict[str, Any]) -> None:
            runs[i] = run
            finished = sum(r is not None for r in runs)
            log(f"[{finished}/{len(tasks)}] {run['model']} {tasks[i][1].label} seed {run['seed']}: best "
                f"{run['best_test_acc']:.4f}, final {run['final_test_acc']:.4f} ({run['time_s']:.1f} s)")

        if jobs == 1:
            for i, config in enumerate(configs):
                done(i, run_one(config, continued[i]))
        else:
            context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
            with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
                futures = {pool.submit(run_one, config, continued[i]): i for i, config in enumerate(configs)}
                for future in concurrent.futures.as_completed(futures):
                    done(futures[future], future.result())
    order = {(model, arm, seed): (spec.models.index(model), spec.arms().index(arm), seed)
             for model, arm, seed in tasks}
    runs = [run for _, run in sorted(zip(tasks, runs), key=lambda pair: order[pair[0]])]
    return {"format": STUDY_FORMAT, "version": STUDY_VERSION, **meta, "jobs": jobs, "threads_per_job": 1,
            "wall_s": round(time.perf_counter() - started, 1), "resumed_runs": sum(continued),
            "spec": spec.to_json(), "runs": runs}


def write_record(path: str, record: dict[str, Any]) -> None:
    """Write ``record`` atomically: indented, one line per run."""
    from bnnkit.artifacts import atomic_path

    header = {k: v for k, v in record.items() if k != "runs"}
    runs = ",\n".join("    " + json.dumps(r) for r in record["runs"])
    text = json.dumps(header, indent=2)[:-2] + ',\n  "runs": [\n' + runs + "\n  ]\n}\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def read_record(path: str) -> dict[str, Any]:
    """A study record, checked: every run has its fields and one value per epoch in each list."""
    from bnnkit.artifacts import ArtifactError, read_versioned_json

    doc = read_versioned_json(path, "estimator study record", fmt=STUDY_FORMAT, version=STUDY_VERSION)
    try:
        spec = StudySpec.from_json(doc["spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"study record {path!r} has no valid spec: {e}") from None
    runs = doc.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ArtifactError(f"study record {path!r} has no runs")
    for i, run in enumerate(runs):
        missing = [k for k in RUN_FIELDS if not isinstance(run, dict) or k not in run]
        if missing:
            raise ArtifactError(f"study record {path!r}: run {i} lacks {missing}")
        lengths = {len(run["epochs"].get(f, [])) for f in EPOCH_FIELDS}
        if lengths != {spec.epochs}:
            raise ArtifactError(f"study record {path!r}: run {i} does not hold {spec.epochs} values of each of "
                                f"{', '.join(EPOCH_FIELDS)}")
    return doc
