"""Is ci/bench repeatable? Every figure measured with repeats (a median and its range) in one run,
set against the same figure in the run before: whether the new median falls within the earlier
range, and by how much the medians differ. ci/bench records this in results.json each time it
runs over an earlier results.json; `python -m lib.bench.compare OLD.json NEW.json` prints it."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _key(item, index: int) -> str:
    if isinstance(item, dict):
        if "path" in item:
            return str(item["path"])
        named = [str(item[k]) for k in ("target", "workload", "connections", "clients") if k in item]
        if named:
            return " ".join(named)
    return str(index)


def figures(r, path: tuple = ()) -> dict[str, dict]:
    """Every figure with a range (spread()'s dict), by a readable path."""
    found: dict[str, dict] = {}
    if isinstance(r, dict):
        if {"median", "min", "max", "n"} <= r.keys():
            return {" / ".join(path): r}
        for k, v in r.items():
            if k != "repeatability":
                found |= figures(v, (*path, str(k)))
    elif isinstance(r, list):
        for i, v in enumerate(r):
            found |= figures(v, (*path, _key(v, i)))
    return found


#: how far apart two runs' medians may be and still count as the same (book/performance.md says why: 20%)
BAND = 0.20


def compare(earlier: dict, now: dict, largest: int = 3) -> dict | None:
    """How `now`'s figures sit against `earlier`'s; None when they share none."""
    old, new = figures(earlier), figures(now)
    shared = [k for k in new if k in old and old[k]["median"]]
    if not shared:
        return None
    within = [k for k in shared if old[k]["min"] <= new[k]["median"] <= old[k]["max"]]
    change = {k: new[k]["median"] / old[k]["median"] - 1 for k in shared}
    worst = sorted(shared, key=lambda k: -abs(change[k]))[:largest]
    return {"against": earlier.get("date"), "figures": len(shared), "within": len(within),
            "within band": sum(1 for c in change.values() if abs(c) <= BAND), "band": BAND,
            "median difference": statistics.median(abs(c) for c in change.values()),
            "largest": [{"figure": k, "before": old[k]["median"], "now": new[k]["median"], "change": change[k]}
                        for k in worst]}


def sentence(rep: dict) -> str:
    worst = "; ".join(f"{w['figure']} {w['before']:.4g} → {w['now']:.4g} ({w['change']:+.0%})" for w in rep["largest"])
    return (f"**Repeatability**: against the run before ({rep['against'][:10] if rep['against'] else 'undated'}), "
            f"{rep['within']} of {rep['figures']} figures fall within that run's range (over only 2–3 repeats, a "
            f"narrow one) and {rep.get('within band', '?')} within ±{rep.get('band', BAND):.0%} of its median; the "
            f"medians differ by {rep['median difference']:.0%} (median over all figures). The largest differences: {worst}.")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lib.bench.compare OLD.json NEW.json", file=sys.stderr)
        return 2
    old, new = (json.loads(Path(a).read_text()) for a in argv)
    rep = compare(old, new, largest=10)
    if rep is None:
        print("no figure in common")
        return 1
    print(sentence(rep))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
