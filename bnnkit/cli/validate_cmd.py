"""``bnnkit validate``: compare the trained model, the packed model and ONNX Runtime on the same inputs."""

from __future__ import annotations

import argparse
import os

from bnnkit.choices import DATASETS, VALIDATE_RUNTIMES
from bnnkit.cli import COMMANDS
from bnnkit.cli.values import add_threads_argument, apply_threads, nonnegative_float

EXIT_DISAGREES = 1


DEFAULT_TOLERANCE = 1e-4
"""``--tolerance``'s default: :data:`bnnkit.export.RELATIVE_TOLERANCE` (a test checks they agree;
kept here so that the parser imports no torch)."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "validate", help=COMMANDS["validate"],
        description="Run the trained model (eval, from ARTIFACT_DIR/trained), the packed model (ARTIFACT_DIR/"
                    "manifest.json; Triton on GPU, the native CPU kernels on CPU) and the ONNX graph (ARTIFACT_DIR/model.onnx) "
                    "in ONNX Runtime (CPU, and CUDA when available) on the first N test samples. Prints per runtime the "
                    "max abs and relative difference to the trained model evaluated in float64, top-1 agreement, "
                    "flips at near-ties, accuracy and latency, and writes the same as JSON. Exits with 1 when a "
                    "runtime disagrees on a sample (other top-1 or relative difference above the tolerance) that "
                    "no near-tie explains, or fails to load, naming it and the first disagreeing sample. Without "
                    "ARTIFACT_DIR/trained (a model outside the zoo) the packed model is the reference of ONNX "
                    "Runtime, on synthetic inputs by default.",
    )
    p.add_argument("artifact_dir", metavar="ARTIFACT_DIR", help="an export directory (bnnkit export ... --onnx)")
    p.add_argument("--data", default=None, choices=DATASETS,
                   help="inputs: the test split of this dataset (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None, metavar="D", help="directory of cifar10 / imagefolder data")
    p.add_argument("--samples", type=int, default=256, metavar="N", help="number of test samples (default 256)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of every runtime (default 64)")
    p.add_argument("--runtime", action="append", default=None, choices=VALIDATE_RUNTIMES, dest="runtimes",
                   help=f"compare only these runtimes (repeatable; {', '.join(VALIDATE_RUNTIMES)}; onnxruntime is "
                        "ONNX Runtime's CUDA provider when it has one here, else its CPU provider, as in bnnkit "
                        "predict); a named runtime that is unavailable fails. Default: all, skipping unavailable "
                        "ones")
    p.add_argument("--tolerance", type=nonnegative_float, default=DEFAULT_TOLERANCE,
                   help=f"largest relative difference accepted (default {DEFAULT_TOLERANCE:g}, for fp32)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="where to write the JSON report (default ARTIFACT_DIR/validation.json)")
    add_threads_argument(p)
    p.set_defaults(run=run)


def load_inputs(data: str, data_dir: str | None, samples: int, input_shape: tuple[int, ...],
                num_classes: int | None):
    """The first ``samples`` test samples of ``data``: ``(inputs float32 (N, ...), labels int64 (N,))``
    (labels ``None`` for synthetic inputs of a model whose class count is unknown)."""
    import torch

    from bnnkit.data import load_dataset, synthetic_tensors

    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    if data == "synthetic":
        if num_classes is None:
            return synthetic_tensors(samples, input_shape, 1, seed=2)[0], None
        return synthetic_tensors(samples, input_shape, num_classes, seed=2)
    test = load_dataset(data, data_dir, input_shape=input_shape).test
    n = min(samples, len(test))
    items = [test[i] for i in range(n)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"dataset {data!r} gives inputs of shape {tuple(x.shape[1:])}; the model takes "
                         f"{tuple(input_shape)}")
    return x, y


def _packed_input_shape(directory: str) -> tuple[int, ...]:
    from bnnkit.export import load
    from bnnkit.export.layout import PACKED_MANIFEST

    shape = load(directory).input_shape if os.path.lexists(os.path.join(directory, PACKED_MANIFEST)) else None
    if shape is None:
        raise ValueError(f"{directory!r} has no trained/ model and no packed artifact recording an input shape; "
                         "validate it from Python: bnnkit.export.validate(trained_model, directory, inputs)")
    return tuple(shape)


def _trained_config(directory: str) -> dict:
    """The checked run config of the export's trained copy: the export's manifest checked whole,
    the file read once with the size and SHA-256 it lists, every field checked."""
    from bnnkit.artifacts import parse_json, read_listed_file
    from bnnkit.export.validation.runtimes import TRAINED_DIR, checked_export
    from bnnkit.train.checks import run_config

    rel = f"{TRAINED_DIR}/config.json"
    path = os.path.join(directory, TRAINED_DIR, "config.json")
    data = read_listed_file(directory, checked_export(directory)["files"], rel, f"manifest of {directory!r}")
    return run_config(parse_json(data, "trained model config", path), f"trained model config {path!r}")


def run(args: argparse.Namespace) -> int:
    import sys

    from bnnkit.artifacts import check_writable, write_json
    from bnnkit.export.validation.runtimes import TRAINED_DIR, resolve_onnxruntime
    from bnnkit.export.validation.report import validate_artifact

    apply_threads(args.threads)
    directory = args.artifact_dir
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"artifact directory {directory!r} does not exist")
    if not os.path.isdir(os.path.join(directory, TRAINED_DIR)) and os.path.isfile(os.path.join(directory, "config.json")):
        raise ValueError(f"{directory!r} is a training run, not an export directory; make one with: "
                         f"bnnkit export {directory} --out EXPORT_DIR --onnx")
    json_path = args.json or os.path.join(directory, "validation.json")
    check_writable(json_path, "--json" if args.json else "the report", directory=False)  # before the run, not after
    if os.path.isdir(os.path.join(directory, TRAINED_DIR)):
        config = _trained_config(directory)
        input_shape, num_classes = tuple(config["input_shape"]), config["num_classes"]
    else:  # an export of a model outside the zoo: the packed artifact says what input it takes
        config, input_shape, num_classes = {"train": {}}, _packed_input_shape(directory), None
    data = args.data or config["train"].get("dataset") or "synthetic"
    inputs, labels = load_inputs(data, args.data_dir or config["train"].get("data_dir"), args.samples,
                                 input_shape, num_classes)
    runtimes = None if args.runtimes is None else list(dict.fromkeys(resolve_onnxruntime(r) for r in args.runtimes))
    report = validate_artifact(directory, inputs, labels, runtimes=runtimes, batch_size=args.batch_size,
                               tolerance=args.tolerance, data=data)
    print(report.to_text())
    write_json(json_path, report.to_json())
    print(f"report: {json_path}")
    for line in report.failures():
        print(f"bnnkit validate: {line}", file=sys.stderr)
    return 0 if report.ok else EXIT_DISAGREES
