"""The drills' clients: a writer and a reader through pgpool, each in its own thread, and the rows the
writer was told were committed, counted on the primary itself afterwards."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg

from lib import db, pgpool_client, postgres
from lib.cluster import remote_named, roles_now, the_primary, timeline_history
from lib.postgres import TEST_DB
from lib.secrets import secret
from lib.show import expect
from lib.wait import wait_until


TABLE = "drill_rows"


PAUSE_S = 0.02            # between statements: about 50 writes and 50 reads a second


STATEMENT_TIMEOUT_S = 5   # a statement that hangs counts as failed after this


#: what the writer keeps of each acknowledged row: the server that took it, and the WAL position then
EVIDENCE = "host(inet_server_addr()), pg_current_wal_insert_lsn()::text"


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
