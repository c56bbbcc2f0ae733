"""Editing postgresql.conf and pg_hba.conf (and pgpool's pool_hba.conf) idempotently.

The text is edited with dalibo's pgtoolkit, which keeps comments and layout; a file is
written back only when its text changes, so a second run leaves it byte-identical.
"""
from __future__ import annotations

import difflib
import io
import re
from typing import Any

from pgtoolkit import conf as pgconf
from pgtoolkit import hba as pghba


def set_settings(text: str, settings: dict[str, Any]) -> tuple[str, list[str]]:
    """Set (and uncomment) each setting. Returns the new text and the changed lines as
    `-old` / `+new` pairs; no change gives the same text and an empty list."""
    cfg = pgconf.Configuration()
    list(cfg.parse(text.splitlines(True)))   # yields include directives; the file itself is what we edit
    with cfg.edit() as entries:
        for name, value in settings.items():
            if name in entries:
                entry = entries[name]
                if entry.commented or entry.value != value:
                    entry.value = value
                    entry.commented = False
            else:
                entries.add(name, value)
    out = io.StringIO()
    cfg.save(out)
    new = out.getvalue()
    return new, changed_lines(text, new)


def add_hba_records(text: str, records: list[str]) -> tuple[str, list[str]]:
    """Append each record unless an equal one (same fields) is already there. A `hostssl` record
    whose `host` twin is there turns that line into `hostssl`: pg_hba takes the first line that
    matches, so the twin would still let the same client in without TLS. The rest of the file is
    left exactly as it was (pgtoolkit only parses it)."""
    before = text
    hba = pghba.parse(io.StringIO(text))
    present = {str(r) for r in hba.lines if isinstance(r, pghba.HBARecord)}
    added = []
    for line in records:
        record = str(pghba.HBARecord.parse(line))
        if record.split()[-1] == "reject":
            text = _reject_first(text, record)
            continue
        if record in present:
            continue
        twin = _host_twin(record.split())
        if twin and any(p.split() == twin for p in present):
            text = "".join(re.sub(r"^host(\s)", r"hostssl\1", l) if _record_fields(l) == twin else l
                           for l in text.splitlines(True))
        else:
            added.append(record)
        present.add(record)
    new = text + ("" if text.endswith("\n") or not text or not added else "\n") + "".join(r + "\n" for r in added)
    return (before, []) if new == before else (new, changed_lines(before, new))


def _host_twin(fields: list[str]) -> list[str] | None:
    """The `host` record that lets the same clients in as a `hostssl` one, without TLS."""
    return ["host", *fields[1:]] if fields[0] == "hostssl" else None


def _reject_first(text: str, record: str) -> str:
    """A `reject` record in front of every other record for its address: pg_hba takes the first line that
    matches, so appended after `host all all ADDRESS` it would never be reached. Moved there if it is elsewhere."""
    fields = record.split()
    lines = text.splitlines(True)
    ours = lambda l: len(f := _record_fields(l)) >= 5 and f[0].startswith("host") and f[3] == fields[3]
    same = [i for i, l in enumerate(lines) if ours(l)]
    if same and _record_fields(lines[same[0]]) == fields:
        return text
    kept = [l for l in lines if _record_fields(l) != fields]
    at = next((i for i, l in enumerate(kept) if ours(l)), None)
    if at is None:
        return "".join(kept) + ("" if not kept or kept[-1].endswith("\n") else "\n") + record + "\n"
    return "".join(kept[:at] + [record + "\n"] + kept[at:])


def _record_fields(line: str) -> list[str]:
    """A pg_hba line's fields, without its comment."""
    return line.split("#", 1)[0].split()


def set_hba_method(text: str, old: str, new: str) -> tuple[str, list[str]]:
    """The guide's Step 25: every host record authenticating with `old` now uses `new`.
    Only those lines change, and only their last field."""
    out = []
    for line in text.splitlines(True):
        fields = line.split("#", 1)[0].split()
        if fields and fields[0].startswith("host") and fields[-1] == old:
            head, sep, comment = line.partition("#")
            line = head.rstrip()[: -len(old)] + new + (("  " + sep + comment) if sep else "\n")
        out.append(line)
    new_text = "".join(out)
    return new_text, changed_lines(text, new_text)


def trust_lines(text: str) -> list[str]:
    """The records of a pg_hba.conf or pool_hba.conf that let a client in without any credential."""
    return [l.strip() for l in text.splitlines()
            if (f := l.split("#", 1)[0].split()) and f[0] in ("local", "host", "hostssl", "hostnossl") and f[-1] == "trust"]


def without_trust(text: str, method: str) -> tuple[str, list[str]]:
    """Every `trust` record asks for a password (`method`) instead: Debian ships pgpool's pool_hba.conf
    with trust for the local socket and the loopback addresses, through which any account on the host
    would get in as any role that pool_passwd holds. Only the method field changes."""
    out = []
    for line in text.splitlines(True):
        if line.strip() in trust_lines(line):
            head, sep, comment = line.partition("#")
            line = head.rstrip()[: -len("trust")] + method + (("  " + sep + comment) if sep else "\n")
        out.append(line)
    new_text = "".join(out)
    return new_text, changed_lines(text, new_text)


def changed_lines(old: str, new: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(old.splitlines(True), new.splitlines(True), n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def hba_block(text: str, records: list[str]) -> tuple[str, list[str]]:
    """`records` one after the other in this order, where the first of them stood (else at the end). pg_hba
    takes the first line that matches, so "these may, then these may not, then everyone else may" holds only
    as one block. A line with the same fields as one of them (or the `host` twin of a `hostssl` one) is taken
    to be it; the other lines stay as they are."""
    wanted = [str(pghba.HBARecord.parse(r)) for r in records]
    same = {tuple(w.split()) for w in wanted} | {tuple(t) for w in wanted if (t := _host_twin(w.split()))}
    lines = text.splitlines(True)
    ours = [i for i, l in enumerate(lines) if tuple(_record_fields(l)) in same]
    at = ours[0] if ours else len(lines)
    kept = [l for i, l in enumerate(lines) if i not in ours]
    if kept[:at] and not kept[at - 1].endswith("\n"):
        kept[at - 1] += "\n"
    new = "".join(kept[:at] + [w + "\n" for w in wanted] + kept[at:])
    return (text, []) if new == text else (new, changed_lines(text, new))
