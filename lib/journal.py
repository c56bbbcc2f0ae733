"""The step journal: which hosts each step talked to and what it changed.

`ci/provision` sets PGGUIDE_JOURNAL to a file before it starts the notebooks' kernel; lib
appends one JSON line per host contacted and per action applied (lib.ops), and the provisioner
reads the lines a cell added after the cell ran. That gives the progress lines (changed / in place) and summary.json without
adding anything to the notebooks' outputs. In JupyterLab or under nbval the variable is not
set and nothing is written.

An applied action carries its masked transcript line and its commands.sh form, in which
secrets are ${PGGUIDE_...} references: never a secret value.
"""
from __future__ import annotations

import json
import os

ENV = "PGGUIDE_JOURNAL"


def _append(event: dict) -> None:
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")


def contacted(host: str) -> None:
    """A step ran something on (or connected to) `host`."""
    _append({"host": host})


def facts_read(host: str) -> None:
    """The planners' facts were read on `host`: one SSH round trip (lib.facts)."""
    _append({"host": host, "facts_read": 1})


def applied(action: dict) -> None:
    """A step applied an action (lib.ops.Action.record(): host, user, what, shown, bash)."""
    _append({**action, "applied": True})


def verified(describe: str, evidence: str) -> None:
    """A step's verification passed, showing `evidence` (as the notebook prints it)."""
    _append({"verified": describe, "evidence": evidence})


def read(path: str, offset: int = 0) -> tuple[list[dict], int]:
    """Events written since `offset` (a byte position), and the new offset."""
    try:
        with open(path, encoding="utf-8") as f:
            f.seek(offset)
            text = f.read()
    except FileNotFoundError:
        return [], offset
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()], offset + len(complete.encode())
