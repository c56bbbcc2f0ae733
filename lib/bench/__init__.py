"""ci/bench: numbers users can choose by, measured on a fresh lab and written to bench/results.json.

Each module measures one thing and returns plain data; lib.bench.report turns results.json into the
table, the plots and book/performance.md. Nothing here is asserted in tests: a
benchmark reports, it does not judge.
"""
from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict:
    """A figure measured several times: its median and its range."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 4) for v in values]}


def percentiles(values: list[float], points=(50, 95, 99)) -> dict:
    ordered = sorted(values)
    return {f"p{p}": ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] for p in points}
