"""``bnnkit demo``: the main job on the embedded digits set."""

from __future__ import annotations

import argparse
import os
import tempfile


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a binary network on the embedded digits set and summarize it",
        description="The main job on the embedded default: train digits_mlp (1-bit weights and activations) on "
                    "scikit-learn's handwritten digits with the ReSTE recipe, then print its summary. "
                    "Everything goes to --out (default: a new temporary directory).",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="directory for the run (default: a new temp dir)")
    p.add_argument("--model", default="digits_mlp", choices=["digits_mlp", "digits_cnn"],
                   help="digits model to train (default digits_mlp)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the digits default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.summary import summarize
    from bnnkit.train import TrainConfig, load_run, train

    out = args.out or tempfile.mkdtemp(prefix="bnnkit-demo-")
    run_dir = os.path.join(out, "run")
    print(f"[1/2] training {args.model} on the digits set -> {run_dir}")
    result = train(TrainConfig(model=args.model, dataset="digits", out=run_dir, epochs=args.epochs,
                               progress=not args.no_progress))
    model, config = load_run(run_dir)
    print(f"[2/2] summary of the best model (test accuracy {result.best_test_acc:.4f})")
    print(summarize(model, tuple(config["input_shape"])).to_text())
    print(f"\nrun directory: {run_dir} (model.safetensors, config.json, metrics.jsonl)")
    return 0
