"""``bnnkit study``: recorded studies of the paper's claims (see :mod:`bnnkit.study`)."""

from __future__ import annotations

import argparse
import os

from bnnkit.choices import ESTIMATORS
from bnnkit.cli import COMMANDS


def _spec_defaults():
    from bnnkit.study.estimators import StudySpec

    return StudySpec()


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "study", help=COMMANDS["study"],
        description="Recorded studies of the paper's claims. 'estimators' trains the digits models with every "
                    "estimator (ReSTE at several o_end) over several seeds and records accuracy and the two "
                    "indicators per epoch; 'readme' regenerates the README's table from the record; 'plot' "
                    "draws the figures of a record.")
    sub = p.add_subparsers(dest="study", metavar="STUDY", required=True)
    spec = _spec_defaults()

    est = sub.add_parser(
        "estimators", help="the paper's STE (clipped_ste, t = 1), identity_ste, approx_sign and ReSTE (several o_end) "
                           "on the digits models, over seeds",
        description="Train every model with every estimator (ReSTE once per --o-ends value) from seeds 0..N-1 with "
                    "the paper's recipe scaled to digits, then write OUT/estimators.json (the record: device, "
                    "versions, commit, date, the recipe, per run the final and best test accuracy and per epoch "
                    "lr, o, losses, accuracies, estimating error and gradient stability), the figures "
                    "OUT/estimators-accuracy.png and OUT/estimators-tradeoff.png (with matplotlib), and print "
                    "the table (mean, std, min, max over seeds, and each arm against the paper's STE seed by "
                    "seed with a 95% interval). Record it for the README with --out "
                    "benchmarks/results/studies, then 'bnnkit study readme'.")
    est.add_argument("--out", required=True, metavar="DIR", help="directory for the record and the figures")
    est.add_argument("--models", nargs="+", default=list(spec.models), metavar="NAME",
                     help=f"digits models to train (default: {' '.join(spec.models)})")
    est.add_argument("--estimators", nargs="+", default=list(spec.estimators), choices=ESTIMATORS,
                     metavar="NAME", help=f"estimators (default: {' '.join(spec.estimators)})")
    est.add_argument("--o-ends", nargs="+", type=float, default=list(spec.o_ends), metavar="O",
                     help=f"ReSTE's final o, one run per value (default: {' '.join(f'{o:g}' for o in spec.o_ends)})")
    est.add_argument("--seeds", type=int, default=spec.seeds, help=f"seeds per arm, 0..N-1 (default {spec.seeds})")
    est.add_argument("--epochs", type=int, default=spec.epochs, help=f"epochs per run (default {spec.epochs})")
    est.add_argument("--batch-size", type=int, default=spec.batch_size, help=f"default {spec.batch_size}")
    est.add_argument("--warmup-epochs", type=int, default=None,
                     help=f"the reference schedule's warm-up, 0 or 5 (default {spec.warmup_epochs}; 0 for runs of "
                          "5 epochs or fewer)")
    est.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                     help="runs trained at once, in worker processes, each single-threaded (default: 2, or 1 "
                          "on a 1-core machine); the record does not depend on it")
    est.add_argument("--device", default="cpu", help="device of every run (default cpu)")
    est.add_argument("--keep-runs", action="store_true", help="keep the run directories in OUT/runs")
    est.add_argument("--resume", action="store_true",
                     help="continue a study interrupted with --keep-runs (or --resume): the finished runs in OUT/runs "
                          "are read back and the interrupted ones resumed exactly (implies --keep-runs; the options "
                          "must be those it was started with)")
    est.add_argument("--no-plots", action="store_true", help="write the record and the table only")
    est.set_defaults(run=run_estimators)

    readme = sub.add_parser("readme", help="regenerate the README's study table from the record",
                            description="Rewrite the README's estimator study section from "
                                        "benchmarks/results/studies/estimators.json (or --record).")
    from bnnkit.study.report import add_arguments

    add_arguments(readme)
    readme.set_defaults(run=run_readme)

    plot = sub.add_parser("plot", help="draw the figures of a study record")
    plot.add_argument("record", help="an estimators.json record")
    plot.add_argument("--out", default=None, metavar="DIR", help="default: the record's directory")
    plot.set_defaults(run=run_plot)


def _warmup(args: argparse.Namespace) -> int:
    """The warm-up asked for, else the study's (5), else 0 for runs too short to hold it."""
    from bnnkit.study.estimators import StudySpec
    from bnnkit.train.config import REFERENCE_WARMUP_EPOCHS

    if args.warmup_epochs is not None:
        return args.warmup_epochs
    return StudySpec().warmup_epochs if args.epochs > REFERENCE_WARMUP_EPOCHS else 0


def run_estimators(args: argparse.Namespace) -> int:
    from bnnkit.artifacts import check_writable
    from bnnkit.study import report
    from bnnkit.study.estimators import RECORD_FILE, StudySpec, run_study, write_record

    check_writable(args.out, "--out", directory=True)  # before any run

    spec = StudySpec(models=tuple(args.models), estimators=tuple(args.estimators), o_ends=tuple(args.o_ends),
                     seeds=args.seeds, epochs=args.epochs, batch_size=args.batch_size,
                     warmup_epochs=_warmup(args)).check()
    runs_dir = os.path.join(args.out, "runs")
    if not args.resume and os.path.isdir(runs_dir) and os.listdir(runs_dir):
        raise FileExistsError(f"{runs_dir!r} holds the runs of an earlier study: pass --resume to continue it, or "
                              "choose another --out")
    record = run_study(spec, jobs=args.jobs, device=args.device,
                       runs_dir=runs_dir if args.keep_runs or args.resume else None, resume=args.resume)
    path = os.path.join(args.out, RECORD_FILE)
    write_record(path, record)
    print(report.section(record))
    print(f"record: {path}")
    if not args.no_plots:
        try:
            from bnnkit.study.plots import write_plots

            print("figures: " + ", ".join(write_plots(record, args.out)))
        except ImportError as e:
            print(f"figures: not drawn ({e})")
    return 0


def run_readme(args: argparse.Namespace) -> int:
    from bnnkit.study.report import run

    return run(args)


def run_plot(args: argparse.Namespace) -> int:
    from bnnkit.study.estimators import read_record
    from bnnkit.study.plots import write_plots

    record = read_record(args.record)
    print("figures: " + ", ".join(write_plots(record, args.out or os.path.dirname(os.path.abspath(args.record)))))
    return 0
