"""``bnnkit predict``: the top classes of an exported model on image files and raw arrays."""

from __future__ import annotations

import argparse

from bnnkit.choices import PREDICT_RUNTIMES
from bnnkit.cli import COMMANDS
from bnnkit.cli.values import add_threads_argument, apply_threads


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help=COMMANDS["predict"],
        description="Run an export directory (bnnkit export) on image files (PNG, JPEG, ...), folders of them, or "
                    ".npy arrays of raw inputs (as the dataset stores them: digits 0..16, image pixels 0..255; "
                    "shape (N, C, H, W) or one (C, H, W)). Inputs are preprocessed as the model was trained (the "
                    "input spec the export records: scaling, per-channel normalization, resize and center crop "
                    "for images) and run in batches. Prints per input the top-k classes by name with their "
                    "probabilities (softmax of the outputs); --json writes them too.",
    )
    p.add_argument("export_dir", metavar="EXPORT_DIR", help="an export directory (bnnkit export RUN_DIR --out DIR)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders of images, or .npy arrays")
    p.add_argument("--runtime", default="packed", choices=PREDICT_RUNTIMES,
                   help="which model of the export runs: packed (default; Triton kernels on GPU, the native "
                        "CPU kernels on CPU), onnxruntime (model.onnx in ONNX Runtime: its CUDA provider when available, "
                        "else CPU; onnxruntime-cpu / onnxruntime-cuda choose one), trained (the PyTorch model)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes shown per input (default 5, at most the number of classes)")
    p.add_argument("--batch-size", type=int, default=64, metavar="B", help="inputs per batch (default 64)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the predictions as JSON to PATH")
    p.add_argument("--invert", action="store_true",
                   help="invert image pixels (255 - p) before preprocessing: for dark-on-light drawings given to a "
                        "model trained on bright ink on a dark background, as the digits models are (a warning "
                        "says when an image's brightness is far from the training images'); .npy arrays are taken "
                        "as they are")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    import warnings

    from bnnkit.artifacts import check_writable, write_json
    from bnnkit.predict import InputStatisticsWarning, Predictor, format_table

    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    apply_threads(args.threads)
    if args.json:
        check_writable(args.json, "--json", directory=False)  # before the run, not after it
    predictor = Predictor.from_export(args.export_dir, args.runtime)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputStatisticsWarning)
        predictions = predictor.predict(args.inputs, top_k=args.top_k, batch_size=args.batch_size,
                                        progress=not args.no_progress, invert=args.invert)
    for w in caught:
        if issubclass(w.category, InputStatisticsWarning):
            print(f"bnnkit predict: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(format_table(predictions))
    if args.json:
        write_json(args.json, {
            "export_dir": os.path.abspath(args.export_dir),
            "runtime": predictor.runtime.name,
            "runtime_detail": predictor.runtime.detail,
            "top_k": min(args.top_k, len(predictions[0].classes)),
            "input_spec": predictor.spec.to_json(),
            "predictions": [p.to_json() for p in predictions],
        })
        print(f"predictions: {args.json}")
    return 0
