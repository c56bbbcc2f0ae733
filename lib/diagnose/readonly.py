"""How a diagnosis reads the hosts: only through this, and this cannot change anything.

A diagnosis runs on a cluster that misbehaves, often as root, so "the checks only read" must be a
property of the way they run, not a promise. A ReadOnlyHost runs

- a program from a short list of readers (cat, stat, grep, pg_lsclusters, pg_isready, …), its
  arguments quoted one by one: no shell, so no redirection, pipe or `;` can sneak a write in;
- SQL that is one SELECT, SHOW or WITH … SELECT statement, in a read-only transaction, and that
  calls none of the functions that act (pg_reload_conf, pg_terminate_backend, set_config, …).

Everything else is refused with NotReadOnly before it reaches the host.
"""
from __future__ import annotations

import re
import shlex

from lib.remote import Remote, Result


class NotReadOnly(RuntimeError):
    """A diagnosis tried something that could change a host."""


#: programs that only read; the pcp tools listed only report
READERS = frozenset({
    "cat", "stat", "test", "ls", "grep", "tail", "head", "sha256sum", "id", "hostname",
    "pg_lsclusters", "pg_isready", "pg_controldata", "psql",
    "systemctl", "journalctl", "ss", "ufw", "iptables", "nft",
    "pcp_node_info", "pcp_node_count", "pcp_pool_status", "pcp_proc_count",
})
#: subcommands (first argument) that read, for the programs that also act
READING_SUBCOMMANDS = {
    "systemctl": {"is-active", "is-enabled", "show", "status", "is-failed"},
    "ufw": {"status"},
    "iptables": {"-S", "-L", "--list", "--list-rules"},
    "nft": {"list"},
}
#: options that would make a reader write
WRITING_OPTIONS = {"grep": set(), "tail": {"-f", "--follow"}, "journalctl": {"--rotate", "--vacuum-size",
                   "--vacuum-time", "--vacuum-files", "--flush", "--sync"}}
#: functions that act, callable from a SELECT even in a read-only transaction
ACTING_FUNCTIONS = re.compile(
    r"\b(pg_reload_conf|pg_terminate_backend|pg_cancel_backend|set_config|pg_promote|pg_switch_wal|"
    r"pg_create_\w+|pg_drop_\w+|pg_rotate_logfile|pg_log_backend_memory_contexts|pg_wal_replay_\w+|"
    r"pg_backup_\w+|pg_start_backup|pg_stop_backup|pg_stat_reset\w*|pg_advisory\w*|pg_file_\w+|"
    r"lo_\w+|nextval|setval|pg_replication_origin_\w+|pg_logical_emit_message|pg_notify|dblink\w*|"
    r"pg_read_server_files|pg_sleep\w*|pg_current_xact_id|txid_current)\s*\(", re.I)
READING_STATEMENT = re.compile(r"^\s*(SELECT|SHOW|WITH)\b", re.I)
ACTING_KEYWORDS = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|ALTER|CREATE|DROP|GRANT|REVOKE|TRUNCATE|COPY|CALL|DO|"
                             r"VACUUM|ANALYZE|CLUSTER|REINDEX|LOCK|SET|RESET|CHECKPOINT|LISTEN|NOTIFY|INTO)\b", re.I)


def check_argv(argv: list[str]) -> None:
    """Raise NotReadOnly unless `argv` is a reader with reading arguments."""
    if not argv:
        raise NotReadOnly("an empty command")
    program = argv[0]
    if program not in READERS:
        raise NotReadOnly(f"`{program}` is not one of the programs a diagnosis may run ({', '.join(sorted(READERS))})")
    if program in READING_SUBCOMMANDS and (len(argv) < 2 or argv[1] not in READING_SUBCOMMANDS[program]):
        raise NotReadOnly(f"`{shlex.join(argv[:2])}` acts; a diagnosis may only run "
                          f"{', '.join(f'{program} {s}' for s in sorted(READING_SUBCOMMANDS[program]))}")
    writing = WRITING_OPTIONS.get(program, set()) & set(argv[1:])
    if writing:
        raise NotReadOnly(f"`{program} {' '.join(sorted(writing))}` is not a read")
    if program == "psql":
        raise NotReadOnly("psql runs through ReadOnlyHost.query, which checks the SQL")


def check_sql(sql: str) -> None:
    """Raise NotReadOnly unless `sql` is one reading statement that calls no acting function."""
    body = sql.strip().rstrip(";")
    unquoted = re.sub(r"'(?:[^']|'')*'", "''", body)        # a name in a string literal is data
    if ";" in unquoted or "\\" in unquoted:                  # a second statement, or a psql meta-command
        raise NotReadOnly(f"one statement at a time: {sql!r}")
    if not READING_STATEMENT.match(body):
        raise NotReadOnly(f"only SELECT, SHOW and WITH … SELECT: {sql!r}")
    if ACTING_KEYWORDS.search(unquoted):
        raise NotReadOnly(f"a statement that acts: {sql!r}")
    if ACTING_FUNCTIONS.search(unquoted):
        raise NotReadOnly(f"a function that acts: {sql!r}")


class ReadOnlyHost:
    """A host as a diagnosis sees it. Every call is shown in `transcript` as the reader would
    type it (host, user, command)."""

    def __init__(self, remote: Remote):
        self._remote = remote
        self.host = remote.host
        self.params = remote.params
        self.transcript: list[str] = []

    def read(self, argv: list[str], *, user: str = "root", check: bool = False) -> Result:
        check_argv(argv)
        command = shlex.join(argv)
        self.transcript.append(f"{self.host.name} ({user}) $ {command}")
        return self._remote.run(command, user=user, check=check)

    def file(self, path: str, *, user: str = "root") -> str | None:
        """A file's text, or None when it cannot be read (missing, or not readable by `user`)."""
        out = self.read(["cat", "--", path], user=user)
        return out.stdout if out.ok else None

    def query(self, sql: str, *, database: str = "postgres") -> list[list[str]] | None:
        """Rows of one reading statement, as postgres over the local socket in a read-only
        transaction; None when the server does not answer."""
        check_sql(sql)
        port = str(self.params.postgres["port"])
        self.transcript.append(f"{self.host.name} (postgres) $ psql -c \"{' '.join(sql.split())}\"")
        out = self._remote.run(
            f"PGOPTIONS='-c default_transaction_read_only=on' psql -X -v ON_ERROR_STOP=1 -q -A -t -F '|' "
            f"-p {port} -d {shlex.quote(database)}", user="postgres",
            stdin=f"BEGIN TRANSACTION READ ONLY;\n{sql.strip().rstrip(';')};\nCOMMIT;\n", check=False)
        if not out.ok:
            return None
        return [line.split("|") for line in out.stdout.splitlines() if line and line not in ("BEGIN", "COMMIT")]
