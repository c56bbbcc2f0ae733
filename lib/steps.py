"""Running a step's commands on a host: as the admin user, as root, or as postgres.

Every failure raises StepFailed naming the host, the command, the exit code and stderr,
with a hint of what to check. Secret values are masked in everything shown.
"""
from __future__ import annotations

import io
import shlex
from dataclasses import dataclass

from fabric import Connection

from lib import hosts, secrets
from lib.params import Host, Params


class StepFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Result:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


SUDO_PROMPT = "[pgguide sudo password]"


class Remote:
    """One host: a lazily opened, reused SSH connection and the ways to run commands."""

    def __init__(self, params: Params, host: Host):
        self.params = params
        self.host = host
        self._conn: Connection | None = None
        self._sudo_needs_password: bool | None = None
        self._masked = secrets.known_values(params)

    # -- connection ---------------------------------------------------------------------
    @property
    def conn(self) -> Connection:
        if self._conn is None:
            self._conn = hosts.connect(self.params, self.host)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"<Remote {self.host.label}>"

    # -- running --------------------------------------------------------------------------
    def run(self, command: str, *, user: str | None = None, stdin: str | None = None,
            check: bool = True, hint: str | None = None, timeout: float | None = None) -> Result:
        """Run `command` with bash on the host, as the admin user (user=None), or as
        `user` through sudo ("root", "postgres"). Raise StepFailed unless it exits 0
        (or check=False)."""
        wrapped, stdin = self._wrap(command, user, stdin)
        raw = self.conn.run(wrapped, hide=True, warn=True, pty=False, timeout=timeout,
                            in_stream=io.StringIO(stdin) if stdin is not None else False)
        result = Result(command, raw.exited, self.mask(raw.stdout), self.mask(raw.stderr))
        if check and not result.ok:
            raise StepFailed(self.describe_failure(result, user, hint))
        return result

    def sudo(self, command: str, **kw) -> Result:
        return self.run(command, user="root", **kw)

    def postgres(self, command: str, **kw) -> Result:
        return self.run(command, user="postgres", **kw)

    def psql(self, sql: str, *, database: str = "postgres", tuples: bool = True, **kw) -> Result:
        """psql as the postgres OS user over the local socket, SQL fed on stdin so that
        passwords in it never appear in a process list. tuples=True: unaligned, no headers."""
        flags = "-X -v ON_ERROR_STOP=1 -q" + (" -A -t -F '|'" if tuples else "")
        port = self.params.postgres["port"]
        return self.postgres(f"psql {flags} -p {port} -d {shlex.quote(database)}", stdin=sql, **kw)

    def mask(self, text: str) -> str:
        return secrets.mask(text, self._masked)

    # -- internals -----------------------------------------------------------------------
    def _wrap(self, command: str, user: str | None, stdin: str | None) -> tuple[str, str | None]:
        if user is None:
            return f"bash -c {shlex.quote(command)}", stdin
        # cd to the target user's home so tools like psql do not warn about the cwd
        inner = f"bash -c {shlex.quote('cd ~ 2>/dev/null; ' + command)}"
        if not self._sudo_password_needed():
            return f"sudo -n -H -u {user} {inner}", stdin
        password = secrets.secret("sudo", self.params)
        # sudo -S reads exactly one line for the password; the rest of stdin is the command's.
        return f"sudo -S -p '' -H -u {user} {inner}", password + "\n" + (stdin or "")

    def _sudo_password_needed(self) -> bool:
        if self._sudo_needs_password is None:
            probe = self.conn.run("sudo -n true", hide=True, warn=True, in_stream=False)
            self._sudo_needs_password = not probe.ok
            if not probe.ok and not secrets.secret("sudo", self.params, required=False):
                raise StepFailed(
                    f"{self.host.label}: sudo asks {self.params.ssh['user']} for a password "
                    f"({probe.stderr.strip()}). Set {secrets.SECRETS['sudo'][0]}, or allow "
                    "passwordless sudo for that user.")
        return self._sudo_needs_password

    def describe_failure(self, result: Result, user: str | None, hint: str | None) -> str:
        who = {None: self.params.ssh["user"]}.get(user, user)
        stderr = result.stderr.strip() or "(nothing on stderr)"
        if "incorrect password" in stderr or "Sorry, try again" in stderr:
            hint = hint or f"the sudo password in {secrets.SECRETS['sudo'][0]} is wrong"
        return (f"{self.host.label}: `{self.mask(result.command)}` as {who} exited {result.exit_code}\n"
                f"stderr: {stderr[-2000:]}\n"
                f"What to check: {hint or self._by_hand()}")

    def _by_hand(self) -> str:
        login = (f"ci/lab ssh {self.host.name}" if self.params.is_lab
                 else f"ssh {self.params.ssh['user']}@{self.host.address}")
        return f"the error above; run the command by hand after `{login}` to see more"


class Hosts:
    """The environment's hosts by role, each a Remote with one reused connection."""

    def __init__(self, params: Params):
        self.params = params
        self.primary = Remote(params, params.primary)
        self.standbys = [Remote(params, h) for h in params.standbys]
        self.pgpool = Remote(params, params.pgpool_host)

    @property
    def standby(self) -> Remote:
        """The first standby: the guide's VM2."""
        return self.standbys[0]

    @property
    def all(self) -> list[Remote]:
        return [self.primary, *self.standbys, self.pgpool]

    def close(self) -> None:
        for r in self.all:
            r.close()
