"""Replication visibility latency: single-row commits on the primary, one every PACE_MS, each timed
from the start of its INSERT until a reader polling a standby sees it, under three
synchronous_commit settings."""
from __future__ import annotations

import threading
import time

from lib import db
from lib.bench import percentiles
from lib.secrets import secret

#: synchronous_commit, and whether the standby is synchronous (synchronous_standby_names = '*')
MODES = [("off", False), ("on", False), ("remote_apply", True)]
PACE_MS = 2.0            # a commit every 2 ms: independent commits, and 1,000 of them in seconds
SETUP = "CREATE TABLE IF NOT EXISTS bench_latency (id integer PRIMARY KEY)"


def _connect(params, host):
    return db.connect(params, host, user="postgres", password=secret("postgres", params))


def one_mode(w, r, rows: int) -> tuple[list[float], list[float]]:
    """Commit `rows` rows on w, paced; a reader on r notes when each first shows. (visible, commit) ms."""
    started, acknowledged, seen = [0.0] * rows, [0.0] * rows, [0.0] * rows
    done = threading.Event()

    def reader():
        highest = -1
        while highest < rows - 1:
            top = r.execute("SELECT coalesce(max(id), -1) FROM bench_latency").fetchone()[0]
            now = time.perf_counter()
            for i in range(highest + 1, top + 1):
                seen[i] = now
            highest = max(highest, top)
        done.set()
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for i in range(rows):
        started[i] = time.perf_counter()
        w.execute("INSERT INTO bench_latency VALUES (%s)", (i,))
        acknowledged[i] = time.perf_counter()
        time.sleep(max(0.0, started[i] + PACE_MS / 1000 - time.perf_counter()))
    done.wait(timeout=30)
    return ([(s - b) * 1000 for s, b in zip(seen, started)], [(a - b) * 1000 for a, b in zip(acknowledged, started)])


def measure(params, rows: int, say) -> dict:
    primary, standby = params.primary, params.standbys[0]
    out = {"rows": rows, "pace ms": PACE_MS, "standby": standby.name, "modes": {}}
    with _connect(params, primary) as w, _connect(params, standby) as r:
        w.execute(SETUP)
        for mode, sync in MODES:
            w.execute("ALTER SYSTEM SET synchronous_standby_names = %s" % ("'*'" if sync else "''"))
            w.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
            w.execute("TRUNCATE bench_latency")
            time.sleep(0.5)                              # the standby has replayed the TRUNCATE
            w.execute(f"SET synchronous_commit = {mode}")
            visible, commit = one_mode(w, r, rows)
            out["modes"][mode] = {"standby synchronous": sync,
                                  "visible on the standby, ms": percentiles(visible),
                                  "commit acknowledged, ms": percentiles(commit),
                                  "visible, all ms": [round(v, 3) for v in visible]}
            say(f"  synchronous_commit = {mode}: visible p50 {out['modes'][mode]['visible on the standby, ms']['p50']:.2f} ms")
        w.execute("ALTER SYSTEM RESET synchronous_standby_names")
        w.execute("SELECT pg_reload_conf()")
        w.execute("DROP TABLE bench_latency")
    out["commands"] = ["SET synchronous_commit = off | on | remote_apply   # remote_apply with synchronous_standby_names = '*'",
                       f"INSERT INTO bench_latency VALUES (i)   # × {rows} on {primary.name}, autocommit, one every {PACE_MS:g} ms",
                       f"SELECT max(id) FROM bench_latency   # on {standby.name}, over and over: when each row first shows"]
    return out
