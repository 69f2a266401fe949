"""Repeated runs and which rows hold: every benchmark figure comes with its spread.

The runner runs its whole selection of cases ``repeats`` times, interleaved (all cases, then
all cases again, ...), so that a burst of load on a shared machine lands in one repeat of a
row, not in all of them. :func:`merge_repeats` turns the repeats of each row into one row: the
repeat with the median time stands for the row (its percentiles, throughput and speedups),
``repeat_medians_ms`` lists every repeat's median and ``speedup_ranges`` the range of each
speedup over the repeats (``{baseline: [min, max]}``).

:func:`mark_reliability` then marks a row unreliable (``"reliable": false`` and the reason in
``"unreliable"``) when its figures cannot be taken as a result:

- its repeats disagree: the slowest median is more than :data:`MAX_REPEAT_SPREAD` times the
  fastest, or a speedup varies by more than that factor over the repeats;
- its samples within a repeat spread by more than :data:`MAX_SAMPLE_SPREAD` (p80 / p20);
- it claims more than :data:`MAX_PCT_OF_CEILING` percent of a ceiling measured in the same run
  (data in a cache can beat the copy ceiling, measured far beyond the caches, by a small factor;
  several times means the load changed between the two measurements);
- the ceiling it is compared with is itself unreliable.

Tables (``bnnkit bench``, the README's) show such a row as unreliable, with the reason,
instead of its figures.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_REPEAT_SPREAD = 1.5
MAX_SAMPLE_SPREAD = 2.0
MAX_PCT_OF_CEILING = 300.0

REPEAT_KEY = "_repeat"
"""Set by the runner on every row of a repeat (removed by :func:`merge_repeats`)."""

def row_identity(row: dict) -> tuple:
    """What tells one row of a run from another: its suite, case, impl, shape and dtype, and its
    other text fields (a variant such as ``pass=forward``); numbers are measurements."""
    measured_text = {"timer", "bound", "unreliable"}
    named = tuple(repr(row.get(k)) for k in ("suite", "case", "impl", "shape", "dtype"))
    variant = tuple(sorted((k, v) for k, v in row.items()
                           if isinstance(v, str) and k not in measured_text
                           and k not in ("suite", "case", "impl", "shape", "dtype")))
    return named + variant


def merge_repeats(rows: Iterable[dict]) -> list[dict]:
    """One row per identity (:func:`row_identity`) from the rows of several repeats, in the order
    each first appeared: the repeat with the median ``median_ms`` (the lower one for an even
    count) stands for it, with ``repeats``, ``repeat_medians_ms`` and ``speedup_ranges``
    (baseline -> ``[min, max]`` of ``speedup_vs_<baseline>`` over the repeats) added. Rows
    without a time keep their first repeat."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(row_identity(row), []).append(row)
    merged = []
    for group in groups.values():
        timed = [r for r in group if isinstance(r.get("median_ms"), (int, float))]
        if timed:
            timed.sort(key=lambda r: r["median_ms"])
            chosen = dict(timed[(len(timed) - 1) // 2])
            chosen["repeat_medians_ms"] = [r["median_ms"] for r in timed]
            ranges = {}
            for key in [k for k in chosen if k.startswith("speedup_vs_")]:
                values = [r[key] for r in timed if isinstance(r.get(key), (int, float))]
                if values:
                    ranges[key.removeprefix("speedup_vs_")] = [min(values), max(values)]
            if ranges:
                chosen["speedup_ranges"] = ranges
        else:
            chosen = dict(group[0])
        chosen["repeats"] = len(group)
        chosen.pop(REPEAT_KEY, None)
        merged.append(chosen)
    return merged


def _spread(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return max(positive) / min(positive) if len(positive) > 1 else 1.0


def unreliable_reason(row: dict, unreliable_ceilings: Iterable[str] = ()) -> str | None:
    """Why ``row``'s figures are not a result (see the module docstring), or None."""
    reasons = []
    medians = row.get("repeat_medians_ms") or []
    if _spread(medians) > MAX_REPEAT_SPREAD:
        reasons.append(f"its {len(medians)} repeats took {min(medians):.3g} to {max(medians):.3g} ms")
    p20, p80 = row.get("p20_ms"), row.get("p80_ms")
    if isinstance(p20, (int, float)) and isinstance(p80, (int, float)) and p20 > 0 and p80 / p20 > MAX_SAMPLE_SPREAD:
        reasons.append(f"its samples spread from {p20:.3g} ms (p20) to {p80:.3g} ms (p80)")
    for baseline, (low, high) in (row.get("speedup_ranges") or {}).items():
        if _spread([low, high]) > MAX_REPEAT_SPREAD:
            reasons.append(f"its speedup over {baseline} ranged {low:.3g}x to {high:.3g}x")
    pct = row.get("pct_of_ceiling")
    if isinstance(pct, (int, float)) and pct > MAX_PCT_OF_CEILING and row.get("suite") != "ceilings":
        reasons.append(f"it claims {pct:.0f}% of the {row.get('bound')} ceiling measured in the same run")
    if row.get("bound") in set(unreliable_ceilings) and row.get("suite") != "ceilings":
        reasons.append(f"the {row['bound']} ceiling it is compared with is unreliable")
    return "; ".join(reasons) or None


def mark_reliability(rows: list[dict]) -> None:
    """Set ``reliable`` (and ``unreliable``, the reason) on every row, in place: the ceiling
    rows first, then the others, which also fail when the row that sets their ceiling (the
    best of its kind) did."""
    best: dict[str, dict] = {}
    for row in rows:
        if row.get("suite") == "ceilings":
            _mark(row, unreliable_reason(row))
            name = row.get("ceiling")
            value = row.get("gb_per_s" if name == "copy" else "tops")
            if name and isinstance(value, (int, float)) and value > best.get(name, {}).get("_value", -1.0):
                best[name] = {"_value": value, "row": row}
    bad_ceilings = {name for name, b in best.items() if not b["row"]["reliable"]}
    for row in rows:
        if row.get("suite") != "ceilings":
            _mark(row, unreliable_reason(row, bad_ceilings))


def _mark(row: dict, reason: str | None) -> None:
    row["reliable"] = reason is None
    if reason is None:
        row.pop("unreliable", None)
    else:
        row["unreliable"] = reason
