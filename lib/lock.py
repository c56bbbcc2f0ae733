"""One run at a time per cluster: a lock held on the primary host by whatever writes.

Two runs against one cluster would interleave read-modify-write edits and base backups. So
the first run that changes something takes a lock on the primary (where every run must
reach): `ci/provision` and `--teardown` for their whole run, a notebook run on its own
(papermill, JupyterLab) while each step changes something.
The notebooks that `ci/provision` runs inherit its lock through PGGUIDE_LOCK.

The lock is a directory, `/run/lock/pgguide.lock` (mkdir is atomic, and /run is emptied at
boot), holding one line: the holder's machine (host name, machine-id and boot id), pid, start time
and purpose. A second run exits naming that holder. A lock whose holder was on this machine and is
gone (a killed run, or one from before this machine's last boot) is taken over, and the takeover is said.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import shlex
import socket
from dataclasses import dataclass

from lib.show import CheckFailed

LOCK_DIR = "/run/lock/pgguide.lock"
ENV_VARIABLE = "PGGUIDE_LOCK"


class LockHeld(CheckFailed):
    """Another run holds the cluster's lock."""


@dataclass(frozen=True)
class Holder:
    machine: str
    pid: int
    started: str
    purpose: str

    def line(self) -> str:
        return f"machine={self.machine} pid={self.pid} started={self.started} purpose={self.purpose}"

    @classmethod
    def parse(cls, line: str) -> "Holder | None":
        fields = dict(f.split("=", 1) for f in line.split(" ", 3) if "=" in f)
        try:
            return cls(fields["machine"], int(fields["pid"]), fields["started"], fields["purpose"])
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        return f"{self.purpose} (machine {self.machine}, pid {self.pid}, since {self.started})"

    def gone(self) -> bool:
        """The holder ran on this machine and its process no longer exists: the same machine-id and this
        boot, with its pid gone, or an earlier boot of this machine. A host name alone says nothing (cloned
        VMs and CI runners share one), and a holder line that names no machine-id is never taken over."""
        name, machine_id, boot = (self.machine.split(":") + ["", ""])[:3]
        here_name, here_id, here_boot = this_machine().split(":")
        if not machine_id or (name, machine_id) != (here_name, here_id):
            return False
        if boot != here_boot:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def _first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip().replace("-", "")
    except OSError:
        return ""


def this_machine() -> str:
    """host name:machine-id:boot id (the ids shortened to 12 hex digits): what tells two machines apart."""
    return ":".join([socket.gethostname(), _first_line("/etc/machine-id")[:12],
                     _first_line("/proc/sys/kernel/random/boot_id")[:12]])


def me(purpose: str) -> Holder:
    return Holder(this_machine(), os.getpid(), dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                  purpose.replace(" ", "_"))


class ClusterLock:
    """The lock of the cluster whose primary is `remote`; hold() is idempotent. `per_step`: held
    only while a step changes something (a notebook in JupyterLab may stay open for hours),
    else from the first change until release()."""

    def __init__(self, remote, purpose: str, *, per_step: bool = False):
        self.remote, self.purpose, self.per_step = remote, purpose, per_step
        self.holder: Holder | None = None
        self.took_over: Holder | None = None
        self._parent_holds = False

    @contextlib.contextmanager
    def changing(self):
        """Around the actions of one step."""
        had = self.holder is not None
        self.hold()
        try:
            yield
        finally:
            if self.per_step and not had:
                self.release()

    def held_by_parent(self) -> bool:
        """The run that started this notebook holds the lock (checked on the host once)."""
        if not self._parent_holds:
            inherited = Holder.parse(os.environ.get(ENV_VARIABLE, ""))
            self._parent_holds = inherited is not None and self.current() == inherited
        return self._parent_holds

    def current(self) -> Holder | None:
        out = self.remote.sudo(f"cat {LOCK_DIR}/holder 2>/dev/null || true", journaled=False).stdout.strip()
        return Holder.parse(out) if out else None

    def hold(self) -> None:
        if self.holder is not None or self.held_by_parent():
            return
        mine = me(self.purpose)
        for _ in range(2):
            out = self.remote.sudo(
                f"if mkdir {LOCK_DIR} 2>/dev/null; then echo {shlex.quote(mine.line())} > {LOCK_DIR}/holder; "
                f"echo acquired; else cat {LOCK_DIR}/holder 2>/dev/null || echo unreadable; fi",
                journaled=False).stdout.strip()
            if out == "acquired":
                self.holder = mine
                atexit.register(self.release)
                return
            other = Holder.parse(out)
            if other is not None and other.gone():
                self.remote.sudo(f"grep -qxF {shlex.quote(other.line())} {LOCK_DIR}/holder && rm -rf {LOCK_DIR}",
                                 check=False, journaled=False)
                self.took_over = other
                continue
            break
        where = f"{LOCK_DIR} on {self.remote.host.name}"
        raise LockHeld(f"another run is changing this cluster: {other.describe() if other else out} holds {where}.\n"
                       f"Likely fix: wait for it to finish. If that run is gone (its machine rebooted or lost), "
                       f"remove the lock: sudo rm -r {LOCK_DIR} on {self.remote.host.name}.")

    def release(self) -> None:
        """Remove the lock if it is still ours; safe to call twice."""
        if self.holder is None:
            return
        mine, self.holder = self.holder, None
        try:
            self.remote.sudo(f"grep -qxF {shlex.quote(mine.line())} {LOCK_DIR}/holder && rm -rf {LOCK_DIR}; true",
                             check=False, journaled=False)
        except Exception:       # at exit, with the host gone: the lock stays, and says who left it
            pass
