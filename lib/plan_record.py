"""Record what each guide step's planner read and planned, for the planners' tests without a lab
(tests/test_plans.py), as pyinfra's operation tests hold an operation to its facts.

`ci/record-plans [params/FILE.yaml]` provisions a fresh lab step by step from the registry
(lib.guide.STEPS), twice. For each step and each pass it keeps the facts the planners asked for
(lib.facts), host by host, and the plan they made; the second pass must plan nothing. A planner that
reads a host outside the facts layer is named instead: its plan depends on what no fixture holds.

Secrets never reach the file: each secret value of the run, and each verifier PostgreSQL stores for
it, is replaced by a placeholder that the tests fill with their own secrets.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

from lib import REPO, db, facts, guide, roles, secrets
from lib import params as P
from lib.remote import Hosts, Remote

#: where the recordings are, one file per parameter file's environment
FIXTURES = REPO / "tests" / "data" / "plans"

VALUE_TYPES = {t.__name__: t for t in (facts.File, facts.Rows, facts.Output)}


# --- secrets out, and back in ----------------------------------------------------------------------
def placeholders(params) -> dict[str, str]:
    """Each secret value of the run (and its verifiers) -> the placeholder that stands for it."""
    out = {}
    for name in secrets.REQUIRED:
        value = secrets.secret(name, params)
        out[value] = "${" + name + "}"
        out[hashlib.md5(value.encode()).hexdigest()] = "${md5plain:" + name + "}"      # pcp.conf's pg_md5
        if name in secrets.ROLES:
            role = secrets.ROLES[name][0]
            out[roles.md5_verifier(value, role)] = "${md5:" + name + "}"
    return out


def hide(text: str, found: dict[str, str]) -> str:
    for value, placeholder in sorted(found.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, placeholder)
    return text


def fill(text: str, params) -> str:
    """The placeholders replaced by the secrets of `params` (a SCRAM verifier is made afresh)."""
    for name in secrets.REQUIRED:
        value = secrets.secret(name, params)
        text = text.replace("${md5plain:" + name + "}", hashlib.md5(value.encode()).hexdigest())
        if name in secrets.ROLES:
            role = secrets.ROLES[name][0]
            text = text.replace("${md5:" + name + "}", roles.md5_verifier(value, role))
            text = text.replace("${scram:" + name + "}", roles.scram_verifier(value))
        text = text.replace("${" + name + "}", value)
    return text


def hide_scram(word: str, params) -> str:
    """A SCRAM verifier is salted: it is recognised by checking it against each secret, not by its text."""
    if word.startswith("SCRAM-SHA-256$"):
        for name, (role, _) in secrets.ROLES.items():
            if roles.verifier_matches(word, secrets.secret(name, params), role):
                return "${scram:" + name + "}"
    return word


#: pool_passwd's entries: a password encrypted with the pgpool key, which no fixture may hold either
AES = re.compile(r"AES[A-Za-z0-9+/=]+")


def hidden(value: Any, params, found: dict[str, str]) -> Any:
    """`value` (JSON data) with every secret replaced by its placeholder."""
    if isinstance(value, dict):
        return {k: hidden(v, params, found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hidden(v, params, found) for v in value]
    if isinstance(value, str):
        return AES.sub("${aes}", hide(hide_scram(value, params), found))
    return value


# --- answers as JSON --------------------------------------------------------------------------------
def dump(value: Any, params, found: dict[str, str]) -> dict:
    return {"type": type(value).__name__, "value": hidden(dataclasses.asdict(value), params, found)}


def load(entry: dict, params) -> Any:
    data = json.loads(fill(json.dumps(entry["value"]), params))
    if entry["type"] == "Rows":
        data["rows"] = tuple(tuple(r) for r in data["rows"])
    return VALUE_TYPES[entry["type"]](**data)


def as_edits(entries: dict[str, dict]) -> dict[str, dict]:
    """Each later version of a file stored as its line edits from the first version recorded (a 30 kB
    postgresql.conf differs from its next version by a few lines)."""
    first: dict[str, str] = {}
    out = {}
    for key, entry in entries.items():
        value = entry["value"]
        if entry["type"] != "File" or value["text"] is None:
            out[key] = entry
            continue
        base = first.setdefault(value["path"], key)
        if base == key:
            out[key] = entry
            continue
        old, new = entries[base]["value"]["text"].splitlines(True), value["text"].splitlines(True)
        edits = [[i1, i2, new[j1:j2]] for tag, i1, i2, j1, j2 in
                 difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes() if tag != "equal"]
        out[key] = {"type": "File", "value": {**value, "text": None}, "base": base, "edits": edits}
    return out


def from_edits(entries: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for key, entry in entries.items():
        if "base" not in entry:
            out[key] = entry
            continue
        lines = entries[entry["base"]]["value"]["text"].splitlines(True)
        for i1, i2, new in reversed(entry["edits"]):
            lines[i1:i2] = new
        out[key] = {"type": "File", "value": {**entry["value"], "text": "".join(lines)}}
    return out


def params_of(path: Path):
    """The parameters a recording was made with."""
    return P.load(REPO / json.loads(path.read_text())["params"])


def read(path: Path, params) -> dict[str, dict[int, dict]]:
    """A recording as {"before"|"after": {step number: {"facts": {host: {key: value}}, "plan", "outside",
    "clone_decision"}}}, the answers typed and the placeholders filled with `params`' secrets."""
    data = json.loads(path.read_text())
    answers = from_edits({k.split()[1]: v for k, v in data.items() if k.startswith("answer ")})
    out: dict[str, dict[int, dict]] = {"before": {}, "after": {}}
    for name, step in data.items():
        when, _, number = name.partition(" ")
        if when in out:
            step["facts"] = {host: {tuple(key): load(answers[i], params) for key, i in pairs}
                             for host, pairs in step["facts"].items()}
            out[when][int(number)] = step
    return out


def answer_id(entry: dict) -> str:
    """Answers repeat from step to step (postgresql.conf is read by five): each is stored once, under this."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:12]


# --- recording ---------------------------------------------------------------------------------------
class Watch:
    """The facts each host answered, and the reads that went around the facts layer, while planning."""

    def __init__(self, env: Hosts):
        self.env, self.outside, self.planning = env, [], False
        self._run, self._connect = Remote.run, db.connect
        watch = self

        def run(remote, command, **kw):
            if watch.planning and not facts.is_batch(command):
                watch.outside.append(f"{remote.host.name}: {command.splitlines()[0][:100]}")
            return watch._run(remote, command, **kw)

        def connect(params, host, **kw):
            if watch.planning:
                watch.outside.append(f"{host.name}: a session as {kw.get('user')} to {kw.get('dbname', 'postgres')}")
            return watch._connect(params, host, **kw)
        Remote.run, db.connect = run, connect

    def close(self) -> None:
        Remote.run, db.connect = self._run, self._connect


def decision(env: Hosts) -> dict | None:
    """Step 7's decision, which Steps 8-11 follow (env.clone_decision), as the names it holds."""
    d = env.clone_decision
    return None if d is None else {"standbys": [s.host.name for s in d.standbys], "proofs": d.proofs, "refused": d.refused}


def record_pass(env: Hosts, watch: Watch, found: dict[str, str], store: dict) -> dict:
    steps = {}

    def kept(value) -> str:
        entry = dump(value, env.params, found)
        store[answer_id(entry)] = entry
        return answer_id(entry)
    for gs in guide.STEPS:
        facts.stale()
        for r in env.all:
            r.facts.forget()
        watch.outside.clear()
        record = {"facts": {}, "plan": [], "outside": watch.outside, "clone_decision": decision(env)}
        for planner in gs.planners:          # one after another: a step's second planner may need the first's work
            watch.planning = True
            try:
                planned = planner(env)
            finally:
                watch.planning = False
            for r in env.all:
                known = record["facts"].setdefault(r.host.name, [])
                known += [[list(k), kept(v)] for k, v in r.facts.known().items()]
            record["plan"] += [hide(line, found) for line in planned.preview()]
            planned.apply()
        record["facts"] = {h: a for h, a in record["facts"].items() if a}
        steps[str(gs.number)] = {**record, "outside": list(watch.outside)}
        print(f"Step {gs.number}: {len(steps[str(gs.number)]['plan'])} actions, "
              f"{len(watch.outside)} reads outside the facts", file=sys.stderr)
    return steps


def main(argv: list[str]) -> int:
    params = P.load(argv[0] if argv else None)
    found = placeholders(params)
    env = Hosts(params, purpose="recording the planners' facts", whole_run=True)
    watch = Watch(env)
    store: dict = {}
    try:
        before = record_pass(env, watch, found, store)
        after = record_pass(env, watch, found, store)
    finally:
        watch.close()
        env.close()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / f"{params.environment}.json"
    steps = {"before": before, "after": after}
    source = str(Path(argv[0]).resolve().relative_to(REPO)) if argv else "params/lab.yaml"
    out.write_text("{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in [("params", source),
        *((f"{when} {n}", step) for when, by_number in steps.items() for n, step in by_number.items()),
        *((f"answer {i}", e) for i, e in as_edits(store).items())]) + "\n}\n")
    print(f"recorded {len(before)} steps into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
