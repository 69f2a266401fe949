"""``bnnkit export RUN_DIR --out DIR [--onnx [--onnx-ops integer|float]]``: pack a trained run's best model into
an export directory."""

from __future__ import annotations

import argparse

from bnnkit.cli import COMMANDS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help=COMMANDS["export"],
        description="Export the best model of a training run to DIR: the packed artifact (binary weights to bits, "
                    "BatchNorm and scales folded into per-channel epilogues; DIR/model.safetensors + "
                    "DIR/manifest.json, format: docs/format.md; load it with bnnkit.export.load(DIR)), a copy of "
                    "the trained model in DIR/trained/, and with --onnx the ONNX graph DIR/model.onnx (packed "
                    "weights, checked in ONNX Runtime; binary layers as integer ops, or float ops with "
                    "--onnx-ops float). Check the export with bnnkit validate DIR. The directory "
                    "is written under a temporary name and renamed: a failure leaves nothing behind.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (bnnkit train --out)")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
    p.add_argument("--onnx", action="store_true", help="also write the ONNX graph DIR/model.onnx")
    p.add_argument("--onnx-ops", choices=("integer", "float"), default=None,
                   help="how the ONNX graph computes the binary layers: integer (default; QLinearConv / MatMulInteger, "
                        "faster in ONNX Runtime's CPU provider) or float (Conv / Gemm on ±1 values, for runtimes "
                        "without fast integer kernels); needs --onnx")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.artifacts import check_writable
    from bnnkit.export import export_run

    if args.onnx_ops is not None and not args.onnx:
        raise ValueError("--onnx-ops chooses the ops of the ONNX graph; add --onnx to write one")
    check_writable(args.out, "--out", directory=True)
    result = export_run(args.run_dir, args.out, onnx=args.onnx, overwrite=args.overwrite,
                        onnx_ops=args.onnx_ops or "integer")
    print(f"packed {result.model_name} from {args.run_dir} -> {result.directory}: {result.packed_bytes:,} bytes "
          f"(fp32 state dict {result.fp32_state_bytes:,} bytes, {result.compression:.1f}x smaller); "
          f"{len(result.packed.layers)} packed layers")
    if result.onnx is not None:
        print(f"ONNX graph {result.onnx.path} ({result.onnx.ops} ops): {result.onnx.file_bytes:,} bytes, "
              f"{result.onnx.compression:.1f}x smaller than the fp32 parameters")
    print(f"check it: bnnkit validate {result.directory}")
    return 0
