"""What every notebook does first: read its parameters and get its hosts."""
from __future__ import annotations

from lib import params as P
from lib.remote import Hosts


def start(**injected) -> Hosts:
    """Validate the parameters papermill injected (or params/lab.yaml when none were)
    and return the hosts. Nothing is connected yet: that happens on first use."""
    prm = P.load(**injected)
    kind = "the built-in lab" if prm.is_lab else "your own machines"
    print(f"Environment {prm.environment!r} ({kind}): "
          + ", ".join(f"{h.name} = {h.role} at {h.address}" for h in prm.all_hosts))
    return Hosts(prm)


def role_table(prm: P.Params) -> list[tuple[str, str, str, int]]:
    """The guide's Environment Setup table, from the parameters."""
    guide_names = {"primary": "Master", "standby": "Slave", "pgpool": "PgPool"}
    return [(guide_names[h.role], h.name, h.address,
             prm.pgpool["port"] if h.role == "pgpool" else prm.postgres["port"])
            for h in prm.all_hosts]
