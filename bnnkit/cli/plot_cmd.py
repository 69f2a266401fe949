"""``bnnkit plot``: training curves of one or more runs as a PNG."""

from __future__ import annotations

import argparse
import os

from bnnkit.cli import COMMANDS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "plot", help=COMMANDS["plot"],
        description="Draw, per epoch, train/test loss and accuracy, the learning rate, ReSTE's o, and the "
                    "paper's two indicators (estimating error, gradient stability) from each RUN_DIR's "
                    "metrics.jsonl into one PNG. Several runs share the panels, one color each (to compare "
                    'estimators or seeds). Needs matplotlib: pip install "bnnkit[plot]".',
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training run directories (bnnkit train --out)")
    p.add_argument("--out", default=None, metavar="FILE.png",
                   help="the PNG to write (default: RUN_DIR/curves.png for one run; required for several)")
    p.add_argument("--title", default=None, help="figure title (default: model and dataset, or the run count)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from bnnkit.plot import plot_runs

    out = args.out
    if out is None:
        if len(args.run_dirs) > 1:
            raise ValueError("several runs: pass --out FILE.png")
        out = os.path.join(args.run_dirs[0], "curves.png")
    print(f"curves: {plot_runs(args.run_dirs, out, title=args.title)}")
    return 0
