"""Files on a host that hold a secret (.pgpass, pool_passwd, pcp.conf, the pgpool key): written only
when their text differs, their diffs masked, owned by postgres and readable by nobody else."""
from __future__ import annotations

import shlex

from lib import facts, ops, plan_secrets

#: who may read the files that hold secrets: pgpool runs as postgres, and nobody else reads them
SECRET_OWNER, SECRET_MODE = "postgres:postgres", "600"


def last_field_masked(line: str) -> str:
    """A `.pgpass`-shaped line (`…:secret`) as a diff may show it."""
    return line.rsplit(":", 1)[0] + ":" + plan_secrets.MASK


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
