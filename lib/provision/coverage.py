"""How much of the guide a reader sees: each command, SQL statement, setting and pg_hba line of
the guide's Steps 1-39 and Quick Reference, looked for in the code and stored outputs of the
same step in notebooks 01 and 02.

    python -m lib.provision.coverage [--missing]

Counting rules (what is an item, and what counts as seen):
- Items come from the guide's code blocks under each `### Step N` heading: ```bash lines, ```sql
  statements (split at `;`), and lines of unlabelled blocks that are settings (`name = value`)
  or pg_hba lines (`host …`). Output blocks (tables, progress lines) are neither and are skipped,
  and so is session plumbing: `sudo -i -u postgres`, a bare `psql`, `exit`, `\\q`, `\\c db`, `\\du`
  (its result is shown), `ip a`. `sudo nano FILE` is the item `edit FILE`. The Quick Reference
  table's commands count for notebook 02 as a whole.
- Seen: the item, normalised, is a substring of the step's notebook text (its cells' code and
  stored outputs, and in an appendix the indented lines under a line that starts `Step N`),
  normalised the same way. Normalising: the guide's addresses become the lab's,
  PostgreSQL 16 paths 15, secrets `********`; `sudo ` prefixes, quotes, `;` and case are dropped;
  `apt-get` reads as `apt`, `ALTER USER` as `ALTER ROLE` (the same statement); whitespace squeezed.
- Nothing else is mapped: where the notebooks do something else on purpose (scram instead of
  md5, no password in pgpool.conf, pool_hba limited to the client network, columns chosen for
  stable output), the guide's item counts as not seen.
"""
from __future__ import annotations

import re
import sys

import nbformat

from lib import REPO
from lib.provision import runbook

GUIDE = REPO / "tests" / "data" / "replication-and-pgpool-guide.md"
NOTEBOOKS = ["01-streaming-replication.ipynb", "02-pgpool.ipynb"]
ADDRESSES = {"172.16.93.132": "10.213.93.132", "172.16.93.133": "10.213.93.133", "172.16.93.134": "10.213.93.134"}
PLUMBING = re.compile(r"^(sudo -i -u postgres|psql|exit|\\q|\\c \w+|\\du|ip a)$")
SECRETS = ("replica123", "postgres123", "pgpool123")
#: in an appendix's output, a line that names a step and the indented lines under it (the guide's md5 way)
APPENDIX_SECTION = re.compile(r"^Step (\d+)\b.*\n((?:    .*(?:\n|$))*)", re.M)


def normalise(text: str) -> str:
    for guide, lab in ADDRESSES.items():
        text = text.replace(guide, lab)
    for secret in SECRETS:
        text = text.replace(secret, "********")
    text = re.sub(r"/16/main", "/15/main", text)
    text = re.sub(r"(?m)^\s*sudo ", "", text)
    text = text.replace("apt-get", "apt").replace("ALTER USER", "ALTER ROLE")
    text = text.replace("'", "").replace('"', "").replace(";", "").lower()
    return " ".join(text.split())


def guide_items() -> dict[str, list[str]]:
    """{'Step 1': [items], …, 'Quick Reference': [commands]}"""
    text = GUIDE.read_text()
    items: dict[str, list[str]] = {}
    for m in re.finditer(r"^### Step (\d+) — .*?$(.*?)(?=^### |^# |\Z)", text, re.M | re.S):
        found = []
        for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", m.group(2), re.M | re.S):
            if lang == "sql":
                body = "\n".join(l for l in body.splitlines() if not l.strip().startswith("--"))
                for statement in body.split(";"):
                    s = " ".join(statement.split())
                    for meta in re.findall(r"\\\w+(?: \w+)?", s):
                        s = s.replace(meta, "").strip()
                    if s:
                        found.append(s + ";")
            for line in body.splitlines() if lang != "sql" else []:
                line = line.strip()
                if not line or PLUMBING.match(line):
                    continue
                if lang == "bash":
                    nano = re.match(r"sudo nano (\S+)", line)
                    found.append(f"edit {nano.group(1)}" if nano else line)
                elif re.match(r"^\w+ = ", line) or re.match(r"^host\s", line):
                    found.append(line)
        items[f"Step {m.group(1)}"] = list(dict.fromkeys(found))
    quick = text[text.index("## Quick Reference Commands"):]
    items["Quick Reference"] = [c.replace("\\|", "|").split(" | tail")[0]
                                for c in re.findall(r"^\| `([^`]+)` \|", quick, re.M)]
    return items


def notebook_text() -> dict[str, str]:
    """Each step's code and stored outputs, normalised; 'Quick Reference': notebook 02 whole."""
    texts: dict[str, str] = {}
    for name in NOTEBOOKS:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        cells = {c.get("id"): c for c in nb.cells if c.cell_type == "code"}
        whole = []
        for unit in runbook.units(nb, name):
            parts = []
            for cid in unit.cell_ids:
                c = cells[cid]
                parts.append(c.source)
                for o in c.get("outputs", []):
                    parts.append(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"]))
            whole += parts
            if unit.number is not None:
                texts[f"Step {unit.number}"] = texts.get(f"Step {unit.number}", "") + " " + normalise("\n".join(parts))
            else:
                for number, section in APPENDIX_SECTION.findall("\n".join(parts)):
                    texts[f"Step {number}"] = texts.get(f"Step {number}", "") + " " + normalise(section)
        if name.startswith("02"):
            texts["Quick Reference"] = normalise("\n".join(whole))
    return texts


def coverage() -> tuple[int, int, list[tuple[str, str]]]:
    seen, total, missing = 0, 0, []
    texts = notebook_text()
    for step, items in guide_items().items():
        for item in items:
            total += 1
            if normalise(item) in texts.get(step, ""):
                seen += 1
            else:
                missing.append((step, item))
    return seen, total, missing


def main(argv: list[str]) -> int:
    seen, total, missing = coverage()
    print(f"{seen} of {total} of the guide's commands, SQL statements, settings and pg_hba lines are shown "
          f"in their step in notebooks 01-02: {seen / total:.0%}")
    if "--missing" in argv:
        for step, item in missing:
            print(f"  not seen  {step:<15} {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
