"""Files on a host that hold a secret (.pgpass, pool_passwd, pcp.conf, the pgpool key): written only
when their text differs, their diffs masked, owned by postgres and readable by nobody else."""
from __future__ import annotations

import shlex

from lib import facts, ops, plan_secrets

#: who may read the files that hold secrets: pgpool runs as postgres, and nobody else reads them
SECRET_OWNER, SECRET_MODE = "postgres:postgres", "600"


def password_masked(fields_before: int):
    """How a diff may show a line of a password file whose password follows `fields_before` fields
    (`.pgpass`: host:port:database:user:, 4; `.pcppass`: host:port:user:, 3): everything after them masked.
    Counted from the left, skipping `\\:` as libpq and pcp do, so that a password holding an escaped colon
    is masked whole; a line with fewer fields is masked whole."""
    def masked(line: str) -> str:
        fields = i = 0
        while i < len(line) and fields < fields_before:
            if line[i] == "\\":
                i += 1
            elif line[i] == ":":
                fields += 1
            i += 1
        return (line[:i] if fields == fields_before else "") + plan_secrets.MASK
    return masked


PGPASS_MASKED, PCPPASS_MASKED = password_masked(4), password_masked(3)


def secret_file(step: ops.Step, remote, path: str, new, mask_line, what: str, by_hand=None) -> None:
    """A file that holds a secret: written only when its text differs, its diff masked; its owner
    and mode are put right on every run. `new`: the pieces of its text, or a function making them
    from its current text (None: absent). `by_hand`: how commands.sh changes it (ops.FileChange)."""
    found = remote.facts.get(facts.FileFact(path))
    access, old = found.access, found.text
    new = new(old) if callable(new) else new
    if old != plan_secrets.resolve(new, remote.params):
        step.do(ops.FileChange(remote, "root", path=path, old=old, new=new, owner=SECRET_OWNER, mode=SECRET_MODE,
                               mask_line=mask_line, by_hand=by_hand if old is not None else None))
        return
    step.note(remote, f"{path} already holds {what}")
    secret_access(step, remote, path, access)


def secret_access(step: ops.Step, remote, path: str, access: str | None = None) -> None:
    """chown/chmod a file that holds a secret when its owner or mode is not SECRET_OWNER/SECRET_MODE
    (`access`: its `stat -c '%U:%G %a'`, read here when not given)."""
    f = shlex.quote(path)
    if access is None:
        access = remote.facts.get(facts.FileFact(path)).access or "absent"
    if access != f"{SECRET_OWNER} {SECRET_MODE}":
        step.do(ops.Command(remote, "root", f"chown {SECRET_OWNER} {f} && chmod {SECRET_MODE} {f}",
                            summary=f"{path}: {access} -> {SECRET_OWNER} {SECRET_MODE}"))
