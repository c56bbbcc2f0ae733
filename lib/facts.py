"""What the hosts are, read for the planners: each fact is a command and a parser (pyinfra's facts, smaller).

A step's planner asks `remote.facts.get(fact)` for what it needs to decide. Facts asked together
(`prefetch`) are answered in one SSH round trip, and every answer is kept for the run until anything
may have changed the hosts: a command that is not a read (an applied action, a drill's stop) makes
every host's answers stale (`stale`). Reads that change nothing say so (`Remote.run(..., reads_only=True)`)
and keep them. `read` asks again whatever is known (a verification, a wait).

The values are typed (a file with its owner, mode and text; a query's rows; a command's output), so a
planner can be tested without a host: `HostFacts.given` puts the answers in place (tests/test_plans.py).
"""
from __future__ import annotations

import json
import os
import re
import secrets as token
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from lib import journal

#: beside a file we change, the copy of it as it was before our first change (lib.ops keeps it)
ORIGINAL_SUFFIX = ".pgguide-orig"

#: bumped by every command that may change a host; answers read before it are stale
_generation = 0


def stale() -> None:
    """Something may have changed on a host: every answer read before is read again when asked."""
    global _generation
    _generation += 1


# --- the facts ---------------------------------------------------------------------------------------
class Fact:
    """A command (run as `user`) and how its output reads. Equal facts share one answer."""
    user = "root"
    masked = True           # the answer has the run's secret values masked (a file's text must stay exact)
    live = False            # what others change as they run (pgpool's view of the nodes): never asked ahead

    def __init__(self, *args: Any):
        self.args = args

    @property
    def key(self) -> tuple:
        return (type(self).__name__, self.user, *self.args)

    def command(self) -> str: raise NotImplementedError
    def parse(self, code: int, out: str, err: str) -> Any: raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.args}"


@dataclass(frozen=True)
class File:
    """A file as its host has it: `access` is `owner:group mode`, text None when there is no file;
    `original_kept` when the copy we keep before our first change (lib.ops.ORIGINAL_SUFFIX) is there."""
    path: str
    text: str | None
    access: str = ""
    original_kept: bool = False

    @property
    def exists(self) -> bool:
        return self.text is not None


class FileFact(Fact):
    masked = False

    def __init__(self, path: str):
        super().__init__(path)

    def command(self) -> str:
        f, o = shlex.quote(self.args[0]), shlex.quote(self.args[0] + ORIGINAL_SUFFIX)
        return (f"if [ -f {f} ]; then stat -c '%U:%G %a' {f} && {{ [ -e {o} ] && echo kept || echo none; }} "
                f"&& cat -- {f}; else echo absent; fi")

    def parse(self, code: int, out: str, err: str) -> File:
        path = self.args[0]
        if code != 0:
            raise FactUnreadable(f"{path} could not be read (exit {code}): {err.strip() or 'no message'}")
        if out.startswith("absent\n") or out == "absent":
            return File(path, None)
        access, kept, text = (out.split("\n", 2) + ["", ""])[:3]
        return File(path, text, access, kept == "kept")


@dataclass(frozen=True)
class Rows:
    """A query's answer: its rows (fields split at |), or ok False when psql failed (`error` says why)."""
    ok: bool
    rows: tuple[tuple[str, ...], ...] = ()
    error: str = ""

    @property
    def value(self) -> str:
        """The one value of a one-row, one-column answer ('' when there is no row)."""
        return self.rows[0][0] if self.rows else ""

    @property
    def lines(self) -> list[str]:
        return ["|".join(r) for r in self.rows]


class SqlFact(Fact):
    """A read-only query as postgres over the local socket (a session that cannot write)."""
    user = "postgres"

    def __init__(self, sql: str, database: str = "postgres", port: int = 5432, *, masked: bool = True,
                 live: bool = False):
        super().__init__(sql, database, port, masked)
        self.masked = masked        # False for a value compared with a secret's form (a stored md5 verifier)
        self.live = live

    def command(self, psql: str = "psql") -> str:
        sql, database, port, _ = self.args
        return (f"PGOPTIONS='-c default_transaction_read_only=on' {psql} -X -q -A -t -F '|' -v ON_ERROR_STOP=1 "
                f"-p {int(port)} -d {shlex.quote(database)} -c {shlex.quote(sql)}")

    def parse(self, code: int, out: str, err: str) -> Rows:
        if code != 0:
            return Rows(False, error=err.strip())
        return Rows(True, tuple(tuple(line.split("|")) for line in out.splitlines() if line))

    @property
    def session_key(self) -> tuple | None:
        """Queries with the same key share one psql session in a batch (`session`); None: this one runs
        alone, as psql would read a backslash or a `:name` in it as its own (a variable, a command)."""
        sql, database, port, _ = self.args
        if "\\" in sql or re.search(r"(?<!:):(?!:)", sql):
            return None
        return database, port

    @staticmethod
    def session(queries: list["SqlFact"], mark: str, psql: str = "psql") -> str:
        """One psql session that answers several queries of one database: each answer framed as a batch frames a
        fact (`answers`), its status from psql's ERROR and its error from LAST_ERROR_MESSAGE (psql 12 and
        later), since the session goes on past a failed query. A session costs the host some 45 ms of CPU
        (runuser, bash, Debian's Perl psql wrapper, a backend; `psql` may name the versioned program instead,
        Params.pg_bin, which saves the wrapper's 28 ms): a second run asked 36 queries."""
        _, database, port, _ = queries[0].args
        script = []
        for i, query in enumerate(queries):
            script += [f"\\echo '@@{mark}:{i}:begin'", query.args[0], ";", "\\echo",
                       "\\if :ERROR", f"\\echo '@@{mark}:{i}:end:1'", "\\echo :LAST_ERROR_MESSAGE",
                       "\\else", f"\\echo '@@{mark}:{i}:end:0'", "\\endif", f"\\echo '@@{mark}:{i}:err'"]
        end = f"SQL_{mark.replace(':', '_')}"
        return (f"PGOPTIONS='-c default_transaction_read_only=on' {psql} -X -q -A -t -F '|' -v ON_ERROR_STOP=0 "
                f"-p {int(port)} -d {shlex.quote(database)} -f - <<'{end}'\n" + "\n".join(script) + f"\n{end}\n")


@dataclass(frozen=True)
class Output:
    ok: bool
    stdout: str

    @property
    def lines(self) -> list[str]:
        return [l for l in self.stdout.splitlines() if l.strip()]


class CommandFact(Fact):
    """A read-only command's output, as `user`."""

    def __init__(self, command: str, user: str = "root", *, live: bool = False):
        super().__init__(command)
        self.user, self.live = user, live

    def command(self) -> str:
        return self.args[0]

    def parse(self, code: int, out: str, err: str) -> Output:
        return Output(code == 0, out)


def unit_state(unit: str) -> CommandFact:
    """Whether a systemd unit runs and starts at boot: its lines answer `systemctl is-active` and `is-enabled`
    (['active', 'enabled'])."""
    quoted = shlex.quote(unit)
    return CommandFact(f"systemctl is-active {quoted}; systemctl is-enabled {quoted}")


class FactUnreadable(RuntimeError):
    """A host answered, but not what the fact expects."""


# --- reading them ------------------------------------------------------------------------------------
#: the first line of every batch: what tells a read of facts from any other command (lib.plan_record)
BATCH_START = "# pgguide: facts"


def is_batch(command: str) -> bool:
    """Whether `command` is a batch of facts (`batch`)."""
    return command.startswith(BATCH_START + "\n")


def _units(facts: list[Fact]) -> list[list[int]]:
    """What each command of a batch answers, by index into `facts`: one fact, or the queries that share a psql
    session (SqlFact.session_key)."""
    units, sessions = [], {}
    for i, fact in enumerate(facts):
        key = fact.session_key if isinstance(fact, SqlFact) else None
        if key is None:
            units.append([i])
        elif key in sessions:
            sessions[key].append(i)
        else:
            sessions[key] = [i]
            units.append(sessions[key])
    return units


def _in_session(fact: Fact) -> bool:
    return isinstance(fact, SqlFact) and fact.session_key is not None


def batch(facts: list[Fact], nonce: str, psql: str = "psql") -> str:
    """One bash script, run as root, that answers every fact: each answer between lines that carry the
    nonce, its exit status after it, then its stderr (the queries of one psql session framed the same way
    inside their session's answer). Facts of another user run through runuser (util-linux: on every
    Debian host, and root needs no password for it), in that user's home. Queries run `psql` (a program's
    name or path)."""
    parts = [BATCH_START]
    for u, unit in enumerate(_units(facts)):
        first = facts[unit[0]]
        command = (SqlFact.session([facts[i] for i in unit], f"{nonce}:q{u}", psql) if _in_session(first)
                   else first.command(psql) if isinstance(first, SqlFact) else first.command())
        if first.user != "root":
            inner = f"cd ~{first.user} 2>/dev/null && export HOME=$PWD; {command}"
            command = f"runuser -u {first.user} -- bash -c {shlex.quote(inner)}"
        parts.append(f"printf '%s\\n' '@@{nonce}:{u}:begin'; e=$(mktemp); ( {command}\n) 2>\"$e\" </dev/null; "
                     f"printf '\\n@@{nonce}:{u}:end:%d\\n' $?; cat \"$e\"; rm -f \"$e\"; printf '\\n@@{nonce}:{u}:err\\n'")
    return "\n".join(parts)


def _framed(out: str, mark: str, i: int) -> tuple[int, str, str] | None:
    """The i-th answer framed with `mark` in `out` (exit status, stdout, stderr), None when it is not whole."""
    begin, end = f"@@{mark}:{i}:begin\n", f"\n@@{mark}:{i}:end:"
    try:
        start = out.index(begin) + len(begin)
        stop = out.index(end, start)
        code_end = out.index("\n", stop + len(end))
        err_end = out.index(f"\n@@{mark}:{i}:err\n", code_end)
    except ValueError:
        return None
    return int(out[stop + len(end):code_end]), out[start:stop], out[code_end + 1:err_end]


def answers(out: str, facts: list[Fact], nonce: str) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each fact, from `batch`'s output. A query its session did not answer
    (psql could not connect, or stopped) has the session's status and stderr."""
    found: list = [None] * len(facts)
    for u, unit in enumerate(_units(facts)):
        answer = _framed(out, nonce, u)
        if answer is None:
            raise FactUnreadable(f"the answer to fact {unit[0]} is not whole: the host's output was cut off")
        if not _in_session(facts[unit[0]]):
            found[unit[0]] = answer
            continue
        code, text, err = answer
        for k, i in enumerate(unit):
            found[i] = _framed(text, f"{nonce}:q{u}", k) or (code or 2, "", err)
    return found


class HostFacts:
    """One host's answers for the run."""

    def __init__(self, remote):
        self.remote = remote
        self._answers: dict[tuple, Any] = {}
        self._generation = _generation
        self.given_only = False
        self.asked: dict[tuple, Fact] = {}      # what this run asked, for the next run (remember)
        self._ahead: list[Fact] = []            # asked with the first question: what the last run asked

    def expect(self, facts: Iterable[Fact]) -> None:
        """Ask these too with the first question to the host (what the last run asked: recall)."""
        self._ahead = list(facts)

    def get(self, fact: Fact) -> Any:
        self._drop_if_stale()
        if not fact.live:
            self.asked.setdefault(fact.key, fact)
        if fact.key not in self._answers:
            ahead, self._ahead = self._ahead, []
            self.prefetch([fact, *ahead])
        return self._answers[fact.key]

    def read(self, fact: Fact) -> Any:
        """Asked again of the host now, whatever is known (a verification, a wait for a change)."""
        self._drop_if_stale()
        if not self.given_only:
            self._answers.pop(fact.key, None)
        return self.get(fact)

    def prefetch(self, facts: Iterable[Fact]) -> None:
        """Read the facts not known yet, in one round trip."""
        self._drop_if_stale()
        wanted = list({f.key: f for f in facts if f.key not in self._answers}.values())
        if not wanted:
            return
        if self.given_only:
            raise FactUnreadable(f"{self.remote.host.name}: no answer given for {wanted[0]!r} (a planner asked "
                                 "for a fact its test does not give)")
        nonce = token.token_hex(6)
        out = self.remote.run(batch(wanted, nonce, self.remote.params.pg_bin("psql")), user="root", mask=False,
                              reads_only=True).stdout
        journal.facts_read(self.remote.host.name)
        for fact, (code, stdout, err) in zip(wanted, answers(out, wanted, nonce)):
            if fact.masked:
                stdout = self.remote.mask(stdout)
            self._answers[fact.key] = fact.parse(code, stdout, err)

    def known(self) -> dict[tuple, Any]:
        """The answers known now, by fact key (what a planner read: lib.plan_record)."""
        self._drop_if_stale()
        return dict(self._answers)

    def forget(self) -> None:
        """Drop every answer: the next question reads the host again."""
        self._answers.clear()

    def given(self, answers: dict[Fact | tuple, Any]) -> "HostFacts":
        """Answers put in place, not read (a planner's test), by fact or by its key: asking for any other
        fact fails."""
        self.given_only = True
        self._answers.update({getattr(f, "key", f): v for f, v in answers.items()})
        return self

    def _drop_if_stale(self) -> None:
        if self._generation != _generation and not self.given_only:
            self._answers.clear()
        self._generation = _generation


# --- what the last run asked -------------------------------------------------------------------------
KINDS = {k.__name__: k for k in (FileFact, SqlFact, CommandFact)}


def from_key(key: list | tuple) -> Fact:
    """The fact a key stands for."""
    kind, user, *args = key
    if kind == "SqlFact":
        sql, database, port, masked = args
        return SqlFact(sql, database, port, masked=masked)
    if kind == "CommandFact":
        return CommandFact(args[0], user)
    return KINDS[kind](*args)


def recall(path: Path, chapter: str) -> dict[str, list[Fact]]:
    """The facts the runs before asked of each host in `chapter` (a notebook, by its file name): nothing when
    there is no such file or it is of an older form."""
    try:
        kept = json.loads(path.read_text())[chapter]
        return {host: [from_key(k) for k in keys if k and k[0] in KINDS] for host, keys in kept.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def remember(path: Path, chapter: str, remotes) -> None:
    """Add what this run asked of each host in `chapter` to `path` (keys only: commands, paths and queries,
    never an answer), written whole. Kept by chapter: a notebook asks ahead what it asked itself, not what
    the others did (a whole run's 23 queries of the primary, asked by each of four notebooks, were 92 psql
    sessions where one notebook needs them)."""
    try:
        chapters = json.loads(path.read_text())
    except (OSError, ValueError):
        chapters = {}
    if not isinstance(chapters, dict) or not all(isinstance(v, dict) for v in chapters.values()):
        chapters = {}                    # the older form, by host alone: started again
    kept = {h: [f.key for f in fs] for h, fs in recall(path, chapter).items()}
    for r in remotes:
        known = {tuple(k) for k in kept.get(r.host.name, [])}
        kept[r.host.name] = [*kept.get(r.host.name, []), *(k for k in r.facts.asked if k not in known)]
    chapters[chapter] = kept
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(chapters, indent=1) + "\n")
    partial.replace(path)
