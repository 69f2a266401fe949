"""``bnnkit demo``: the main job on the embedded digits set: train, export, validate."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train a binary network on the embedded digits set, export it (packed + ONNX) and validate it",
        description="The main job on the embedded default: train digits_mlp (1-bit weights and activations) on "
                    "scikit-learn's handwritten digits with the ReSTE recipe, print its summary, export it "
                    "(the packed model and an ONNX graph with packed weights), and validate the packed model "
                    "(Triton kernels on GPU, PyTorch elsewhere) and the ONNX graph in ONNX Runtime against the "
                    "trained model. Everything goes to --out (default: a new temporary directory). Exits with 1 "
                    "when validation fails.",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="directory for the run (default: a new temp dir)")
    p.add_argument("--model", default="digits_mlp", choices=["digits_mlp", "digits_cnn"],
                   help="digits model to train (default digits_mlp)")
    p.add_argument("--epochs", type=int, default=None, help="epochs, >= 1 (default: the digits default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.artifacts import check_writable, write_json
    from bnnkit.cli.validate_cmd import EXIT_DISAGREES, load_inputs
    from bnnkit.export import export_run
    from bnnkit.export.validation.report import validate_artifact
    from bnnkit.summary import summarize
    from bnnkit.train import TrainConfig, load_run, train

    config = TrainConfig(model=args.model, dataset="digits", out="", epochs=args.epochs,
                         progress=not args.no_progress)
    config.resolved()  # a bad option stops here, before any directory or output
    if args.out is not None:
        check_writable(args.out, "--out", directory=True)
        for existing in (os.path.join(args.out, "run"), os.path.join(args.out, "export")):
            if os.path.exists(existing):
                raise FileExistsError(f"{existing!r} already exists (an earlier demo?); choose another --out")
    out = args.out or tempfile.mkdtemp(prefix="bnnkit-demo-")
    run_dir = os.path.join(out, "run")
    export_dir = os.path.join(out, "export")
    print(f"[1/4] training {args.model} on the digits set -> {run_dir}")
    result = train(dataclasses.replace(config, out=run_dir))
    model, config = load_run(run_dir)
    print(f"[2/4] summary of the best model (test accuracy {result.best_test_acc:.4f})")
    print(summarize(model, tuple(config["input_shape"])).to_text())

    print(f"[3/4] exporting -> {export_dir}")
    exported = export_run(run_dir, export_dir, onnx=True)
    print(f"      packed artifact: {exported.packed_bytes:,} bytes, {exported.compression:.1f}x smaller than the fp32 "
          f"state dict ({exported.fp32_state_bytes:,} bytes)")
    print(f"      ONNX graph: {exported.onnx.file_bytes:,} bytes, {exported.onnx.compression:.1f}x smaller than the "
          f"fp32 parameters ({exported.onnx.packed_weight_bytes:,} bytes of packed weight bits)")

    print(f"[4/4] validating {export_dir} on the digits test set")
    inputs, labels = load_inputs("digits", None, 10_000, tuple(config["input_shape"]), int(config["num_classes"]))
    report = validate_artifact(export_dir, inputs, labels, data="digits")
    print(report.to_text())
    report_path = os.path.join(export_dir, "validation.json")
    write_json(report_path, report.to_json())
    for line in report.failures():
        print(f"validation failed: {line}")

    print("\nwhere everything went:")
    print(f"  training run:      {run_dir} (model.safetensors, config.json, metrics.jsonl)")
    print(f"  export directory:  {export_dir} (manifest.json + model.safetensors: the packed model, "
          "model.onnx: the ONNX graph, trained/: the best model)")
    print(f"  validation report: {report_path}")
    return 0 if report.ok else EXIT_DISAGREES
