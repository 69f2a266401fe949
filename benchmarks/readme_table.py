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
    return ", ".join(parts) or "-"


def _throughput(row: dict) -> str:
    parts = []
    if row.get("gb_per_s") is not None:
        parts.append(f"{_num(row['gb_per_s'])} GB/s")
    if row.get("tops") is not None:
        parts.append(f"{_num(row['tops'])} TOPS")
    return ", ".join(parts) or "-"


def _load_note(rows: list[dict]) -> str:
    """The host's load average at the start of each run the rows come from (CPU figures from a
    busy host are slower; rows of several runs may have been measured under different loads)."""
    runs: dict[str, tuple[str, float]] = {}
    for r in rows:
        if r.get("load_avg") is not None:
            runs.setdefault(r.get("run_id", ""), (r["date"][:10], r["load_avg"]))
    if not runs:
        return ""
    if len({load for _, load in runs.values()}) == 1:
        return f", load average {next(iter(runs.values()))[1]:g} at the start"
    return ", load average at the start " + ", ".join(f"{load:g} ({date} run)" for date, load in sorted(runs.values()))


def device_section(doc: dict) -> str:
    """Markdown for one device: a line naming it, its ceilings, and the table of its latest rows."""
    rows = latest_rows(doc["rows"])
    if not rows:
        return f"**{doc['device']}**: no rows recorded.\n"
    first = rows[0]
    dates = sorted({r["date"][:10] for r in rows})
    commits = sorted({r["commit"][:10] for r in rows})
    versions = ", ".join(f"{lib} {first[lib]}" for lib in ("torch", "triton", "onnxruntime", "cuda") if first.get(lib))
    threads = f", {first['cpu_threads']} threads" if first.get("cpu_threads") else ""
    if first["device_type"] == "cpu":
        threads += _load_note(rows)
    mode = "quick mode" if all(r.get("quick") for r in rows) else ("full mode" if not any(r.get("quick") for r in rows)
                                                                   else "quick and full mode")
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    lines = [f"**{doc['device']}** ({first['device_type']}{threads}), measured {when} at commit {', '.join(commits)}; "
             f"{versions}; {mode}.", ""]
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
        lines += [f"Ceilings measured in the same run: {'; '.join(measured)}.", ""]
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
        timing = (f"{_num(r.get('median_ms'))} ({_num(r.get('p20_ms'))}-{_num(r.get('p80_ms'))})"
                  if r.get("median_ms") is not None else "-")
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
    if args.check:
        if updated != readme:
            print(f"{args.readme}: the performance table is out of date; run python -m bnnkit.benchmarks.readme_table",
                  file=sys.stderr)
            return 1
        return 0
    if updated != readme:
        with open(args.readme, "w") as f:
            f.write(updated)
    print(f"{args.readme}: performance table {'updated' if updated != readme else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
