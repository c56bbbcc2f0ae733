"""How a diagnosis reads the hosts: only through this, and this cannot change anything.

A diagnosis runs on a cluster that misbehaves, often as root, so "the checks only read" must be a
property of the way they run, not a promise. A ReadOnlyHost runs

- a program from a short list, each with the whole shape of its arguments (cat -- PATH, tail -n N
  PATH, pg_isready -h ADDRESS -p PORT -t N, …), quoted one by one: no shell, so no redirection, pipe
  or `;` can sneak a write in;
- SQL that is one SELECT, SHOW or WITH … SELECT statement, in a read-only transaction, that calls
  only functions known to read (count, coalesce, pg_wal_lsn_diff, …), in a session whose role is
  pg_monitor (pg_read_all_stats and pg_read_all_settings, no superuser): a function that acts
  would be refused by the server too. One view is superusers' only (pg_hba_file_rules); its fixed
  query says so and runs as postgres.

Everything else is refused with NotReadOnly before it reaches the host.
"""
from __future__ import annotations

import re
import shlex

from lib.remote import Remote, Result
from lib.show import prompt


#: the role a diagnosis's SQL runs as: it reads every statistic and setting, and is no superuser
MONITOR_ROLE = "pg_monitor"


class NotReadOnly(RuntimeError):
    """A diagnosis tried something that could change a host."""


#: each program a diagnosis runs and the whole shape of its arguments, one pattern per argument (matched
#: whole). Nothing else runs: a reader's acting options (`ss -K`, `journalctl --vacuum-size`,
#: `hostname NAME`) have no pattern to match.
_PATH, _NUMBER, _NAME, _ADDRESS = r"/[\w.@/-]*", r"\d+", r"[A-Za-z0-9_.-]+", r"[0-9A-Za-z.:-]+"
ARGUMENTS = {
    "hostname": (),
    "cat": ("--", _PATH),
    "test": ("-[efd]", _PATH),
    "stat": ("-c", r"[%\w ]+", _PATH),
    "tail": ("-n", _NUMBER, _PATH),
    "pg_lsclusters": ("--no-header", _NUMBER, _NAME),
    "pg_isready": ("-h", _ADDRESS, "-p", _NUMBER, "-t", _NUMBER),
    "pcp_node_info": ("-h", "localhost", "-p", _NUMBER, "-U", _NAME, "-w", "-v", "-n", _NUMBER),
}
#: what may stand before "(" in a diagnosis's SQL: the functions that only read, and SQL's own words.
#: Anything else is refused, so an acting function cannot be spelled past the list ("pg_reload_conf"(),
#: pg_terminate_backend/**/(1), pg_catalog.pg_replication_slot_advance(…)).
READING_FUNCTIONS = frozenset({
    "array_to_string", "coalesce", "count", "current_setting", "host", "inet_server_addr", "inet_server_port",
    "max", "min", "nullif", "pg_control_checkpoint", "pg_control_system", "pg_current_wal_lsn",
    "pg_is_in_recovery", "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn", "pg_postmaster_start_time",
    "pg_wal_lsn_diff", "sum", "version",
})
SQL_WORDS = frozenset({"all", "and", "any", "as", "exists", "filter", "from", "in", "join", "not", "on", "or",
                       "over", "select", "using", "where"})
READING_STATEMENT = re.compile(r"^\s*(SELECT|SHOW|WITH)\b", re.I)
ACTING_KEYWORDS = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|ALTER|CREATE|DROP|GRANT|REVOKE|TRUNCATE|COPY|CALL|DO|"
                             r"VACUUM|ANALYZE|CLUSTER|REINDEX|LOCK|SET|RESET|CHECKPOINT|LISTEN|NOTIFY|INTO)\b", re.I)


def check_argv(argv: list[str]) -> None:
    """Raise NotReadOnly unless `argv` is one of the programs in ARGUMENTS, in its shape."""
    if not argv:
        raise NotReadOnly("an empty command")
    program, args = argv[0], argv[1:]
    if program == "psql":
        raise NotReadOnly("psql runs through ReadOnlyHost.query, which checks the SQL")
    if program not in ARGUMENTS:
        raise NotReadOnly(f"`{program}` is not one of the programs a diagnosis may run ({', '.join(sorted(ARGUMENTS))})")
    shape = ARGUMENTS[program]
    if len(args) != len(shape) or not all(re.fullmatch(p, a) for p, a in zip(shape, args)):
        raise NotReadOnly(f"`{shlex.join(argv)}` is not how a diagnosis runs {program}: "
                          f"{shlex.join([program, *shape])}")


def _code(sql: str) -> str:
    """The SQL read left to right as the server reads it, its string literals emptied and its identifier
    quotes dropped ("pg_reload_conf"() is pg_reload_conf()). Comments are refused: a diagnosis writes
    none, and they can split a name from its "(" or hide a quote."""
    if "\\" in sql:
        raise NotReadOnly(f"no backslash (a meta-command or an escape): {sql!r}")
    out, i = [], 0
    while i < len(sql):
        if sql.startswith(("--", "/*"), i):
            raise NotReadOnly(f"no comments: {sql!r}")
        quote = sql[i]
        if quote in "'\"":
            end = i + 1
            while True:
                end = sql.find(quote, end)
                if end == -1:
                    raise NotReadOnly(f"an unterminated quote: {sql!r}")
                if sql[end + 1:end + 2] != quote:
                    break
                end += 2
            out.append("''" if quote == "'" else sql[i + 1:end])
            i = end + 1
        else:
            out.append(quote)
            i += 1
    return "".join(out)


def check_sql(sql: str) -> None:
    """Raise NotReadOnly unless `sql` is one reading statement that calls only reading functions."""
    body = sql.strip().rstrip(";")
    code = _code(body)
    if re.search(r"[;$]", code):                  # a second statement, or a dollar quote
        raise NotReadOnly(f"one statement at a time, without dollar quotes: {sql!r}")
    if not READING_STATEMENT.match(code):
        raise NotReadOnly(f"only SELECT, SHOW and WITH … SELECT: {sql!r}")
    if ACTING_KEYWORDS.search(code):
        raise NotReadOnly(f"a statement that acts: {sql!r}")
    called = {name.lower() for name in re.findall(r"(\w+)\s*\(", code)} - SQL_WORDS
    unknown = sorted(called - READING_FUNCTIONS)
    if unknown:
        raise NotReadOnly(f"{', '.join(unknown)}: not a function a diagnosis may call: {sql!r}")


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
        self.transcript.append(f"{prompt(self, user)}{command}")
        return self._remote.run(command, user=user, check=check)

    def file(self, path: str, *, user: str = "root") -> str | None:
        """A file's text, or None when it cannot be read (missing, or not readable by `user`)."""
        out = self.read(["cat", "--", path], user=user)
        return out.stdout if out.ok else None

    def query(self, sql: str, *, database: str = "postgres", superuser_only: str = "") -> list[list[str]] | None:
        """Rows of one reading statement, over the local socket in a read-only transaction, as
        pg_monitor (or as postgres, saying why in `superuser_only`); None when the server does not answer."""
        check_sql(sql)
        port = str(self.params.postgres["port"])
        role = "" if superuser_only else f" -c role={MONITOR_ROLE}"
        shown = f"PGOPTIONS='-c role={MONITOR_ROLE}' " if role else ""
        self.transcript.append(f"{prompt(self, 'postgres')}{shown}psql -c \"{' '.join(sql.split())}\""
                               + (f"   # {superuser_only}" if superuser_only else ""))
        out = self._remote.run(
            f"PGOPTIONS='-c default_transaction_read_only=on{role}' psql -X -v ON_ERROR_STOP=1 -q -A -t -F '|' "
            f"-p {port} -d {shlex.quote(database)}", user="postgres",
            stdin=f"BEGIN TRANSACTION READ ONLY;\n{sql.strip().rstrip(';')};\nCOMMIT;\n", check=False)
        if not out.ok:
            return None
        return [line.split("|") for line in out.stdout.splitlines() if line and line not in ("BEGIN", "COMMIT")]
