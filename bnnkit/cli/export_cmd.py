"""``bnnkit export RUN_DIR --out DIR``: pack a trained run's best model into an artifact."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="pack a trained run into a packed artifact (1 bit per binary weight)",
        description="Pack the best model of a training run: binary weights to bits, BatchNorm and scales folded "
                    "into per-channel epilogues, written as DIR/model.safetensors + DIR/manifest.json "
                    "(format: docs/format.md). Load it with bnnkit.export.load(DIR).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (bnnkit train --out)")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.export import pack
    from bnnkit.train import load_run

    if not os.path.isdir(args.run_dir):
        raise FileNotFoundError(f"run directory {args.run_dir!r} does not exist")
    model, config = load_run(args.run_dir)
    architecture = {"name": config["model"], "kwargs": config["model_kwargs"]}
    packed = pack(model, architecture=architecture, input_shape=tuple(config["input_shape"]))
    packed.save(args.out, overwrite=args.overwrite)
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    fp32 = packed.fp32_state_bytes
    print(f"packed {config['model']} from {args.run_dir} -> {args.out}: {size:,} bytes "
          f"(fp32 state dict {fp32:,} bytes, {fp32 / size:.1f}x smaller); {len(packed.layers)} packed layers")
    return 0
