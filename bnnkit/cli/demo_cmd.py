"""``bnnkit demo``: the main job on the embedded digits set: train, export, validate, predict."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

from bnnkit.cli import COMMANDS
from bnnkit.cli.values import add_threads_argument, apply_threads


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help=COMMANDS["demo"],
        description="The main job on the embedded default: train digits_mlp (1-bit weights and activations) on "
                    "scikit-learn's handwritten digits with the ReSTE recipe, print its summary, export it "
                    "(the packed model and an ONNX graph with packed weights), and validate the packed model "
                    "(Triton kernels on GPU, the native CPU kernels on CPU) and the ONNX graph in ONNX Runtime against the "
                    "trained model, then save a few held-out digits as PNG files and predict them with the packed "
                    "model (bnnkit predict). Everything goes to --out (default: a new temporary directory). Exits "
                    "with 1 when validation fails.",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="directory for the run (default: a new temp dir)")
    p.add_argument("--model", default="digits_mlp", choices=["digits_mlp", "digits_cnn"],
                   help="digits model to train (default digits_mlp)")
    p.add_argument("--epochs", type=int, default=None, help="epochs, >= 1 (default: the digits default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.artifacts import check_writable, write_json
    from bnnkit.cli.validate_cmd import EXIT_DISAGREES, load_inputs
    from bnnkit.export import export_run
    from bnnkit.export.validation.report import validate_artifact
    from bnnkit.predict import format_table
    from bnnkit.summary import summarize
    from bnnkit.train import TrainConfig, load_run, train

    config = TrainConfig(model=args.model, dataset="digits", out="", epochs=args.epochs, threads=args.threads,
                         progress=not args.no_progress)
    config.resolved()  # a bad option stops here, before any directory or output
    if args.out is not None:
        check_writable(args.out, "--out", directory=True)
        for marker, what in (("config.json", "a training run"), ("manifest.json", "an export directory")):
            if os.path.isfile(os.path.join(args.out, marker)):
                raise FileExistsError(f"--out {args.out!r} is {what}; the demo writes run/, export/ and digits/ into "
                                      "--out: choose a new or empty directory")
        for existing in ("run", "export", "digits"):
            if os.path.exists(os.path.join(args.out, existing)):
                raise FileExistsError(f"{os.path.join(args.out, existing)!r} already exists (an earlier demo?); "
                                      "choose another --out")
    apply_threads(args.threads)  # for export, validation and prediction too
    out = args.out or tempfile.mkdtemp(prefix="bnnkit-demo-")
    run_dir = os.path.join(out, "run")
    export_dir = os.path.join(out, "export")
    digits_dir = os.path.join(out, "digits")
    print(f"[1/5] training {args.model} on the digits set -> {run_dir}")
    result = train(dataclasses.replace(config, out=run_dir))
    model, config = load_run(run_dir)
    print(f"[2/5] summary of the best model (test accuracy {result.best_test_acc:.4f})")
    print(summarize(model, tuple(config["input_shape"])).to_text())

    print(f"[3/5] exporting -> {export_dir}")
    exported = export_run(run_dir, export_dir, onnx=True)
    print(f"      packed artifact: {exported.packed_bytes:,} bytes, {exported.compression:.1f}x smaller than the fp32 "
          f"state dict ({exported.fp32_state_bytes:,} bytes)")
    print(f"      ONNX graph: {exported.onnx.file_bytes:,} bytes, {exported.onnx.compression:.1f}x smaller than the "
          f"fp32 parameters ({exported.onnx.packed_weight_bytes:,} bytes of packed weight bits)")

    print(f"[4/5] validating {export_dir} on the digits test set")
    inputs, labels = load_inputs("digits", None, 10_000, tuple(config["input_shape"]), int(config["num_classes"]))
    report = validate_artifact(export_dir, inputs, labels, data="digits")
    print(report.to_text())
    report_path = os.path.join(export_dir, "validation.json")
    write_json(report_path, report.to_json())
    for line in report.failures():
        print(f"validation failed: {line}")

    print(f"\n[5/5] predicting held-out digits saved as PNG ({digits_dir}) with the packed model:")
    print(f"      bnnkit predict {export_dir} {digits_dir}")
    predictions, labels = predict_held_out_digits(export_dir, digits_dir)
    print(format_table(predictions))
    correct = sum(p.classes[0] == label for p, label in zip(predictions, labels))
    print(f"      {correct} of {len(labels)} right (the true digit is in each file name)")

    print("\nwhere everything went:")
    print(f"  training run:      {run_dir} (model.safetensors, config.json, metrics.jsonl)")
    print(f"  export directory:  {export_dir} (manifest.json + model.safetensors: the packed model, "
          "model.onnx: the ONNX graph, trained/: the best model)")
    print(f"  validation report: {report_path}")
    print(f"  held-out digits:   {digits_dir} (8x8 PNGs; try bnnkit predict {export_dir} YOUR.png)")
    return 0 if report.ok else EXIT_DISAGREES


def predict_held_out_digits(export_dir: str, directory: str, count: int = 8, *, runtime: str = "packed"):
    """Save the first ``count`` test digits as 8-bit PNGs in ``directory`` (pixels 0..16 scaled
    to 0..255; the label in the file name) and predict them from the files, as
    ``bnnkit predict EXPORT_DIR DIRECTORY`` does. Returns ``(predictions, labels)``."""
    import numpy as np
    from PIL import Image

    from bnnkit.data import DIGITS_MAX, load_digits_raw
    from bnnkit.predict import Predictor

    raw, labels = load_digits_raw("test")
    os.makedirs(directory, exist_ok=True)
    for i in range(count):
        pixels = np.round(raw[i, 0] * 255 / DIGITS_MAX).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(directory, f"test-{i:03d}-label-{labels[i]}.png"))
    predictions = Predictor.from_export(export_dir, runtime).predict(directory, top_k=3)
    return predictions, [int(v) for v in labels[:count]]
