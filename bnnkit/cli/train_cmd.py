"""``bnnkit train``: train a zoo model with the ReSTE recipe."""

from __future__ import annotations

import argparse
import json

from bnnkit.choices import DATASETS, ESTIMATORS, MODEL_CHOICES, MODELS, SCALE_MODES
from bnnkit.cli import COMMANDS
from bnnkit.cli.values import add_threads_argument, positive_int
from bnnkit.train.config import DATASET_DEFAULTS, LR_SCHEDULES, MODEL_RECIPES, TrainConfig


def _defaults_text() -> str:
    groups: dict[tuple[str, object], list[str]] = {}
    for (model, dataset), recipe in MODEL_RECIPES.items():
        groups.setdefault((dataset, recipe), []).append(model)
    models = "; ".join(f"{', '.join(names)} on {dataset}: {recipe.describe()}"
                       for (dataset, recipe), names in groups.items())
    datasets = "; ".join(f"{name}: {r.describe()}" for name, r in DATASET_DEFAULTS.items())
    return f"Recipes (the paper's, as its reference code trains them; bnnkit's for digits): {models}. Any other " \
           f"model on a dataset: {datasets}"


def _model_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key}: value nested too deeply") from None


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help=COMMANDS["train"],
        description="Train a zoo model with the ReSTE recipe of the paper (SGD with momentum, cosine learning "
                    "rate as the reference code sets it or a clean warm-up + cosine, cosine o schedule). Writes "
                    "DIR/metrics.jsonl, DIR/model.safetensors (best test accuracy), DIR/config.json, "
                    "DIR/checkpoint.safetensors for --resume and DIR/run-manifest.json (their sha256), each file "
                    "replaced in one rename: a run killed at any instant resumes exactly. One trainer at a time holds "
                    f"DIR. {_defaults_text()}. "
                    "Under torchrun (torchrun --nproc_per_node N -m bnnkit train ...) every process trains "
                    "data-parallel with DistributedDataParallel and rank 0 writes the run.",
    )
    p.add_argument("--model", default=None, choices=MODEL_CHOICES, metavar="NAME",
                   help=f"zoo model ({', '.join(MODELS)}); default digits_mlp")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="dataset; default: the model's own (digits for digits_*, cifar10 for the CIFAR models, "
                        "imagefolder for resnet18/34)")
    p.add_argument("--data-dir", default=None, metavar="D", help="directory of cifar10 / imagefolder data")
    p.add_argument("--download", action="store_true", default=None, help="download CIFAR-10 into --data-dir")
    p.add_argument("--out", required=True, metavar="DIR", help="run directory to write")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="S",
                   help="image height and width for imagefolder and synthetic (default: the model's: 224 for "
                        "resnet18/34, 32 for the CIFAR models); imagefolder's crops follow it: random resized crop "
                        "S for training, resize round(S*256/224) + center crop S for testing")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (default: per recipe)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch size (default: per recipe); under torchrun the global batch, split "
                        "evenly across the processes (so it must be a multiple of their number)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of SGD, in (0, 10] (default 0.1)")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum, in [0, 1) (default 0.9)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="weight decay on all parameters, in [0, 1) (default 1e-4)")
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="linear warm-up epochs before cosine annealing (default: per recipe, 5 for cifar10, else 0; "
                        "the reference schedule takes 0 or 5)")
    p.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help="reference: the learning rates the reference code sets (its 5-epoch warm-up, then torch's "
                        "CosineAnnealingLR(T_max=epochs-4) created with last_epoch=-5 and stepped from epoch 4: the "
                        "lr rises above --lr for 3 epochs after the warm-up, e.g. to 2x --lr on a 12-epoch run); "
                        "cosine: linear warm-up, then cosine from --lr to 0 (default: per recipe, reference for "
                        "cifar10 and imagefolder, cosine for digits and synthetic)")
    p.add_argument("--o-end", type=float, default=None,
                   help="final o of ReSTE's cosine o schedule, from 1 at epoch 0 (default 3)")
    p.add_argument("--t", type=float, default=None,
                   help="clipping threshold of the estimator: gradients pass where |x| <= t (default: 1.5 for reste, "
                        "> 0.1; 1 for clipped_ste, the paper's STE)")
    p.add_argument("--estimator", default=None, choices=ESTIMATORS,
                   help="straight-through estimator of weights and activations: reste (default), clipped_ste "
                        "(gradient 1 where |x| <= t: the STE of the ReSTE paper), identity_ste (gradient 1 "
                        "everywhere), approx_sign (Bi-Real Net's 2 - 2|x| inside |x| <= 1)")
    p.add_argument("--scale", default=None, choices=SCALE_MODES,
                   help="weight scale: mean |w| per tensor (reference), per channel, or none (default tensor)")
    p.add_argument("--a32", action="store_true", default=None,
                   help="keep activations real-valued (1-bit weights, 32-bit activations)")
    p.add_argument("--model-arg", action="append", type=_model_arg, default=None, metavar="KEY=VALUE",
                   help="extra model constructor argument, e.g. hidden=256 (repeatable; VALUE parsed as JSON)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--device", default=None, help="auto (CUDA when available), cpu, cuda or cuda:N (default auto)")
    add_threads_argument(p, "; every metrics row records the count, and a --resume with another count says so "
                            "(the run then continues exactly only at the same count)")
    p.add_argument("--workers", type=int, default=None, help="data loader worker processes (default 0)")
    p.add_argument("--amp", nargs="?", const="bf16", default=None, choices=["bf16", "fp16"],
                   help="mixed precision: forward and loss under torch.autocast in bf16 (the default of a bare "
                        "--amp) or fp16 (with a gradient scaler); meant for GPUs, slow on CPU")
    p.add_argument("--compile", action="store_true", default=None,
                   help="train through torch.compile(model) (compiles once; the o schedule does not recompile)")
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun on several GPUs: BatchNorm statistics over the global batch "
                        "(SyncBatchNorm) instead of each GPU's share; needs CUDA; no effect in one process "
                        "(default off; may change on --resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last finished epoch with the options it was started "
                        "with (those given must agree; --epochs cannot change); a run killed before its first "
                        "finished epoch starts from the beginning")
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from the options given explicitly on the command line over ``base``."""
    cfg = base.to_json() if base is not None else TrainConfig(out=args.out).to_json()
    cfg["out"] = args.out
    names = {"model": "model", "dataset": "dataset", "data_dir": "data_dir", "download": "download",
             "input_size": "input_size",
             "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
             "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "lr_schedule": "lr_schedule",
             "o_end": "o_end", "t": "t",
             "seed": "seed", "device": "device", "threads": "threads", "workers": "workers", "amp": "amp",
             "compile": "compile",
             "sync_bn": "sync_bn"}
    for arg, field in names.items():
        value = getattr(args, arg)
        if value is not None:
            cfg[field] = value
    model_kwargs = dict(cfg["model_kwargs"])
    for key, field in (("estimator", "estimator"), ("scale", "scale"), ("a32", "a32")):
        if getattr(args, key) is not None:
            model_kwargs[field] = getattr(args, key)
    for key, value in args.model_arg or []:
        model_kwargs[key] = value
    cfg["model_kwargs"] = model_kwargs
    cfg["progress"] = not args.no_progress
    return TrainConfig.from_json(cfg)


def run(args: argparse.Namespace) -> int:
    from bnnkit.train import train
    from bnnkit.train.rundir import saved_options

    base = None
    if args.resume:  # the run's own options, under those given again
        saved = saved_options(args.out)
        base = TrainConfig.from_json(saved) if saved is not None else None
    train(config_from_args(args, base), resume=args.resume)  # its last line names the model and metrics files
    return 0
