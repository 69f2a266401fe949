"""The benchmark runner: imports the suite modules, runs their registered cases, writes one run file.

``bnnkit bench`` and ``python -m benchmarks`` are this module's :func:`main`. A run:

1. imports every suite module (:data:`SUITE_MODULES`, plus any other module in the
   package); a suite whose module fails to import is reported as failed, with the error;
2. measures the ceilings (suite ``ceilings``) unless they are given;
3. runs each selected case on the device: a case for other devices only, or one left
   when the suite's time budget is spent, is skipped with the reason; a case that raises
   is reported as failed and the run goes on;
4. adds to every row the suite, the run's metadata (device, versions, commit, date; see
   :func:`bnnkit.benchmarks.environment.run_metadata`) and its ratios to the ceilings;
5. rewrites the run file (``--json``) after every case, so a run killed by a time limit
   keeps what it measured.

The run file (:data:`RUN_FORMAT`, version :data:`RUN_VERSION`)::

    {"format": "bnnkit-bench-run", "version": 1, "run": {metadata}, "ceilings": {"copy": GB/s, ...},
     "suites": [{"suite", "status", "reason", "cases": [{"case", "status", "reason", "seconds",
                 "rows", "warnings"}]}],
     "rows": [{suite, case, impl, shape, dtype, median_ms, p20_ms, p80_ms, timer, derived..., metadata...}]}

``status`` is ``ok``, ``skipped``, ``failed`` or (suite only) ``partial``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import math
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable

import torch

from bnnkit.artifacts import ArtifactError, check_writable, read_versioned_json, write_json

from . import ceilings as ceilings_suite
from .environment import run_metadata
from .options import add_arguments  # noqa: F401  (bnnkit bench's options; re-exported)
from .repeats import REPEAT_KEY, mark_reliability, merge_repeats
from .registry import REGISTRY, BenchContext, Case

RUN_FORMAT = "bnnkit-bench-run"
RUN_VERSION = 1

# suite name -> module of bnnkit.benchmarks that registers its cases, in run order
SUITE_MODULES = {
    "ceilings": "ceilings",
    "quantize": "quantize",
    "train": "train",
    "gemm": "gemm",
    "conv": "conv",
    "model": "model",
    "onnx": "onnx_runtime",
}
SUITES = tuple(SUITE_MODULES)
# modules of the package that register no cases and are never imported as suites
INFRASTRUCTURE_MODULES = {"registry", "timing", "environment", "runner", "recording", "plot", "readme_table",
                          "options", "repeats", "__main__"}
REQUIRED_ROW_KEYS = ("case", "impl", "shape", "dtype", "median_ms", "p20_ms", "p80_ms")
PACKAGE = __name__.rsplit(".", 1)[0]


@dataclasses.dataclass
class CaseReport:
    case: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    rows: int = 0
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SuiteReport:
    suite: str
    status: str = "ok"
    reason: str = ""
    cases: list[CaseReport] = dataclasses.field(default_factory=list)

    def settle(self) -> None:
        """Derive the suite's status from its cases (when the suite itself did not fail to load)."""
        if self.status in ("skipped", "failed") and not self.cases:
            return
        ran = [c for c in self.cases if c.status != "skipped"]
        failed = [c for c in ran if c.status == "failed"]
        if not ran:
            self.status = "skipped"
            self.reason = "; ".join(sorted({c.reason for c in self.cases})) or "no cases registered"
        elif failed:
            self.status = "failed" if len(failed) == len(ran) else "partial"
            self.reason = f"{len(failed)} of {len(ran)} cases failed"
        else:
            self.status = "ok"
            skipped = [c for c in self.cases if c.status == "skipped"]
            reasons = "; ".join(sorted({c.reason for c in skipped}))
            self.reason = f"{len(skipped)} of {len(self.cases)} cases skipped ({reasons})" if skipped else ""


@dataclasses.dataclass
class BenchRun:
    """Everything one run measured; :meth:`to_json` is the run file."""

    meta: dict
    ceilings: dict[str, float] = dataclasses.field(default_factory=dict)
    suites: list[SuiteReport] = dataclasses.field(default_factory=list)
    rows: list[dict] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"format": RUN_FORMAT, "version": RUN_VERSION, "run": self.meta, "ceilings": self.ceilings,
                "suites": [dataclasses.asdict(s) for s in self.suites], "rows": self.rows}

    @property
    def failed(self) -> bool:
        return any(s.status in ("failed", "partial") for s in self.suites)


@dataclasses.dataclass(frozen=True)
class ModuleStatus:
    module: str
    status: str  # "loaded" or "failed"
    error: str = ""


def load_suite_modules() -> dict[str, ModuleStatus]:
    """Import every suite module: the known ones (:data:`SUITE_MODULES`) and any other in the package.

    Never raises for a suite: a module whose import raises is ``failed`` with the error.
    """
    package = importlib.import_module(PACKAGE)
    names = list(SUITE_MODULES.values())
    names += sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                    if m.name not in names and m.name not in INFRASTRUCTURE_MODULES and not m.ispkg)
    statuses = {}
    for name in names:
        full = f"{PACKAGE}.{name}"
        try:
            importlib.import_module(full)
        except Exception as e:  # a broken suite must not stop the others
            statuses[name] = ModuleStatus(name, "failed", f"importing {full} failed: {type(e).__name__}: {e}")
        else:
            statuses[name] = ModuleStatus(name, "loaded")
    return statuses


def registered_suites() -> list[str]:
    """Known suites in run order, then any other suite some module registered."""
    extra = sorted({c.suite for c in REGISTRY} - set(SUITE_MODULES))
    return [*SUITE_MODULES, *extra]


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available and ``name`` is None; errors name what is accepted."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"--device {name!r} is not supported; use cuda or cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False); "
                         "use --device cpu")
    return torch.device(name)


def _jsonable(value, key: str, warnings: list[str]):
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        warnings.append(f"{key} is {value}; recorded as null")
        return None
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _jsonable(value.item(), key, warnings)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v, key, warnings) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _jsonable(value.item(), key, warnings)
    warnings.append(f"{key} is a {type(value).__name__}; recorded as its str()")
    return str(value)


def check_rows(rows: object, case_name: str) -> tuple[list[dict], list[str]]:
    """Rows made JSON-safe, and warnings for what a row lacks or holds wrongly.

    A case must return a list of dicts; a row without ``case`` and ``impl`` cannot be
    recorded (it could not be told apart from others): both raise ``TypeError``/``ValueError``.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"case {case_name} returned {type(rows).__name__}; a case returns a list of dict rows")
    clean, warnings = [], []
    for i, row in enumerate(rows):
        missing_id = [k for k in ("case", "impl") if k not in row]
        if missing_id:
            raise ValueError(f"case {case_name} row {i} lacks {', '.join(missing_id)}; every row names its case "
                             f"and impl ({', '.join(REQUIRED_ROW_KEYS)} are expected)")
        row_warnings: list[str] = []
        out = {k: _jsonable(v, k, row_warnings) for k, v in row.items()}
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            row_warnings.append(f"lacks {', '.join(missing)}")
        for key in ("median_ms", "p20_ms", "p80_ms"):
            value = out.get(key)
            if key in row and not (isinstance(value, (int, float)) and value > 0):
                row_warnings.append(f"{key} = {row[key]!r} is not a positive time")
        warnings += [f"row {i} ({row['impl']}, {row.get('shape', '?')}): {w}" for w in row_warnings]
        clean.append(out)
    return clean, warnings


def _run_case(c: Case, ctx: BenchContext, meta: dict, log: Callable[[str], None]) -> tuple[CaseReport, list[dict]]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        rows, warnings = check_rows(c.fn(ctx), f"{c.suite}/{c.name}")
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
    except Exception as e:  # a failing case must not stop the others
        log(traceback.format_exc())
        report = CaseReport(c.name, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - t0)
        return report, []
    finally:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    collisions = sorted({k for r in rows for k in r} & (set(meta) | {"suite"}))
    if collisions:
        warnings.append(f"row fields {', '.join(collisions)} are run metadata names; the metadata was kept")
    for w in warnings:
        log(f"warning: {c.suite}/{c.name}: {w}")
    rows = [{**r, "suite": c.suite, **meta} for r in rows]
    return CaseReport(c.name, "ok", "", time.perf_counter() - t0, len(rows), warnings), rows


def run_benchmarks(suites: Iterable[str] | None = None, device: torch.device | str | None = None, quick: bool = False,
                   cases: Iterable[str] | None = None, budget_s: float | None = None,
                   ceilings: dict[str, float] | None = None, on_case: Callable[[BenchRun], None] | None = None,
                   log: Callable[[str], None] = print, repeats: int = 1) -> BenchRun:
    """Run the selected suites on ``device`` and return what was measured.

    ``suites``: names (default: all); ``cases``: glob patterns on case names (default: all);
    ``budget_s``: seconds per suite (over all repeats) after which its remaining cases are
    skipped; ``ceilings``: given ceilings (e.g. from an earlier run on the same device) instead
    of measuring them; ``on_case``: called with the run so far after every case;
    ``repeats``: how many times the whole selection runs, interleaved (every case once, then
    again, ...); each row is the median repeat with the spread over all of them, and rows whose
    figures do not hold are marked unreliable (:mod:`bnnkit.benchmarks.repeats`).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    modules = load_suite_modules()
    known = registered_suites()
    selected = list(known) if suites is None else list(dict.fromkeys(suites))
    unknown = [s for s in selected if s not in known]
    if unknown:
        raise ValueError(f"unknown benchmark suite {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    patterns = list(cases) if cases else None
    ctx = BenchContext(device=device, quick=quick)
    run = BenchRun(meta=run_metadata(device, quick))
    run.meta["repeats"] = repeats
    log(f"bench: {run.meta['device']} ({device.type}), torch {run.meta['torch']}, triton {run.meta['triton']}, "
        f"commit {run.meta['commit'][:12]}{' (dirty)' if run.meta['dirty'] else ''}, quick={quick}, "
        f"repeats={repeats}")

    measure_ceilings = ceilings is None
    given = {} if measure_ceilings else dict(ceilings)
    if not measure_ceilings:
        run.ceilings = dict(given)
        selected = [s for s in selected if s != "ceilings"]
    elif "ceilings" not in selected:
        selected.insert(0, "ceilings")  # every run relates its figures to ceilings measured in it

    if suites is None:  # a module outside the known suites that fails to import registers nothing: say so
        run.suites += [SuiteReport(f"module {m.module}", "failed", m.error) for m in modules.values()
                       if m.status == "failed" and m.module not in SUITE_MODULES.values()]
    reports: dict[str, SuiteReport] = {}
    spent: dict[str, float] = {}
    raw_rows: list[dict] = []
    for repeat in range(repeats):
        for suite in selected:
            module = modules.get(SUITE_MODULES.get(suite, ""))
            if suite not in reports:
                reports[suite] = SuiteReport(suite)
                run.suites.append(reports[suite])
                if module is not None and module.status != "loaded":
                    reports[suite].status = "failed"
                    reports[suite].reason = module.error
                    if on_case:
                        on_case(run)
            report = reports[suite]
            if module is not None and module.status != "loaded":
                continue
            suite_cases = [c for c in REGISTRY if c.suite == suite]
            if patterns is not None and suite != "ceilings":
                suite_cases = [c for c in suite_cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
            started = time.perf_counter() - spent.get(suite, 0.0)
            for c in suite_cases:
                earlier = next((r for r in report.cases if r.case == c.name), None)
                if earlier is not None and earlier.status == "skipped":
                    continue
                if device.type not in c.devices:
                    report.cases.append(CaseReport(c.name, "skipped", f"runs on {' and '.join(c.devices)} only, "
                                                                      f"not on {device.type}"))
                    continue
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    if earlier is None:
                        report.cases.append(CaseReport(c.name, "skipped",
                                                       f"suite time budget of {budget_s:g} s used up"))
                    continue
                case_report, rows = _run_case(c, ctx, run.meta, log)
                if earlier is None:
                    report.cases.append(case_report)
                else:
                    earlier.seconds += case_report.seconds
                    earlier.warnings += [w for w in case_report.warnings if w not in earlier.warnings]
                    if case_report.status == "failed" and earlier.status != "failed":
                        earlier.status, earlier.reason = "failed", f"repeat {repeat + 1}: {case_report.reason}"
                raw_rows += [{**r, REPEAT_KEY: repeat} for r in rows]
                _settle_rows(run, raw_rows, measure_ceilings, given)
                detail = f"{case_report.rows} rows" if case_report.status == "ok" else case_report.reason
                log(f"{suite}/{c.name}{f' (repeat {repeat + 1}/{repeats})' if repeats > 1 else ''}: "
                    f"{case_report.status}: {detail} ({case_report.seconds:.1f} s)")
                if on_case:
                    on_case(run)
            spent[suite] = time.perf_counter() - started
    for report in reports.values():
        report.settle()
    if on_case:
        on_case(run)
    return run


def _settle_rows(run: BenchRun, raw_rows: list[dict], measure_ceilings: bool, given: dict[str, float]) -> None:
    """The run's rows from every repeat so far: merged, related to the ceilings, marked."""
    rows = merge_repeats(raw_rows)
    if measure_ceilings:
        run.ceilings = ceilings_suite.ceilings_from_rows([r for r in rows if r.get("suite") == ceilings_suite.SUITE])
    else:
        run.ceilings = dict(given)
    ceilings_suite.add_ceiling_ratios(rows, run.ceilings)
    mark_reliability(rows)
    run.rows = rows


def ceilings_from_run_file(path: str, device_name: str | None = None) -> dict[str, float]:
    """The ceilings measured by an earlier run (its run file), checked to be of the same device."""
    doc = read_run_file(path)
    if device_name is not None and doc["run"].get("device") != device_name:
        raise ArtifactError(f"ceilings in {path!r} were measured on {doc['run'].get('device')!r}, "
                            f"not on this run's device {device_name!r}")
    if not doc.get("ceilings"):
        raise ArtifactError(f"run file {path!r} holds no ceilings (its ceilings suite did not run or failed)")
    return {k: float(v) for k, v in doc["ceilings"].items()}


def read_run_file(path: str) -> dict:
    """A run file written by :func:`main`, with its format and version checked."""
    doc = read_versioned_json(path, "benchmark run file", fmt=RUN_FORMAT, version=RUN_VERSION)
    for key in ("run", "rows", "suites"):
        if key not in doc:
            raise ArtifactError(f"benchmark run file {path!r} lacks {key!r}")
    return doc


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of rows: suite/case, impl, shape, dtype, median ms, derived figures."""
    lines = [f"{'suite/case':<44} {'impl':<32} {'shape':<24} {'dtype':<10} {'median ms':>10}  derived"]
    for r in rows:
        derived = []
        if "gb_per_s" in r:
            derived.append(f"{_fmt(r['gb_per_s'])} GB/s")
        if "tops" in r:
            derived.append(f"{_fmt(r['tops'])} TOPS")
        if "compile_s" in r:
            derived.append(f"{_fmt(r['compile_s'])} s compiling")
        if "pct_of_ceiling" in r:
            derived.append(f"{_fmt(r['pct_of_ceiling'])}% of {r.get('bound')}")
        derived += [f"{_fmt(v)}x vs {k.removeprefix('speedup_vs_')}" for k, v in r.items()
                    if k.startswith("speedup_vs_") and v is not None and not (v == 1.0 and k.endswith(r["impl"]))]
        name = f"{r['suite']}/{r['case']}" + (f" [{r['pass']}]" if "pass" in r else "")
        if r.get("reliable") is False:
            derived = [f"UNRELIABLE, not a result: {r.get('unreliable')}"]
        elif r.get("repeat_medians_ms") and len(r["repeat_medians_ms"]) > 1:
            derived.append(f"repeats {_fmt(min(r['repeat_medians_ms']))}-{_fmt(max(r['repeat_medians_ms']))} ms")
        lines.append(f"{name:<44} {str(r['impl']):<32} {str(r.get('shape', '')):<24} {str(r.get('dtype', '')):<10} "
                     f"{_fmt(r.get('median_ms'), 4):>10}  {', '.join(derived)}")
    return "\n".join(lines)


def format_cases() -> str:
    """Every suite and case known to the registry, with where it runs and whether its module loaded."""
    modules = load_suite_modules()
    lines = []
    for suite in registered_suites():
        module = modules.get(SUITE_MODULES.get(suite, ""))
        if module is not None and module.status != "loaded":
            lines.append(f"{suite}: {module.status}: {module.error}")
            continue
        lines.append(f"{suite}:")
        lines += [f"  {c.name:<28} {', '.join(c.devices)}" for c in REGISTRY if c.suite == suite]
    return "\n".join(lines)


def run_from_args(args: argparse.Namespace) -> int:
    """Run what ``args`` (from :func:`add_arguments`) asks; 0 if every case that ran succeeded, else 1."""
    if args.list:
        print(format_cases())
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    given = None
    if args.ceilings_from is not None:
        from .environment import device_name

        given = ceilings_from_run_file(args.ceilings_from, device_name(device))
    if args.json is not None:
        check_writable(args.json, "--json", directory=False)

    def write(run: BenchRun) -> None:
        if args.json is not None:
            write_json(args.json, run.to_json())

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    repeats = args.repeats if getattr(args, "repeats", None) is not None else (2 if args.quick else 3)
    run = run_benchmarks(args.suite, device, args.quick, args.case, args.budget_s, given, write, log, repeats=repeats)
    if not args.no_table and run.rows:
        print(format_rows(run.rows))
    print("\n".join(f"{s.suite}: {s.status}{': ' + s.reason if s.reason else ''}" for s in run.suites))
    if args.json is not None:
        print(f"wrote {len(run.rows)} rows to {args.json}")
    return 1 if run.failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: the same options as ``bnnkit bench``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as e:  # ArtifactError is a ValueError
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
