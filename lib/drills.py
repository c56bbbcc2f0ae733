"""Notebook 04: failure drills on a running cluster, measured from a client's side.

While a server is stopped on purpose, a writer commits numbered rows through pgpool and a reader
reads through pgpool, each in its own thread, each opening a new session after an error. What they
saw is the measurement: how long writes and reads failed, how many statements failed, and which
acknowledged rows the cluster no longer has.
"""
from __future__ import annotations

import contextlib
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import psycopg

from lib import clone_guard, db, failover, pgpool_client, pgpool_host, postgres, switchover
from lib.cluster import node_id, node_status, remote_named, roles_line_now, roles_now, the_primary, timeline_history
from lib.postgres import TEST_DB
from lib.remote import StepFailed
from lib.secrets import secret
from lib.show import expect, positions_named, prompt
from lib.wait import wait_until

TABLE = "drill_rows"
PAUSE_S = 0.02            # between statements: about 50 writes and 50 reads a second
STATEMENT_TIMEOUT_S = 5   # a statement that hangs counts as failed after this
#: what the writer keeps of each acknowledged row: the server that took it, and the WAL position then
EVIDENCE = "host(inet_server_addr()), pg_current_wal_insert_lsn()::text"


# --- the clients ---------------------------------------------------------------------------------------
@dataclass
class Client:
    """One thread's record: when each statement succeeded or failed (monotonic seconds)."""
    kind: str
    ok: list[float] = field(default_factory=list)
    failed: list[float] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)       # the writer's acknowledged row ids
    evidence: dict[int, tuple[str, str]] = field(default_factory=dict)   # id -> (server, WAL position) that acknowledged it
    latency: list[float] = field(default_factory=list)    # seconds each successful statement took
    last_error: str = ""                                  # the first line of the last error it met

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without a successful statement between start and end."""
        times = [start] + [t for t in self.ok if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def first_ok_after(self, t: float) -> float | None:
        return next((x for x in self.ok if x > t), None)

    def failures_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.failed if start <= t <= end)


class Traffic:
    """A writer and a reader through pgpool, running until stopped. Each keeps its session until an
    error, or with `session_each` opens a new one for every statement, as many web applications do:
    such a client never meets a terminated session, so only pgpool's own checks tell it of a failure."""

    def __init__(self, env, session_each: bool = False):
        self.env, self.session_each = env, session_each
        self.writer, self.reader = Client("writer"), Client("reader")
        self._next_id = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(c,), daemon=True) for c in (self.writer, self.reader)]

    def _connect(self):
        p = self.env.params
        return db.connect(p, p.pgpool_host, user="postgres", password=secret("postgres", p), port=p.pgpool["port"],
                          dbname=TEST_DB, connect_timeout=2, application_name="pgguide-drill",
                          statement_timeout_s=STATEMENT_TIMEOUT_S)

    def _loop(self, client: Client) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                began = time.monotonic()
                if client is self.writer:
                    row = self._next_id
                    self._next_id += 1          # never reused: a row whose commit was not acknowledged may exist
                    server, lsn = conn.execute(f"INSERT INTO {TABLE} (id) VALUES (%s) RETURNING {EVIDENCE}",
                                               (row,)).fetchone()
                    client.acked.append(row)
                    client.evidence[row] = (server, lsn)
                else:
                    conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
                client.ok.append(time.monotonic())
                client.latency.append(client.ok[-1] - began)
                if self.session_each:
                    conn.close()
                    conn = None
            except (psycopg.Error, ConnectionError) as e:      # ConnectionError: db.connect refused
                client.failed.append(time.monotonic())
                client.last_error = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(PAUSE_S)
        if conn is not None:
            conn.close()

    def next_id(self) -> int | None:
        """The first free row id (ids go on from the earlier drills' rows), or None when pgpool refused."""
        try:
            with self._connect() as conn:
                return conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {TABLE}").fetchone()[0]
        except (psycopg.OperationalError, ConnectionError):
            return None

    def __enter__(self):
        # a client retries: for a few seconds after a failback pgpool's children restart, and each closes the
        # session it has just accepted ("failover or failback event detected, restarting myself")
        self._next_id, _ = wait_until(self.next_id, timeout=10, interval=0.5)
        expect(self._next_id is not None, "pgpool refused every session for 10 s.",
               "every node must be up before a drill: read pgpool's log on the pgpool host.")
        for t in self._threads:
            t.start()
        wait_until(lambda: self.writer.ok and self.reader.ok, timeout=10, interval=0.05)
        expect(self.writer.ok and self.reader.ok, "the drill's writer or reader got no answer through pgpool.",
               "every node must be up before a drill: run Step 34 (notebook 02) and read pgpool's log.")
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=STATEMENT_TIMEOUT_S + 5)


def prepare(env) -> str:
    """The drills' table, empty, on the primary (through pgpool)."""
    with pgpool_client.via_pgpool(env, TEST_DB)() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    return f"{pgpool_client.through_pgpool_prompt(env, TEST_DB)}CREATE TABLE {TABLE} (id integer PRIMARY KEY, at timestamptz …)"


def clean_up(env) -> str:
    with pgpool_client.via_pgpool(env, TEST_DB)() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    return f"{pgpool_client.through_pgpool_prompt(env, TEST_DB)}DROP TABLE {TABLE}"


@dataclass
class Losses:
    """Acknowledged rows the primary lacks, read on the primary itself, each with the evidence the
    writer kept. A lost row is `in flight` when the server that acknowledged it acknowledged
    nothing that survived after it and no other server had taken a row before it: asynchronous
    replication loses such a tail at a crash. Any other lost row (a hole, or a row a second primary
    took) is a defect. Rows the primary has and a standby does not yet are lag (`behind`, per
    standby): reported, never counted as lost."""
    primary: str
    switch_point: str
    in_flight: list[int] = field(default_factory=list)
    defects: list[int] = field(default_factory=list)
    evidence: dict[int, tuple[str, str]] = field(default_factory=dict)
    behind: dict[str, int] = field(default_factory=dict)

    @property
    def lost(self) -> list[int]:
        return sorted(self.in_flight + self.defects)

    def described(self, ids: list[int]) -> str:
        shown = ", ".join(f"{i} (by {self.evidence[i][0]} at {self.evidence[i][1]})" for i in ids[:5])
        return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def classify(evidence: dict[int, tuple[str, str]], kept: set[int]) -> tuple[list[int], list[int]]:
    """(in flight, defects) among the acknowledged rows that are not kept (see Losses)."""
    in_flight, defects = [], []
    for row in sorted(set(evidence) - kept):
        server = evidence[row][0]
        later_kept = any(k > row and evidence[k][0] == server for k in kept if k in evidence)
        other_before = any(k < row and evidence[k][0] != server for k in kept if k in evidence)
        (defects if later_kept or other_before else in_flight).append(row)
    return in_flight, defects


def timeline_switch(primary) -> str:
    """Where the primary's timeline began, or '' on its first timeline."""
    history = timeline_history(primary)
    return history[-1][1] if history else ""


def rows_on(remote) -> set[int]:
    return set(map(int, postgres.value(remote, f"SELECT string_agg(id::text, ' ') FROM {TABLE}",
                                       database=TEST_DB).split()))


def losses(env, writer: Client) -> Losses:
    """Which of the writer's acknowledged rows the primary lacks, read directly on the one server
    that is not in recovery (never through pgpool, whose reads may reach a standby that lags), and
    how many of those it has each running standby lacks, read on that standby just after."""
    roles = roles_now(env)
    primary = the_primary(env, roles)
    kept = rows_on(primary)
    in_flight, defects = classify(writer.evidence, kept)
    acknowledged = kept & set(writer.evidence)
    behind = {name: len(acknowledged - rows_on(remote_named(env, name)))
              for name, role in roles.items() if role == "standby"}
    return Losses(primary.host.name, timeline_switch(primary), in_flight, defects,
                  {i: writer.evidence[i] for i in in_flight + defects}, behind)


# --- what the drills start from ---------------------------------------------------------------------------
def commit_mode(env) -> str:
    """How the primary acknowledges commits (Step 44), read from it; it must be what the
    parameters say, or the drills would judge lost rows by the wrong rule."""
    primary = the_primary(env)
    names = postgres.value(primary, "SHOW synchronous_standby_names")
    wanted = failover.synchronous_settings(env.params)["synchronous_standby_names"]
    expect(names == wanted, f"{primary.host.name} runs with synchronous_standby_names = '{names}', the parameters "
                            f"want '{wanted}'.", "provision again (notebook 03, Step 44), then run the drills.")
    mode = ("once a standby has it too (synchronous)" if names else "by the primary alone (asynchronous, as the guide)")
    return (f"{prompt(primary, 'postgres')}psql -c \"SHOW synchronous_standby_names\"  →  '{names}'\n"
            f"commits are acknowledged {mode}")


def failover_log_since(env, since_epoch: float) -> list[tuple[float, str]]:
    out = env.pgpool.run(f"cat {failover.FAILOVER_LOG}", user="root").stdout
    lines = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        try:
            if float(stamp) >= since_epoch:
                lines.append((float(stamp), text))
        except ValueError:
            continue
    return lines


# --- measuring one drill -----------------------------------------------------------------------------------
#: the goal book/failover.md states for a stopped primary: writes resume, and reads are never locked out longer
PRIMARY_BOUND_S = 15
#: a pgpool restart: clients get in again within this: a stop, bounded by Step 33's drop-in, then a start
PGPOOL_BOUND_S = pgpool_host.STOP_TIMEOUT_S + 5


@dataclass
class Outcome:
    """What a drill did (the command, as shown) and what the clients saw."""
    shown: str
    start: float = 0.0                       # monotonic, when the command was sent
    end: float = 0.0
    events: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)
    lost: Losses | None = None               # None: no writer ran
    may_lose: bool = False                   # a crash with asynchronous replication: rows in flight are counted, not failed
    stopped: Any = field(default=None, repr=False)   # the server the drill stopped (a Remote), to rejoin it

    def report(self) -> str:
        """The stable part: what ran, what happened, each bound held (asserted before)."""
        return "\n".join([self.shown, *self.events, *self.lost_line()])

    def lost_line(self) -> list[str]:
        if self.lost is None:
            return []
        where = f" (counted on the primary, {self.lost.primary})"
        if self.may_lose:
            return [f"acknowledged rows lost{where}: only rows in flight when the primary failed, none before; "
                    "their count is with the figures below (asynchronous replication)"]
        return [f"acknowledged rows lost{where}: 0"]

    def figures(self) -> str:
        """The measured part: differs on every run."""
        def shown(name, v):
            return f"{name} {v:.1f} ms" if name == "median commit" else f"{name} {v:.1f} s" if isinstance(v, float) \
                else f"{name} {v}"
        return ", ".join(shown(k, v) for k, v in self.measured.items())


def _observe(env, traffic: Traffic, outcome: Outcome, why_none_lost: str) -> None:
    """What the clients saw, and which acknowledged rows the primary lacks now. Unless the drill
    may lose rows in flight (outcome.may_lose), a lost row fails it, with `why_none_lost` as the hint."""
    w, r = traffic.writer, traffic.reader
    outcome.measured.update({
        "writes stopped for": w.longest_gap(outcome.start, outcome.end),
        "reads stopped for": r.longest_gap(outcome.start, outcome.end),
        "failed writes": w.failures_between(outcome.start, outcome.end),
        "failed reads": r.failures_between(outcome.start, outcome.end),
        "rows acknowledged": len(w.acked),
        "median commit": sorted(w.latency)[len(w.latency) // 2] * 1000 if w.latency else 0.0,
    })
    judge_lost(outcome, losses(env, w), why_none_lost)


def judge_lost(outcome: Outcome, found: Losses, why_none_lost: str) -> None:
    """A defect always fails the drill; rows in flight fail it unless it may lose them."""
    outcome.lost = found
    outcome.measured["rows lost"] = len(found.lost)
    outcome.measured["rows not yet on a standby (lag)"] = ", ".join(f"{n} {k}" for n, k in found.behind.items()) \
        or "none (no standby running)"
    if found.in_flight:
        outcome.measured["rows lost"] = (f"{len(found.lost)} (in flight past the switch point "
                                         f"{found.switch_point or '?'}: {found.described(found.in_flight)})")
    expect(not found.defects, f"{len(found.defects)} acknowledged rows are gone from {found.primary} although later "
                              f"rows of the same server survived, or another server had already taken over: "
                              f"{found.described(found.defects)}; the timeline began at {found.switch_point or '?'}.",
           "this is no replication lag: read the failover log and both servers' logs around those WAL positions.")
    expect(outcome.may_lose or not found.in_flight,
           f"{len(found.in_flight)} acknowledged rows are gone from {found.primary}: "
           f"{found.described(found.in_flight)}; its timeline began at {found.switch_point or '?'}.", why_none_lost)


#: a drill's own command (a stop, a restart) ends within this, or the drill fails showing what runs
COMMAND_TIMEOUT_S = 30
WHAT_RUNS = ("systemctl list-jobs --no-pager; "
             "ps -eo pid,ppid,stat,wchan:24,etime,args --forest | grep -v -e ' \\[' -e 'ps -eo' -e 'wait for connection request' | tail -n 40; "
             "journalctl --no-pager -n 30 -o short-precise")


def what_runs(remote) -> str:
    """The host's jobs, processes and last log lines: why a command there did not finish."""
    try:
        out = remote.run(WHAT_RUNS, user="root", check=False, timeout=15).stdout
    except StepFailed as e:
        return f"(and {remote.host.name} did not answer what runs there either: {e})"
    return f"what runs on {remote.host.name} now ($ {WHAT_RUNS}):\n{out}"


def _run(traffic: Traffic, remote, command: str, user: str, outcome: Outcome, until, timeout: float = 60,
         before=None) -> None:
    """Send the command while the clients run; wait until `until()` holds, then 2 s more. `before()`,
    when given, runs a second before the command (a standby made to lag)."""
    time.sleep(1)                                     # a second of normal traffic before
    if before:
        before()
        time.sleep(1)
    outcome.start = time.monotonic()
    try:
        remote.run(command, user=user, timeout=COMMAND_TIMEOUT_S)
    except StepFailed as e:
        raise StepFailed(f"{e}\n{what_runs(remote)}") from None
    done, _ = wait_until(until, timeout=timeout, interval=0.1)
    if not done:
        log = traffic.env.pgpool.run(f"tail -n 15 {failover.FAILOVER_LOG}", user="root", check=False).stdout
        expect(False, f"after `{command}` on {remote.host.name} the cluster did not recover within {timeout:.0f} s. "
                      f"The writer's last error: {traffic.writer.last_error or 'none'}; the reader's: "
                      f"{traffic.reader.last_error or 'none'}. The failover log ends:\n{log}",
               f"read {failover.FAILOVER_LOG} and pgpool's log on the pgpool host.")
    time.sleep(2)                                     # and two seconds after
    outcome.end = time.monotonic()


def stall_sender(primary, standby, seconds: float) -> str:
    """The command that pauses, on the primary, the WAL sender that serves `standby` (SIGSTOP) for
    `seconds` and resumes it, from the host itself through a transient unit: the primary commits on,
    and that standby falls behind, the WAL not yet sent. Fails unless such a sender runs."""
    title = f"walsender .* {standby.host.address}\\("
    found = primary.run(f"pgrep -f {shlex.quote(title)}", user="root", check=False).stdout.strip()
    expect(found, f"no WAL sender on {primary.host.name} serves {standby.host.name}: it cannot be made to lag.",
           "every node must be up and streaming before a drill (notebook 02, Step 34).")
    pause = f"p=$(pgrep -f '{title}'); kill -STOP $p; sleep {seconds:g}; kill -CONT $p"
    return f"systemd-run --quiet --collect --unit=pgguide-drill-stall-{standby.host.name} sh -c {shlex.quote(pause)}"


#: a crash of the whole server: every process of the postgres user killed at once, so that no WAL sender
#: sends another byte (kill -9 of the postmaster alone leaves its children to notice, and send, a moment later)
KILL_ALL = "pkill -KILL -u postgres -x postgres"


def primary_stops(env, how: str, lagging_s: float = 0, session_each: bool = False) -> Outcome:
    """Stop the primary (`how`: 'stop' with systemctl, 'kill' with SIGKILL to every process of the
    server at once, as a power cut would, 'silent' with its host's network down for SILENT_FOR_S),
    with clients running; pgpool runs failover.sh, which promotes the most advanced standby (and,
    for a silent host, fences it once it answers again). With `lagging_s` the primary's WAL sender to the first
    standby is paused that long, a second before the stop, so that this standby lags behind the
    primary (and behind any other standby). With `session_each` the clients open a new session for
    each statement (see Traffic). Returns what the clients saw."""
    old, epoch = the_primary(env), time.time()
    p = env.params.postgres
    silence = Silence(old, SILENT_FOR_S) if how == "silent" else None
    command = {"stop": f"systemctl stop {shlex.quote(p['service'])}", "kill": KILL_ALL,
               "silent": silence and silence.command}[how]
    clients = "a writer and a reader use pgpool, a new session for each statement" if session_each \
        else "a writer and a reader use pgpool"
    shown = f"{prompt(old, 'root')}{command}    # the primary, while {clients}"
    before = None
    if lagging_s:
        lagging = a_standby(env)
        stall = stall_sender(old, lagging, lagging_s)
        shown = (f"{prompt(old, 'root')}{stall}    # {lagging.host.name} falls behind: the WAL sender serving "
                 f"it paused for {lagging_s:g} s\n{shown}")
        before = partial(old.run, stall, user="root")
    outcome = Outcome(shown, stopped=old)

    def promoted_elsewhere():       # never asks the old primary: a silent host would hang the question
        return any(postgres.cluster_state(r) == "online" for r in failover.database_remotes(env) if r is not old)
    with Traffic(env, session_each) as traffic:
        _run(traffic, old, command, "root", outcome,
             lambda: traffic.writer.first_ok_after(outcome.start + 0.001) and promoted_elsewhere(), before=before)
    lag = time.time() - time.monotonic()                 # the log's clock against ours (the same host clock in the lab)
    failed_at = outcome.start + lag
    if silence:
        failed_at = fenced_when_back(env, old, silence, failed_at)
    # pgpool runs follow_primary.sh for the failed node too, after failover.sh: its word comes last (for a
    # silent host, once its network is back, whenever that is)
    n = node_id(env, old)
    wait_until(lambda: any(re.match(rf"node {n} \(\S+\) is not a running standby", line)
                           for _, line in failover_log_since(env, epoch)), timeout=FOLLOWED_WITHIN_S, interval=0.3)
    log = failover_log_since(env, epoch)
    detected = next((t for t, line in log if re.match(r"primary node \d+ \(\S+\) failed", line)), None)
    promoted = next((t for t, line in log if re.match(r"node \d+ \(\S+\) promoted", line)), None)
    expect(detected is not None and promoted is not None, f"failover.sh did not promote: {[l for _, l in log]}.",
           f"read {failover.FAILOVER_LOG} and pgpool's log on {env.pgpool.host.name}; check Steps 41-43.")
    outcome.measured = {"failure detected after": detected - failed_at, "promoted after": promoted - failed_at,
                        **outcome.measured}
    outcome.may_lose = how in ("kill", "silent") and not env.params.postgres["synchronous"]
    _observe(env, traffic, outcome,
             "a clean shutdown hands the standbys every WAL record, and failover.sh waits for that hand-over: "
             "read the failover log and the new primary's log."
             if how == "stop" else "with postgres.synchronous every acknowledged commit is on a standby, and "
             "failover.sh promotes the most advanced one: check synchronous_standby_names and "
             "pg_stat_replication's sync_state on the primary (Step 44), and the failover log.")
    # the watcher's verdict on a silent host comes when the host answers, before or after follow_primary.sh's
    later = [line for _, line in log if " answers again" in line]
    outcome.events = [f"{env.pgpool.host.name}: {failover.FAILOVER_LOG}:",
                      *(f"  {positions_named(line)}" for _, line in log if line not in later),
                      *(f"once {old.host.name}'s network was back:\n  {positions_named(line)}" for line in later)]
    outcome.events.append(roles_line_now(env))
    bound = SILENT_PRIMARY_BOUND_S if silence else PRIMARY_BOUND_S
    within(outcome, "writes stopped for", bound, "writes through pgpool stopped")
    within(outcome, "reads stopped for", bound, "reads through pgpool stopped")
    return outcome


def fenced_when_back(env, old, silence: Silence, asked_at: float) -> float:
    """After a silent primary's failover: wait until its network is back and the watcher failover.sh left
    behind has stopped and fenced it; returns when its interface went down (epoch seconds)."""
    back_at = asked_at + silence.ends_at_after

    def said():
        return time.time() > back_at and next((line for _, line in failover_log_since(env, asked_at)
                                               if " answers again" in line), None)
    line, _ = wait_until(said, timeout=silence.seconds + FENCED_WITHIN_S, interval=0.5)
    expect(line and line.endswith("stopped and fenced"),
           f"{old.host.name} answered again, and failover.sh's watcher says: {line or 'nothing'}.",
           f"read {failover.FAILOVER_LOG}; until it is fenced, {old.host.name} may run as a second primary: "
           "stop it (systemctl stop) and rejoin it.")
    return silence.began(asked_at)


def within(outcome: Outcome, figure: str, bound: float, said: str) -> None:
    value = outcome.measured[figure]
    expect(value <= bound, f"{said} for {value:.1f} s (the bound is {bound} s).",
           "compare the health-check settings (Step 30) with the detection time above; read pgpool's log.")
    outcome.events.append(f"{said} for less than {bound} s: yes")


# --- the fence ---------------------------------------------------------------------------------------------
def started_again(env, old) -> str:
    """Start the failed primary again, as a reboot or a person might, and show the fence hold: it
    comes up as a standby following nobody, it refuses writes, pgpool keeps it detached, and the
    cluster still has exactly one primary."""
    service = shlex.quote(env.params.postgres["service"])
    name, n = old.host.name, node_id(env, old)
    old.run(f"systemctl start {service}", user="root")
    roles = roles_now(env)
    expect(roles[name] == "standby" and list(roles.values()).count("primary") == 1,
           f"after its start the roles are {roles}: the fence did not hold.",
           f"failover.sh writes standby.signal into {name}'s data directory when its host answers: read the failover log.")
    sql = "CREATE TABLE written_on_the_old_primary (x int)"
    refused = old.psql(sql, check=False)
    expect(not refused.ok and "read-only transaction" in refused.stderr,
           f"{name} accepted a write: {refused.stderr.strip() or refused.stdout.strip()}", "stop it now: it runs as a primary.")
    upstream = postgres.value(old, "SHOW primary_conninfo")
    expect(upstream == "", f"{name} follows {upstream!r}.", "the fence removes primary_conninfo: read the failover log.")
    expect(node_status(env, old) == "down", f"pgpool uses {name} (node {n}) again.",
           "a former primary must be rejoined before pgpool uses it: check auto_failback and detach_false_primary.")
    error = next(l for l in refused.stderr.splitlines() if "ERROR" in l).split(":  ", 1)[-1]
    return "\n".join([f"{prompt(name, 'root')}systemctl start {service}    # the old primary, fenced, started again",
                       roles_line_now(env, roles),
                       f"{prompt(name, 'postgres')}psql -c \"{sql}\"", f"ERROR:  {error}",
                       f"{prompt(name, 'postgres')}psql -c \"SHOW primary_conninfo\"  →  '' (it follows nobody)",
                       f"pgpool keeps node {n} ({name}) detached: yes"])


# --- a standby stops; pgpool restarts ----------------------------------------------------------------------
#: what observing pgpool adds to its own detection time: pcp_node_info over SSH, every 0.2 s
POLL_SLACK_S = 1.5


def a_standby(env):
    """The standby a drill takes away: the first server that is not the primary now."""
    primary = the_primary(env)
    return next(r for r in failover.database_remotes(env) if r is not primary)


def back_bound() -> float:
    """How soon a standby that answers again must be back in pgpool by itself: pgpool's re-attach
    bound (Step 30) plus the time its WAL receiver takes to reconnect."""
    return pgpool_host.reattach_bound() + clone_guard.RECONNECT_S


def standby_stops(env, down_for: float = 8, clients: bool = True) -> Outcome:
    """Stop a standby for longer than pgpool takes to detach it, start it again, and time how long
    until pgpool uses it again by itself (auto_failback). With clients=False nobody uses pgpool, so
    only its health check can notice: that measures the detection the settings promise."""
    standby = a_standby(env)
    service, name, n = shlex.quote(env.params.postgres["service"]), standby.host.name, node_id(env, standby)
    outcome = Outcome(f"{prompt(name, 'root')}systemctl stop {service}; sleep {down_for:.0f}; systemctl start {service}    "
                      + ("# a standby, while a writer and a reader use pgpool" if clients else
                         "# a standby, with no client connected"))
    traffic = Traffic(env) if clients else None
    with traffic or contextlib.nullcontext():
        time.sleep(1)
        outcome.start = time.monotonic()
        standby.run(f"systemctl stop {service}", user="root")
        detached, _ = wait_until(lambda: node_status(env, standby, n) == "down", timeout=down_for, interval=0.2)
        outcome.measured["detached after"] = time.monotonic() - outcome.start
        time.sleep(max(0.0, down_for - (time.monotonic() - outcome.start)))
        started = time.monotonic()
        standby.run(f"systemctl start {service}", user="root")
        back, _ = wait_until(lambda: node_status(env, standby, n) in ("up", "waiting"), timeout=60, interval=0.2)
        outcome.measured["back in pgpool after start"] = time.monotonic() - started
        time.sleep(2)
        outcome.end = time.monotonic()
    if traffic:
        _observe(env, traffic, outcome, "the primary kept running: a row it acknowledged must still be there.")
    expect(detached, f"pgpool did not detach {name} within {down_for:.0f} s.", "check health_check_period (Step 30)")
    bound = back_bound()
    expect(back and outcome.measured["back in pgpool after start"] <= bound,
           f"{name} was not back in pgpool {bound} s after it started.",
           "check auto_failback and sr_check_period (Step 30), and backend_application_nameN.")
    if clients:
        first = f"pgpool detached {name}: yes"
        last = ["writes and reads went on; the sessions that were using it were cut (counted below)"]
    else:
        promised = pgpool_host.detection_bounds()["refused"]
        expect(outcome.measured["detached after"] <= promised + POLL_SLACK_S,
               f"pgpool's health check took {outcome.measured['detached after']:.1f} s to detach {name}; the "
               f"settings promise {promised} s.", "compare health_check_* in pgpool.conf with Step 30.")
        first = (f"pgpool's health check detached {name} within {promised} s (+ {POLL_SLACK_S} s for this "
                 "notebook's polling): yes")
        last = []
    outcome.events = [first, f"back in load balancing by itself within {bound} s of its start: yes", *last]
    return outcome


#: a silent primary: pgpool's verdict (the 'silent' bound), failover.sh's try to reach the host, then up to 8 s
#: for the rest: reading the standbys (pcp answers slowly while a node is silent: 1.2-2.3 s measured), the
#: promotion, and pgpool's search for the new primary before it takes sessions again (about 2 s)
SILENT_PRIMARY_BOUND_S = pgpool_host.detection_bounds()["silent"] + failover.ANSWER_S + 8
#: from the promotion to follow_primary.sh's word on the failed node: pgpool's search for the new primary,
#: then one SSH try (its ConnectTimeout is 5 s)
FOLLOWED_WITHIN_S = 15
#: from its network's return to the watcher's fence: one SSH try a WATCH_EVERY_S, two questions, a clean stop
FENCED_WITHIN_S = failover.WATCH_EVERY_S + 10
#: how long drill 3c keeps the standby's network down: longer than the 'silent' detection bound
SILENT_FOR_S = 16
#: from pgpool's verdict to the line failover.sh logs, which is where drill 3c reads the time (once
#: 13.2 s against the 13 s bound, with three test queues loading the machine)
SCRIPT_SLACK_S = 1


@dataclass
class Silence:
    """A host's network interface taken down for `seconds` from the host itself, through a transient
    systemd unit that brings it back though our SSH session to it stalls meanwhile. The unit waits a
    moment first (DELAY_S), so that the SSH command that starts it returns."""
    remote: Any
    seconds: float
    DELAY_S = 0.5
    failed = "/run/pgguide-drill-silence.failed"     # what the cut said, if it could not cut
    went_down = "/run/pgguide-drill-silence.at"      # when it cut, by the host's clock (this machine's, in the lab)

    @property
    def command(self) -> str:
        iface = shlex.quote(self.remote.params.options["interface"])
        cut = (f"sleep {self.DELAY_S}; ip link set {iface} down 2>{self.failed} || exit 1; date +%s.%N > {self.went_down}; "
               f"rm -f {self.failed}; sleep {self.seconds:.0f}; ip link set {iface} up")
        return f"systemd-run --quiet --collect --unit=pgguide-drill-silence sh -c {shlex.quote(cut)}"

    def began(self, asked_at: float) -> float:
        """When the interface went down (epoch seconds), once the host answers again; fails if it could not."""
        out = self.remote.run(f"cat {self.failed} 2>/dev/null; echo @@; cat {self.went_down} 2>/dev/null; "
                              f"rm -f {self.failed} {self.went_down}", user="root").stdout
        said, _, at = out.partition("@@")
        expect(not said.strip(), f"{self.remote.host.name} could not take its interface down: {said.strip()}",
               "the drill needs CAP_NET_ADMIN on the host (a container without it cannot change its own interfaces).")
        return float(at.strip() or asked_at)

    @property
    def ends_at_after(self) -> float:
        """Seconds from the command to the network's return."""
        return self.DELAY_S + self.seconds


def standby_goes_silent(env, silent_for: float = SILENT_FOR_S) -> Outcome:
    """Take a standby's network interface down for `silent_for` seconds, from the standby itself
    (a transient systemd unit brings it back even though our SSH session stalls), with nobody
    connected. Packets to it now get no answer at all, so each health-check try waits out its
    timeout: this measures the 'silent' bound of Step 30, and that the standby comes back by itself.
    The times are pgpool's own, from the failover log (its scripts log each detach and attach):
    polling pcp while pgpool handles a failover would add delays of its own."""
    standby = a_standby(env)
    name, n, silence = standby.host.name, node_id(env, standby), Silence(standby, silent_for)
    outcome = Outcome(f"{prompt(name, 'root')}{silence.command}    # a standby's network, with no client connected")
    promised, bound = pgpool_host.detection_bounds()["silent"], back_bound()
    pattern = re.compile(rf"node {n} \({re.escape(standby.host.address)}\) (detached|attached)")

    def logged(event: str, after: float) -> float | None:
        return next((t for t, line in failover_log_since(env, after)
                     if (m := pattern.match(line)) and m.group(1) == event), None)
    time.sleep(1)
    cut_at = time.time()
    standby.run(silence.command, user="root")
    detached, _ = wait_until(lambda: logged("detached", cut_at), timeout=silent_for + 1, interval=0.5)
    time.sleep(max(0.0, cut_at + silence.ends_at_after - time.time()))
    # from the moment the interface went down, not from when we asked: SSH and systemd-run take their time
    down_at = silence.began(cut_at)
    expect(detached, f"pgpool did not detach {name} within {silent_for:.0f} s of its network going silent.",
           "check health_check_timeout and health_check_max_retries (Step 30), and failover.log.")
    answering = down_at + silent_for
    attached, _ = wait_until(lambda: logged("attached", answering), timeout=bound + 5, interval=0.5)
    outcome.measured["detached after"] = detached - down_at
    if attached:
        outcome.measured["back in pgpool after its network"] = attached - answering
    expect(outcome.measured["detached after"] <= promised + SCRIPT_SLACK_S,
           f"pgpool's health check took {outcome.measured['detached after']:.1f} s to detach {name}, whose host "
           f"did not answer; the settings promise {promised} s.", "compare health_check_* in pgpool.conf with Step 30.")
    expect(attached and attached - answering <= bound, f"{name} was not back in pgpool {bound} s after its network "
           "came back.", "check that it still streams (pg_stat_replication on the primary), auto_failback and "
           "sr_check_period (Step 30).")
    # back in pgpool is not enough: its replication connection may still be stuck, while pg_stat_replication
    # says 'streaming' and pgpool sends it reads. A new WAL record must reach it.
    within_s = replay_bound(standby)
    replaying = replays_again_within(env, standby, within_s)
    outcome.measured["replaying new WAL after its network"] = time.time() - answering
    expect(replaying, f"{name} is back in pgpool but has not replayed a new WAL record of the primary "
                      f"{within_s:.0f} s later: its reads are stale.",
           "its WAL receiver neither streams nor gave up on the silent connection: read its log and "
           "pg_stat_wal_receiver.")
    outcome.events = [f"pgpool's health check detached {name} within {promised} s of the silence (+ {SCRIPT_SLACK_S:g} s "
                      "for pgpool to start failover.sh, whose log line gives the time): yes",
                      f"back in load balancing by itself within {bound} s of its network's return: yes",
                      f"and replaying the primary's new WAL within {within_s:.0f} s after that (its WAL receiver's "
                      "timeout and retry interval): yes"]
    return outcome


def replay_bound(standby) -> float:
    """Seconds within which a standby back from a silence replays the primary's new WAL, at worst: its
    replication connection resumes, or its WAL receiver gives up on it (wal_receiver_timeout) and
    connects again (wal_retrieve_retry_interval). Measured: 4-6 s, once more than 15 s (TCP's
    retransmission back-off after the silence, most likely)."""
    ms = postgres.value(standby, "SELECT sum(setting::int) FROM pg_settings "
                                 "WHERE name IN ('wal_receiver_timeout', 'wal_retrieve_retry_interval')")
    return int(ms) / 1000


def replays_again_within(env, standby, seconds: float) -> bool:
    """Whether the primary sees `standby` replay a WAL record written now (a logical message: no table
    needed) within `seconds`."""
    primary, name = the_primary(env), standby.host.name
    lsn = postgres.value(primary, "SELECT pg_logical_emit_message(false, 'pgguide-drill', 'are you there')")
    replayed = (f"SELECT count(*) > 0 FROM pg_stat_replication WHERE application_name = '{name}' "
                f"AND replay_lsn >= '{lsn}'")
    done, _ = wait_until(lambda: postgres.value(primary, replayed) == "t", timeout=seconds, interval=0.3)
    return bool(done)


def pgpool_restarts(env) -> Outcome:
    service = shlex.quote(env.params.pgpool["service"])
    outcome = Outcome(f"{prompt(env.pgpool, 'root')}systemctl restart {service}    # while a writer and a reader use it")
    with Traffic(env) as traffic:
        _run(traffic, env.pgpool, f"systemctl restart {service}", "root", outcome,
             lambda: traffic.writer.first_ok_after(outcome.start + 0.5) and traffic.reader.first_ok_after(outcome.start + 0.5))
    _observe(env, traffic, outcome, "the servers kept running: a row they acknowledged must still be there.")
    within(outcome, "writes stopped for", PGPOOL_BOUND_S, "writes stopped")
    within(outcome, "reads stopped for", PGPOOL_BOUND_S, "reads stopped")
    return outcome


def back_to_preferred(env) -> str:
    """When a drill left another server the primary (a silent primary's failover promotes the most
    advanced standby, which with two standbys is chance), a planned switchover back to the parameters'
    primary (lib.switchover): its transcript, or '' when nothing was needed."""
    preferred = env.params.primary.name
    if roles_now(env).get(preferred) == "primary":
        return ""
    return f"a planned switchover back to {preferred}:\n" + switchover.run(env, preferred)


def roles_line(env) -> str:
    """The roles as the parameters give them, or a failure naming what to do."""
    now = roles_now(env)
    wanted = {h.name: h.role for h in env.params.database_hosts}
    expect(now == wanted, f"the servers' roles are {now}, not {wanted}.",
           "a drill stopped half way: provision again (ci/provision rejoins a former primary) and switch back "
           "(ci/provision --switchover NAME), or provision a fresh lab; then run again.")
    return "roles: " + ", ".join(f"{n} {r}" for n, r in now.items())


def what_provisioning_says(env) -> str:
    """What --check and a provisioning run say while the roles are swapped (lib.clone_guard)."""
    swapped = clone_guard.roles_swapped(env)
    expect(swapped is not None, "the roles look as the parameters say, though a failover just swapped them.",
           "lib.clone_guard.roles_swapped must see the promoted standby.")
    return f"what `ci/provision --check` prints now:\ncheck FAILED: {swapped[0]}\n  Likely fix: {swapped[1]}"
