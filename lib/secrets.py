"""Secrets come from environment variables, never from parameter files or notebooks.

Only the built-in lab may fall back to demo values (the guide's own passwords), so a
newcomer can run it with no set-up; a real environment without the variable stops with
an error that names it.
"""
from __future__ import annotations

import os

from lib.params import Params

#: name -> (environment variable, the lab's demo value, what it is for)
SECRETS: dict[str, tuple[str, str | None, str]] = {
    "replication": ("PGGUIDE_REPLICATION_PASSWORD", "replica123", "the replicator role (Part 1)"),
    "postgres": ("PGGUIDE_POSTGRES_PASSWORD", "postgres123", "the postgres role (Part 2)"),
    "pgpool": ("PGGUIDE_PGPOOL_PASSWORD", "pgpool123", "the pgpool role (Part 2)"),
    "pgpool_key": ("PGGUIDE_PGPOOL_KEY", "pgpool-lab-key", "the AES key that encrypts pool_passwd (Part 2)"),
    "sudo": ("PGGUIDE_SUDO_PASSWORD", None, "sudo on the hosts, where sudo asks for one"),
}


class MissingSecret(LookupError):
    pass


def secret(name: str, params: Params, *, required: bool = True) -> str | None:
    variable, demo, purpose = SECRETS[name]
    value = os.environ.get(variable)
    if value:
        return value
    if params.is_lab and demo is not None:
        return demo
    if required:
        raise MissingSecret(f"set the environment variable {variable}: it holds the password for "
                            f"{purpose}. Secrets are never read from parameter files.")
    return None


def known_values(params: Params) -> list[str]:
    """Every secret value in force, longest first, for masking output."""
    values = {secret(n, params, required=False) for n in SECRETS}
    return sorted((v for v in values if v), key=len, reverse=True)


def mask(text: str, values: list[str]) -> str:
    for v in values:
        text = text.replace(v, "********")
    return text
