"""``bnnkit validate``: compare the trained model, the packed model and ONNX Runtime on the same inputs."""

from __future__ import annotations

import argparse
import os

from bnnkit.cli.values import nonnegative_float
from bnnkit.data import DATASETS

EXIT_DISAGREES = 1


def add_parser(subparsers) -> None:
    from bnnkit.export.validation.compare import RELATIVE_TOLERANCE
    from bnnkit.export.validation.runtimes import REFERENCE, RUNTIMES

    others = [r for r in RUNTIMES if r != REFERENCE]
    p = subparsers.add_parser(
        "validate", help="compare the trained model, the packed model and ONNX Runtime on the same inputs",
        description="Run the trained model (eval, from ARTIFACT_DIR/trained), the packed model (ARTIFACT_DIR/"
                    "manifest.json; Triton on GPU, PyTorch elsewhere) and the ONNX graph (ARTIFACT_DIR/model.onnx) "
                    "in ONNX Runtime (CPU; CUDA when available) on the first N test samples. Prints per runtime the "
                    "max abs and relative difference to the trained model, top-1 agreement, accuracy and latency, "
                    "and writes the same as JSON. Exits with 1 when a runtime disagrees (top-1 agreement below 100% "
                    "or relative difference above the tolerance) or fails to load, naming it and the first "
                    "disagreeing sample.",
    )
    p.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="an export directory (bnnkit export ... --onnx)")
    p.add_argument("--data", default=None, choices=DATASETS,
                   help="inputs: the test split of this dataset (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None, metavar="D", help="directory of cifar10 / imagefolder data")
    p.add_argument("--samples", type=int, default=256, metavar="N", help="number of test samples (default 256)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of every runtime (default 64)")
    p.add_argument("--runtime", action="append", default=None, choices=others, dest="runtimes",
                   help=f"compare only these runtimes (repeatable; {', '.join(others)}); a named runtime that "
                        "is unavailable fails. Default: all, skipping unavailable ones")
    p.add_argument("--tolerance", type=nonnegative_float, default=RELATIVE_TOLERANCE,
                   help=f"largest relative difference accepted (default {RELATIVE_TOLERANCE:g}, for fp32)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the JSON report (default ARTIFACT_DIR/validation.json)")
    p.set_defaults(run=run)


def load_inputs(data: str, data_dir: str | None, samples: int, input_shape: tuple[int, ...], num_classes: int):
    """The first ``samples`` test samples of ``data``: ``(inputs float32 (N, ...), labels int64 (N,))``."""
    import torch

    from bnnkit.data import load_dataset, synthetic_tensors

    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if data == "synthetic":
        return synthetic_tensors(samples, input_shape, num_classes, seed=2)
    test = load_dataset(data, data_dir, input_shape=input_shape, num_classes=num_classes).test
    n = min(samples, len(test))
    items = [test[i] for i in range(n)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"dataset {data!r} gives inputs of shape {tuple(x.shape[1:])}; the model takes "
                         f"{tuple(input_shape)}")
    return x, y


def run(args: argparse.Namespace) -> int:
    import sys

    from bnnkit.artifacts import check_writable, read_json, write_json
    from bnnkit.export.validation.runtimes import TRAINED_DIR
    from bnnkit.export.validation.report import validate_artifact

    directory = args.artifact_dir
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"artifact directory {directory!r} does not exist")
    if not os.path.isdir(os.path.join(directory, TRAINED_DIR)) and os.path.isfile(os.path.join(directory, "config.json")):
        raise ValueError(f"{directory!r} is a training run, not an export directory; make one with: "
                         f"bnnkit export {directory} --out EXPORT_DIR --onnx")
    json_path = args.json or os.path.join(directory, "validation.json")
    check_writable(json_path, "--json" if args.json else "the report", directory=False)  # before the run, not after
    config = read_json(os.path.join(directory, TRAINED_DIR, "config.json"), "trained model config")
    input_shape, num_classes = tuple(config["input_shape"]), int(config["num_classes"])
    data = args.data or config.get("train", {}).get("dataset", "synthetic")
    inputs, labels = load_inputs(data, args.data_dir or config.get("train", {}).get("data_dir"), args.samples,
                                 input_shape, num_classes)
    report = validate_artifact(directory, inputs, labels, runtimes=args.runtimes, batch_size=args.batch_size,
                               tolerance=args.tolerance, data=data)
    print(report.to_text())
    write_json(json_path, report.to_json())
    print(f"report: {json_path}")
    for line in report.failures():
        print(f"bnnkit validate: {line}", file=sys.stderr)
    return 0 if report.ok else EXIT_DISAGREES
