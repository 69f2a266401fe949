"""The README's performance table, generated from recorded rows only (``benchmarks/results``).

    python -m bnnkit.benchmarks.readme_table [--results-dir DIR] [--readme README.md] [--check]

Rewrites the text between ``<!-- bench-table -->`` and ``<!-- /bench-table -->`` in the
README: per device, the latest recorded run of each suite, naming the device, the date,
the commit and the library versions. Baseline rows (the implementations other rows are
compared against) appear through the speedup column, not as rows of their own.
``--check`` changes nothing and exits 1 when the README is out of date.
"""

from __future__ import annotations

import argparse
import os
import sys

from .ceilings import SUITE as CEILINGS_SUITE
from .environment import REPO_ROOT
from .recording import default_results_dir, latest_rows, load_results_dir, row_variant

BEGIN = "<!-- bench-table -->"
END = "<!-- /bench-table -->"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def baselines_of(rows: list[dict]) -> set[tuple[str, str, str]]:
    """``(suite, case, impl)`` of every implementation some row of its case is compared against."""
    found = set()
    for r in rows:
        found |= {(r["suite"], r["case"], k.removeprefix("speedup_vs_")) for k in r if k.startswith("speedup_vs_")}
    return found


def _speedups(row: dict) -> str:
    parts = [f"{_num(v)}x vs {k.removeprefix('speedup_vs_')}" for k, v in row.items()
             if k.startswith("speedup_vs_") and k != f"speedup_vs_{row['impl']}" and v is not None]
    if parts and row.get("speedup_p20") is not None and row.get("speedup_p80") is not None:
        # the spread of the per-sample ratios against the first baseline (interleaved samples)
        parts[0] += f" (paired {_num(row['speedup_p20'])}-{_num(row['speedup_p80'])})"
    return ", ".join(parts) or "-"


def _throughput(row: dict) -> str:
    parts = []
    if row.get("gb_per_s") is not None:
        parts.append(f"{_num(row['gb_per_s'])} GB/s")
    if row.get("tops") is not None:
        parts.append(f"{_num(row['tops'])} TOPS")
    return ", ".join(parts) or "-"


def _run_line(rows: list[dict], device_type: bool = True) -> str:
    """Where and when rows were measured: threads and load (CPU), dates, commits, versions, mode."""
    first = rows[0]
    dates = sorted({r["date"][:10] for r in rows})
    commits = sorted({r["commit"][:10] for r in rows})
    versions = ", ".join(f"{lib} {first[lib]}" for lib in ("torch", "triton", "onnxruntime", "cuda", "numba")
                         if first.get(lib))
    if first.get("cpu_isa"):
        versions += f"; ISA flags: {first['cpu_isa']}"
    threads = f", {first['cpu_threads']} threads" if first.get("cpu_threads") else ""
    if first["device_type"] == "cpu" and first.get("load_avg") is not None:
        threads += f", load average {first['load_avg']:g} at the start"
        ends = [r["load_avg_end"] for r in rows if r.get("load_avg_end") is not None]
        if ends:
            threads += f", {max(ends):g} at the end"
    mode = "quick mode" if all(r.get("quick") for r in rows) else ("full mode" if not any(r.get("quick") for r in rows)
                                                                   else "quick and full mode")
    repeats = sorted({r.get("repeats", 1) for r in rows})
    if repeats != [1]:
        mode += f", {'/'.join(map(str, repeats))} interleaved repeats"
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    head = f"{first['device_type']}{threads}), measured" if device_type else f"measured"
    if not device_type and threads:
        head = f"{threads.lstrip(', ')}; measured"
    return f"{head} {when} at commit {', '.join(commits)}; {versions}; {mode}"


def device_section(doc: dict) -> str:
    """Markdown for one device: a line naming it, its ceilings, and the table of its latest rows."""
    rows = latest_rows(doc["rows"])
    if not rows:
        return f"**{doc['device']}**: no rows recorded.\n"
    runs: dict[str, list[dict]] = {}  # the latest run of each case: one or several runs
    for r in rows:
        runs.setdefault(r.get("run_id", ""), []).append(r)
    if len(runs) == 1:
        lines = [f"**{doc['device']}** ({_run_line(rows)}.", ""]
    else:
        lines = [f"**{doc['device']}** ({rows[0]['device_type']}), the latest run of each case:", ""]
        lines += [f"- {', '.join(dict.fromkeys(r['suite'] for r in part))}: {_run_line(part, device_type=False)}."
                  for part in runs.values()]
        lines.append("")
    best: dict[str, dict] = {}  # the best row per ceiling, as the runner takes it
    for r in rows:
        if r["suite"] == CEILINGS_SUITE and r.get("ceiling"):
            value = r.get("gb_per_s" if r["ceiling"] == "copy" else "tops") or 0.0
            if r["ceiling"] not in best or value > best[r["ceiling"]]["_value"]:
                best[r["ceiling"]] = {**r, "_value": value}
    if best:
        measured = [f"{_num(r['gb_per_s'])} GB/s copy ({r['shape'].strip('(,)')} {r['dtype']} elements)"
                    if name == "copy" else
                    f"{_num(r['tops'])} TOPS {name} matmul ({r['shape']})" for name, r in best.items()]
        where = "in the same run" if len(runs) == 1 else "by the latest run of the ceilings suite"
        lines += [f"Ceilings measured {where}: {'; '.join(measured)}.", ""]
    baselines = baselines_of(rows)
    table = [r for r in rows if r["suite"] != CEILINGS_SUITE and (r["suite"], r["case"], r["impl"]) not in baselines]
    if not table:
        lines.append("No suite besides the ceilings has recorded rows on this device yet.")
        return "\n".join(lines) + "\n"
    lines += ["| suite | case | shape | dtype | impl | median ms (p20-p80) | throughput | % of ceiling | speedup |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        variant = row_variant(r)
        case = f"{r['case']} ({variant})" if variant else r["case"]
        if r.get("reliable") is False:  # measured, but not a result (bnnkit.benchmarks.repeats)
            lines.append(f"| {r['suite']} | {case} | {r.get('shape', '')} | {r.get('dtype', '')} | {r['impl']} "
                         f"| unreliable: {r.get('unreliable')} | - | - | - |")
            continue
        timing = (f"{_num(r.get('median_ms'))} ({_num(r.get('p20_ms'))}-{_num(r.get('p80_ms'))})"
                  if r.get("median_ms") is not None else "-")
        medians = r.get("repeat_medians_ms") or []
        if len(medians) > 1:
            timing += f"; {len(medians)} repeats {_num(min(medians))}-{_num(max(medians))}"
        pct = f"{_num(r['pct_of_ceiling'])}% {r.get('bound', '')}".strip() if r.get("pct_of_ceiling") is not None \
            else "-"
        lines.append(f"| {r['suite']} | {case} | {r.get('shape', '')} | {r.get('dtype', '')} | {r['impl']} | {timing} "
                     f"| {_throughput(r)} | {pct} | {_speedups(r)} |")
    return "\n".join(lines) + "\n"


def generate(results_dir: str) -> str:
    """The text that goes between the markers."""
    docs = load_results_dir(results_dir)
    if not docs:
        return "No benchmark results are recorded yet.\n"
    return "\n".join(device_section(doc) for doc in docs)


def replace_section(readme: str, body: str, *, begin: str = BEGIN, end: str = END) -> str:
    """``readme`` with the text between the markers ``begin`` and ``end`` (default: the
    performance table's) replaced by ``body``."""
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"the README has no '{begin}' ... '{end}' section to write the table into")
    return readme[:start + len(begin)] + "\n" + body + readme[stop:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnkit.benchmarks.readme_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results of this checkout")
    parser.add_argument("--readme", default=os.path.join(REPO_ROOT, "README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args(argv)
    try:
        with open(args.readme) as f:
            readme = f.read()
        updated = replace_section(readme, generate(args.results_dir or default_results_dir()))
    except (ValueError, OSError) as e:
        print(f"readme_table: error: {e}", file=sys.stderr)
        return 2
    return check_or_write(args.readme, readme, updated, args.check, "performance table",
                          "python -m bnnkit.benchmarks.readme_table")


def check_or_write(path: str, readme: str, updated: str, check: bool, what: str, command: str) -> int:
    """With ``check``: exit status 1 (and a line naming ``command``) when the README at ``path``
    differs from ``updated``, else 0. Without: write ``updated`` there if it differs; 0."""
    if check:
        if updated != readme:
            print(f"{path}: the {what} is out of date; run {command}", file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        with open(path, "w") as f:
            f.write(updated)
    print(f"{path}: {what} {'updated' if updated != readme else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
