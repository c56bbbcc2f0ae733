"""What every notebook does first: read its parameters and get its hosts."""
from __future__ import annotations

import atexit

from lib import REPO, facts
from lib import params as P
from lib.remote import Hosts


def start(chapter: str, **injected) -> Hosts:
    """Validate the parameters papermill injected (or params/lab.yaml when none were)
    and return the hosts. Nothing is connected yet: that happens on first use, when the facts the
    last run of this notebook (`chapter`, its file name) asked of a host are asked with the first question
    (lib.facts: one round trip where a run changes nothing); what it asks is kept for the next when the
    kernel ends."""
    prm = P.load(**injected)
    kind = "the built-in lab" if prm.is_lab else "your own machines"
    print(f"Environment {prm.environment!r} ({kind}): "
          + ", ".join(f"{h.name} = {h.role} at {h.address}" for h in prm.all_hosts))
    env = Hosts(prm)
    memory = facts_asked(prm)
    recalled = facts.recall(memory, chapter)
    for r in env.all:
        r.facts.expect(recalled.get(r.host.name, []))
    atexit.register(facts.remember, memory, chapter, env.all)
    return env


def facts_asked(prm: P.Params):
    """Where the facts asked of an environment's hosts are kept between runs: keys, never answers."""
    return REPO / "runs" / prm.environment / "facts-asked.json"


def role_table(prm: P.Params) -> list[tuple[str, str, str, int]]:
    """The guide's Environment Setup table, from the parameters."""
    guide_names = {"primary": "Master", "standby": "Slave", "pgpool": "PgPool"}
    return [(guide_names[h.role], h.name, h.address,
             prm.pgpool["port"] if h.role == "pgpool" else prm.postgres["port"])
            for h in prm.all_hosts]
