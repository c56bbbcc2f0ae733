"""Printing evidence the way the guide shows it, and checking it.

Print only what is stable, so that stored outputs are documentation and a test at once.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence


class CheckFailed(AssertionError):
    """A verification did not hold. The message says the likely cause and the fix."""


def expect(condition: bool, problem: str, fix: str) -> None:
    """Assert one expectation of the guide: `problem` says what is wrong, `fix` what to do."""
    if not condition:
        raise CheckFailed(f"{problem}\nLikely fix: {fix}")


def prompt(where, who: str) -> str:
    """The transcript's prompt, `vm1 (postgres) $ `: on which host (a Remote, a host's read-only view, or a
    name), as which user."""
    name = where if isinstance(where, str) else where.host.name
    return f"{name} ({who}) $ "


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A psql-style table: the guide's "Expected" blocks look like this."""
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: " " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(headers), "-" + "-+-".join("-" * w for w in widths) + "-"]
    out += [line(r) for r in rows]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    print(table(headers, rows))


def fields(pairs: Iterable[tuple[str, object]], indent: int = 2) -> str:
    """Aligned `name  value` lines."""
    pairs = list(pairs)
    width = max(len(k) for k, _ in pairs)
    return "\n".join(" " * indent + f"{k.ljust(width)}  {v}" for k, v in pairs)


def positions_named(text: str) -> str:
    """WAL positions and timeline numbers (different on every run) as <lsn> and <n>, for outputs
    that are compared."""
    return re.sub(r"\btimeline \d+", "timeline <n>", re.sub(r"\b[0-9A-F]+/[0-9A-F]+\b", "<lsn>", text))


def masked_columns(table_text: str, masks: dict[str, str]) -> str:
    """psql's aligned table with the values of the named columns replaced, and aligned again: a width that
    followed a changing value (a process id, a time) must not change the table's lines either."""
    lines = table_text.splitlines()
    if len(lines) < 2 or not set(lines[1]) <= set("-+"):
        return table_text
    names = [c.strip() for c in lines[0].split("|")]
    rows, rest = [], []
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == len(names) and not rest:
            rows.append([masks.get(n, c) for n, c in zip(names, cells)])
        else:
            rest.append(line)
    return "\n".join(table(names, rows).splitlines()[:-1] + rest)
