"""Running commands on a host over SSH: as the admin user, as root, or as postgres (Remote), and the
environment's hosts by role (Hosts). lib/ops builds steps from these.

Every failure raises StepFailed naming the host, the command, the exit code and stderr,
with a hint of what to check. Secret values are masked in everything shown.
"""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paramiko
from fabric import Connection

from lib import facts, hosts, journal, secrets
from lib.lock import ClusterLock
from lib.params import Host, Params

if TYPE_CHECKING:
    from lib.clone_guard import CloneDecision


#: after a command's exit status, how long to wait for the end of its output (the channel's EOF)
EOF_WAIT_S = 1.0


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
def sudo_with_password(user: str, inner: str) -> str:
    """Shell for a host where sudo may ask: the password arrives as stdin's first line and the host's shell
    reads it itself. Only a sudo that asks gets it (fed before the rest of stdin); where sudo would not ask
    (cached credentials, NOPASSWD for that user) the command runs with `sudo -n` and its own input alone.
    Sent straight to `sudo -S`, a sudo that did not ask left the password to the command: psql ran it as SQL,
    and the server logged it."""
    return (f"IFS= read -r p; if sudo -n -u {user} true 2>/dev/null; then unset p; sudo -n -H -u {user} {inner}; "
            f"else {{ printf '%s\\n' \"$p\"; unset p; cat; }} | sudo -S -p '' -H -u {user} {inner}; fi")
#: echoed by psql after the SQL it was given: its SQL arrived whole, and ran to the end. The ";"
#: before it sends a last statement left without one (psql runs a backslash command at once, but
#: sends an unterminated statement only at the end of its input).
PSQL_END = "pgguide: end of input"


def whole_input(result: Result, label: str) -> Result:
    """psql's result without the end-of-input line. A psql that exits 0 without printing it read
    less SQL than it was sent: that must never pass for an empty answer."""
    lines = result.stdout.splitlines(keepends=True)
    if lines and lines[-1].rstrip("\n") == PSQL_END:
        return Result(result.command, result.exit_code, "".join(lines[:-1]), result.stderr)
    if result.ok:
        raise StepFailed(f"{label}: psql exited 0 without reaching the end of its SQL: its input was cut "
                         "short on the way (SSH or sudo). Nothing it printed can be trusted; run the step again.")
    return result


class Remote:
    """One host: a lazily opened, reused SSH connection and the ways to run commands."""

    def __init__(self, params: Params, host: Host, *, read_only: bool = False):
        self.params = params
        self.host = host
        # read_only: checking, not provisioning (ci/provision --check). Edits are planned and
        # not written (lib.ops refuses to apply a plan on a read-only host), and psql sessions are read-only.
        self.read_only = read_only
        self._conn: Connection | None = None
        self._unreachable: Exception | None = None
        self._sudo_needs_password: bool | None = None
        self._masked = secrets.known_values(params)
        self.cluster_lock = None        # set by Hosts: taken before the first change (lib.lock)
        self.facts = facts.HostFacts(self)

    # -- connection ---------------------------------------------------------------------
    @property
    def conn(self) -> Connection:
        if self._unreachable is not None:       # once per run: each step after it fails at once, same reason
            raise self._unreachable
        if self._conn is None:
            try:
                self._conn = hosts.connect(self.params, self.host)
            except hosts.HostUnreachable as e:
                self._unreachable = e
                raise
        return self._conn

    @property
    def unreachable(self) -> Exception | None:
        """Why SSH to this host failed earlier in this run, if it did."""
        return self._unreachable

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __repr__(self) -> str:
        return f"<Remote {self.host.label}>"

    # -- running --------------------------------------------------------------------------
    def run(self, command: str, *, user: str | None = None, stdin: str | None = None,
            check: bool = True, hint: str | None = None, timeout: float | None = None,
            mask: bool = True, journaled: bool = True, reads_only: bool = False) -> Result:
        """Run `command` with bash on the host, as the admin user (user=None), or as
        `user` through sudo ("root", "postgres"). Raise StepFailed unless it exits 0
        (or check=False). mask=False keeps secret values in stdout: only for reading a
        file that is edited and written back, never for printing. Unless it `reads_only`, the
        command may change the host: the facts read so far are read again (lib.facts)."""
        if not reads_only:
            facts.stale()
        wrapped, stdin = self._wrap(command, user, stdin)
        exit_code, out, err = self._exec(wrapped, stdin, timeout or self.params.ssh["command_timeout"], journaled)
        result = Result(command, exit_code, self.mask(out) if mask else out, self.mask(err))
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
        # A check's sessions cannot write, whatever its SQL says.
        read_only = "PGOPTIONS='-c default_transaction_read_only=on' " if self.read_only else ""
        result = self.postgres(f"{read_only}{self.params.pg_bin('psql')} {flags} -p {port} -d {shlex.quote(database)}",
                               stdin=f"{sql}\n;\n\\echo {PSQL_END}\n", **kw)
        return whole_input(result, self.host.label)

    def read_file(self, path: str, *, user: str = "root") -> str:
        """A file's exact text (secrets not masked: do not print it)."""
        return self.run(f"cat -- {shlex.quote(path)}", user=user, mask=False, reads_only=True).stdout

    def mask(self, text: str) -> str:
        return secrets.mask(text, self._masked)

    # -- internals -----------------------------------------------------------------------
    def _exec(self, command: str, stdin: str | None, timeout: float | None,
              journaled: bool = True) -> tuple[int, str, str]:
        """One command on the fabric connection's SSH transport. (Fabric's own run() feeds
        stdin one byte per 10 ms, which made writing a 30 kB file take five minutes.)"""
        if journaled:           # the hosts a step used, for its progress line and summary
            journal.contacted(self.host.name)
        transport = self.conn.client.get_transport()      # unreachable: HostUnreachable, as it is
        try:
            channel = transport.open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
        except (TimeoutError, OSError, paramiko.SSHException) as e:
            raise StepFailed(f"{self.host.label} stopped answering: no reply within {timeout} s "
                             f"({type(e).__name__}). Check that the host is up and reachable.") from None
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        exited = None
        while True:
            got = False
            while channel.recv_ready():
                out += channel.recv(65536); got = True
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536); got = True
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                # sshd may send the exit status before the last output: the output is whole at the channel's
                # EOF (seen once: a 3 kB postgresql.conf read back empty under load). A background process that
                # keeps the output open sends no EOF: then what came within EOF_WAIT_S is all there is.
                exited = exited or time.monotonic()
                if channel.eof_received or time.monotonic() - exited > EOF_WAIT_S:
                    break
            if deadline is not None and time.monotonic() > deadline:
                channel.close()
                raise StepFailed(f"{self.host.label}: `{self.mask(command)[:200]}` did not finish in {timeout} s: "
                                 "the host stopped answering, or the command hangs there")
            if not got:
                time.sleep(0.002)
        code = channel.recv_exit_status()
        channel.close()
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    def _wrap(self, command: str, user: str | None, stdin: str | None) -> tuple[str, str | None]:
        if user is None:
            return f"bash -c {shlex.quote(command)}", stdin
        # cd to the target user's home so tools like psql do not warn about the cwd
        inner = f"bash -c {shlex.quote('cd ~ 2>/dev/null; ' + command)}"
        if not self.sudo_password_needed():
            return f"sudo -n -H -u {user} {inner}", stdin
        password = secrets.secret("sudo", self.params)
        return sudo_with_password(user, inner), password + "\n" + (stdin or "")

    def sudo_password_needed(self) -> bool:
        if self._sudo_needs_password is None:
            code, _, stderr = self._exec("sudo -n true", None, 30)
            self._sudo_needs_password = code != 0
            if code != 0 and not secrets.secret("sudo", self.params, required=False):
                raise StepFailed(
                    f"{self.host.label}: sudo asks {self.params.ssh['user']} for a password "
                    f"({stderr.strip()}). Set {secrets.SECRETS['sudo'][0]}, or allow "
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

    def __init__(self, params: Params, *, read_only: bool = False, purpose: str = "a notebook run",
                 whole_run: bool = False):
        self.params = params
        self.primary = Remote(params, params.primary, read_only=read_only)
        self.standbys = [Remote(params, h, read_only=read_only) for h in params.standbys]
        self.pgpool = Remote(params, params.pgpool_host, read_only=read_only)
        self.read_only = read_only
        self.lock = ClusterLock(self.primary, purpose, per_step=not whole_run)
        for r in self.all:
            r.cluster_lock = self.lock
        #: Step 7's decision, which Steps 8-11 follow (lib.part1.to_clone)
        self.clone_decision: CloneDecision | None = None
        #: the guide's md5 way, planned on read-only connections beside the default way, and its plans by step
        #: number, which the notebook's appendix shows (lib.postgres.guides_md5_way)
        self.md5_way: Hosts | None = None
        self.md5_previews: dict[int, list[str]] = {}

    @property
    def standby(self) -> Remote:
        """The first standby: the guide's VM2."""
        return self.standbys[0]

    @property
    def all(self) -> list[Remote]:
        return [self.primary, *self.standbys, self.pgpool]

    def close(self) -> None:
        self.lock.release()
        for r in self.all:
            r.close()
        if self.md5_way is not None:
            self.md5_way.close()
