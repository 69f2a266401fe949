"""``bnnkit summary``: per-layer precision, parameters, packed memory and MACs."""

from __future__ import annotations

import argparse
import json
import os

from bnnkit.choices import MODEL_CHOICES, MODELS
from bnnkit.cli import COMMANDS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "summary", help=COMMANDS["summary"],
        description="Print a per-layer table of a zoo model or a trained run: input and weight bits, parameters, "
                    "packed memory (1 bit per binary weight, 32 bits per other parameter), multiply-accumulates, "
                    "and totals with the fp32-equivalent size and the compression ratio.",
    )
    p.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                   help="a training run directory, or a packed artifact directory (bnnkit export --out)")
    p.add_argument("--model", default=None, choices=MODEL_CHOICES, metavar="NAME",
                   help=f"a zoo model instead of a run ({', '.join(MODELS)})")
    p.add_argument("--input-shape", type=int, nargs="+", default=None, metavar="N",
                   help="input shape without batch, e.g. 3 224 224 (default: the model's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit import models
    from bnnkit.summary import summarize
    from bnnkit.train import load_run

    if (args.run_dir is None) == (args.model is None):
        raise ValueError("give either a run directory or --model NAME")
    if args.run_dir is not None:
        if not os.path.isdir(args.run_dir):
            raise FileNotFoundError(f"run directory {args.run_dir!r} does not exist")
        from bnnkit.export.runtime.sizes import is_packed_artifact, packed_artifact_report

        if is_packed_artifact(args.run_dir):
            from bnnkit.inputs import spec_from_optional_json

            report = packed_artifact_report(args.run_dir)
            text = report["text"] + "\n" + _spec_text(spec_from_optional_json(report["input_spec"], "input_spec"),
                                                      run=False)
            print(json.dumps(report, indent=2) if args.json else text)
            return 0
        model, config = load_run(args.run_dir)
        shape = tuple(config["input_shape"])
        title = f"{config['model']} from {args.run_dir}"
    else:
        model = models.create(args.model)
        shape = models.model_info(args.model).input_shape
        title = args.model
    if args.input_shape:
        shape = tuple(args.input_shape)
    summary = summarize(model, shape)
    packed_line = None
    spec = _recorded_spec(config, args.run_dir) if args.run_dir else None
    if args.run_dir is not None:
        from bnnkit.export.run_export import export_artifact_bytes

        sizes = export_artifact_bytes(args.run_dir, model, config)
        fp32 = summary_fp32_state(model)
        packed_line = {"artifact_bytes": sizes["export"], "artifact_bytes_with_onnx": sizes["export_onnx"],
                       "fp32_state_dict_bytes": fp32, "compression": fp32 / sizes["export"]}
    if args.json:
        print(json.dumps({"model": title, **summary.to_json(), **({"packed_artifact": packed_line} if packed_line
                                                                   else {}),
                          **({"input_spec": None if spec is None else spec.to_json()} if args.run_dir else {})},
                         indent=2))
    else:
        print(title)
        print(summary.to_text())
        if packed_line:
            print(f"packed artifact (model.safetensors + manifest.json, as bnnkit export writes it) "
                  f"{packed_line['artifact_bytes']:,} bytes, {packed_line['artifact_bytes_with_onnx']:,} with --onnx "
                  f"(its manifest also lists model.onnx), vs fp32 state dict {packed_line['fp32_state_dict_bytes']:,} "
                  f"bytes: {packed_line['compression']:.1f}x smaller")
        if args.run_dir:
            print(_spec_text(spec, run=True))
    return 0


def _recorded_spec(config: dict, run_dir: str):
    """The input spec the run's checked config records (read with its model), or ``None``."""
    from bnnkit.inputs import spec_from_optional_json

    return spec_from_optional_json(config.get("input_spec"), f"{os.path.join(run_dir, 'config.json')!r} input_spec")


def _spec_text(spec, *, run: bool) -> str:
    if spec is not None:
        return spec.to_text()
    if run:
        return "input spec: none recorded (a run from before input specs; bnnkit export records its dataset's)"
    return ("input spec: none recorded (bnnkit predict needs one: pass input_spec= to bnnkit.export.pack, or "
            "export a training run with bnnkit export)")


def summary_fp32_state(model) -> int:
    """Bytes of the model's state dict with every float tensor in fp32."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in model.state_dict().values())
