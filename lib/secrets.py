"""Secrets come from environment variables or from a secrets file outside the repository,
never from parameter files or notebooks.

Order: the environment variable, then the secrets file named by PGGUIDE_SECRETS_FILE
(`ci/provision --secrets FILE` sets it). Only the built-in lab, and only when no secrets
file is given, falls back to demo values (the guide's own passwords), so a newcomer can run
it with no set-up; anywhere else a missing secret stops with an error that names it.

A secrets file has one `VARIABLE=value` line per secret (blank lines and `#` comments are
allowed), uses only the variable names below, is readable by its owner only (like an SSH
key), and must not be inside the repository, where it could be committed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from lib import REPO
from lib.params import Params

#: name -> (environment variable, the lab's demo value, what it is for)
SECRETS: dict[str, tuple[str, str | None, str]] = {
    "replication": ("PGGUIDE_REPLICATION_PASSWORD", "replica123", "the replicator role (Part 1)"),
    "postgres": ("PGGUIDE_POSTGRES_PASSWORD", "postgres123", "the postgres role (Part 2)"),
    "pgpool": ("PGGUIDE_PGPOOL_PASSWORD", "pgpool123", "the pgpool role (Part 2)"),
    "app": ("PGGUIDE_APP_PASSWORD", "app12345", "the app role, an application's own through pgpool (Part 2)"),
    "pgpool_key": ("PGGUIDE_PGPOOL_KEY", "pgpool-lab-key", "the AES key that encrypts pool_passwd (Part 2)"),
    "sudo": ("PGGUIDE_SUDO_PASSWORD", None, "sudo on the hosts, where sudo asks for one"),
}
#: the roles whose passwords the secrets are (steps 1, 21, 22), with the attributes they need
ROLES: dict[str, tuple[str, str]] = {"replication": ("replicator", "REPLICATION LOGIN"),
                                     "postgres": ("postgres", "LOGIN"), "pgpool": ("pgpool", "LOGIN"),
                                     "app": ("app", "LOGIN")}
FILE_VARIABLE = "PGGUIDE_SECRETS_FILE"
#: the secrets every run needs; sudo's only where sudo asks for a password
REQUIRED = ("replication", "postgres", "pgpool", "app", "pgpool_key")


#: shorter secrets are refused: they are guessable, and masking them garbles every record
MIN_LENGTH = 8


class MissingSecret(LookupError):
    pass


class WeakSecret(ValueError):
    """A secret too short, or equal to a name that the records print anyway."""


class BadSecretsFile(ValueError):
    pass


def read_secrets_file(path: str | os.PathLike) -> dict[str, str]:
    """The file's VARIABLE=value pairs, after checking where it is and who can read it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BadSecretsFile(f"secrets file {path} does not exist")
    if path.resolve().is_relative_to(REPO.resolve()):
        raise BadSecretsFile(f"secrets file {path} is inside the repository, where it could be committed: "
                             "keep it elsewhere, e.g. ~/.config/pgpool-guide/<env>.secrets")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise BadSecretsFile(f"secrets file {path} can be read by others (mode {mode:o}): chmod 600 {path}")
    known = {v for v, _, _ in SECRETS.values()}
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in known:
            # never echo the line: it may hold a password
            raise BadSecretsFile(f"{path} line {number}: expected VARIABLE=value with VARIABLE one of "
                                 + ", ".join(sorted(known)))
        values[name] = value.strip()
    return values


_cache: dict[tuple, dict[str, str]] = {}


def _from_file() -> dict[str, str] | None:
    """The secrets file's values, read again only when the file changes (masking asks for
    every secret each time a host connection is made)."""
    path = os.environ.get(FILE_VARIABLE)
    if not path:
        return None
    try:
        st = Path(path).expanduser().stat()
        key = (path, st.st_mtime_ns, st.st_size, st.st_mode)
    except OSError:
        return read_secrets_file(path)             # raises the "does not exist" error
    if key not in _cache:
        _cache.clear()
        _cache[key] = read_secrets_file(path)
    return _cache[key]


def source(name: str, params: Params) -> str | None:
    """Where the secret comes from: 'environment', 'secrets file', 'lab demo value' or None."""
    variable, demo, _ = SECRETS[name]
    if os.environ.get(variable):
        return "environment"
    from_file = _from_file()
    if from_file is not None:
        return "secrets file" if from_file.get(variable) else None
    if params.is_lab and demo is not None:
        return "lab demo value"
    return None


def secret(name: str, params: Params, *, required: bool = True) -> str | None:
    variable, demo, purpose = SECRETS[name]
    where = source(name, params)
    if where == "environment":
        return os.environ[variable]
    if where == "secrets file":
        return _from_file()[variable]
    if where == "lab demo value":
        return demo
    if required:
        raise MissingSecret(f"set {variable}: it holds the password for {purpose}"
                            + (f" (it is not in the secrets file {os.environ[FILE_VARIABLE]})"
                               if os.environ.get(FILE_VARIABLE) else "")
                            + ". Secrets are never read from parameter files.")
    return None


def require_all(params: Params) -> dict[str, str]:
    """Every required secret's source; one error naming all that are missing."""
    missing = [SECRETS[n][0] for n in REQUIRED if source(n, params) is None]
    if missing:
        where = (f"in the environment or in the secrets file {os.environ[FILE_VARIABLE]}"
                 if os.environ.get(FILE_VARIABLE) else
                 "as environment variables, or in a secrets file (ci/provision --secrets FILE)")
        raise MissingSecret(f"missing secret{'s' if len(missing) > 1 else ''} {', '.join(missing)}: set "
                            f"{'them' if len(missing) > 1 else 'it'} {where}. "
                            "Secrets are never read from parameter files.")
    refuse_weak(params)
    return {SECRETS[n][0]: source(n, params) for n in REQUIRED}


def public_names(params: Params) -> set[str]:
    """Names every record prints: the roles, the SSH user, the hosts, the environment."""
    return {role for role, _ in ROLES.values()} | {params.ssh["user"], params.environment} | {
        n for h in params.all_hosts for n in (h.name, h.address)}


def refuse_weak(params: Params) -> None:
    """One error naming every secret we set that is shorter than MIN_LENGTH or equal to a
    public name (the lab's own demo values are known and allowed). sudo's password is the
    hosts' own, not ours to choose, so it is not judged."""
    names = {n.lower() for n in public_names(params)}
    weak = []
    for name in REQUIRED:
        value, where = secret(name, params, required=False), source(name, params)
        if value is None or where == "lab demo value":
            continue
        variable = SECRETS[name][0]
        if len(value) < MIN_LENGTH:
            weak.append(f"{variable} is shorter than {MIN_LENGTH} characters")
        elif value.lower() in names:
            weak.append(f"{variable} is a name the records print (a role, user or host name)")
    if weak:
        raise WeakSecret("; ".join(weak) + ": choose a longer secret of its own. Such a secret is easy to "
                         "guess, and hiding it in the run records would hide every occurrence of the word.")


def secret_forms(value: str, role: str | None = None) -> dict[str, str]:
    """The forms a secret can appear in, by name: as is, as an SQL literal's body ('' for '),
    escaped for a conninfo or for a shell, and its md5 forms, which are as good as the password
    (md5(password) as in pcp.conf, md5(password + role) as in pg_authid and pool_passwd).
    SCRAM verifiers are salted: a search adds the ones the servers actually store."""
    import hashlib
    import shlex
    forms = {"value": value, "SQL literal": value.replace("'", "''"),
             "conninfo": value.replace("\\", "\\\\").replace("'", "\\'"),
             ".pgpass field": value.replace("\\", "\\\\").replace(":", "\\:"),
             "shell word": shlex.quote(value).strip("'"),
             "md5(password)": hashlib.md5(value.encode()).hexdigest()}
    if role:
        forms[f"md5(password+{role})"] = hashlib.md5((value + role).encode()).hexdigest()
    return forms


def known_values(params: Params) -> list[str]:
    """Every secret value in force, and its escaped forms, longest first, for masking output."""
    values = set()
    for name in SECRETS:
        value = secret(name, params, required=False)
        if value:
            values |= set(secret_forms(value, ROLES.get(name, (None,))[0]).values())
    return sorted((v for v in values if v), key=len, reverse=True)


def mask(text: str, values: list[str]) -> str:
    for v in values:
        text = text.replace(v, "********")
    return text
