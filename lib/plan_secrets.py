"""Secrets inside plans: a plan holds `Secret` pieces, never a secret's text. A piece is shown as
`********`, resolved to its value only to be sent to the host (on stdin), and written into commands.sh
as a `${PGGUIDE_...}` reference computed in bash."""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from typing import Iterable, Union

from lib import roles, secrets

MASK = "********"


@dataclass(frozen=True)
class Secret:
    """A secret's value in some form: `plain`, `sql` (an SQL string literal), `pgpass` (a .pgpass
    field: \\ and : escaped), `md5` (md5 of the
    value, as pcp.conf holds it), `md5:<user>` (md5 of value+user, as pg_md5 writes it) or
    `verifier:<role>` (an SQL literal of the verifier PostgreSQL stores for the role, SCRAM or md5
    as postgres.auth_method says: the server never sees the password)."""
    name: str
    form: str = "plain"

    @property
    def variable(self) -> str:
        return secrets.SECRETS[self.name][0]

    def value(self, params) -> str:
        v = secrets.secret(self.name, params)
        if self.form == "sql":
            return "'" + v.replace("'", "''") + "'"
        if self.form == "pgpass":
            return v.replace("\\", "\\\\").replace(":", "\\:")
        if self.form == "md5":
            return hashlib.md5(v.encode()).hexdigest()
        if self.form.startswith("md5:"):
            return hashlib.md5((v + self.form[4:]).encode()).hexdigest()
        if self.form.startswith("verifier:"):
            role = self.form.split(":", 1)[1]
            md5 = params.postgres["auth_method"] == "md5"
            return "'" + (roles.md5_verifier(v, role) if md5 else roles.scram_verifier(v)) + "'"
        return v

    def shown(self) -> str:
        return f"'{MASK}'" if self.form == "sql" or self.form.startswith("verifier:") else MASK

    def bash(self) -> str:
        """The same value computed in bash from the environment variable (commands.sh)."""
        ref = f'"${{{self.variable}}}"'
        if self.form == "sql":
            return f"$(sql_literal {ref})"
        if self.form == "pgpass":
            return f"$(pgpass_field {ref})"
        if self.form == "md5":
            return f"$(md5_of {ref})"
        if self.form.startswith("md5:"):
            return f"$(md5_of {ref}{shlex.quote(self.form[4:])})"
        if self.form.startswith("verifier:"):
            return f"$(pg_verifier {self.variable} {shlex.quote(self.form.split(':', 1)[1])})"
        return f"${{{self.variable}}}"


Piece = Union[str, Secret]


def text(*pieces: Piece) -> tuple[Piece, ...]:
    return tuple(pieces)


def resolve(pieces: Iterable[Piece], params) -> str:
    return "".join(p.value(params) if isinstance(p, Secret) else p for p in pieces)


def masked(pieces: Iterable[Piece]) -> str:
    return "".join(p.shown() if isinstance(p, Secret) else p for p in pieces)


def has_secret(pieces: Iterable[Piece]) -> bool:
    return any(isinstance(p, Secret) for p in pieces)
