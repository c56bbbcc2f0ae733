"""Replication visibility latency: single-row commits on the primary, each timed from the start of
its INSERT until a standby returns the row, under three synchronous_commit settings."""
from __future__ import annotations

import time

from lib import db
from lib.bench import percentiles
from lib.secrets import secret

#: synchronous_commit, and whether the standby is synchronous (synchronous_standby_names = '*')
MODES = [("off", False), ("on", False), ("remote_apply", True)]
SETUP = "CREATE TABLE IF NOT EXISTS bench_latency (id integer PRIMARY KEY)"


def _connect(params, host):
    return db.connect(params, host, user="postgres", password=secret("postgres", params))


def measure(params, rows: int, say) -> dict:
    primary, standby = params.primary, params.standbys[0]
    out = {"rows": rows, "standby": standby.name, "modes": {}}
    with _connect(params, primary) as w, _connect(params, standby) as r:
        w.execute(SETUP)
        for mode, sync in MODES:
            w.execute("ALTER SYSTEM SET synchronous_standby_names = %s" % ("'*'" if sync else "''"))
            w.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
            w.execute("TRUNCATE bench_latency")
            w.execute(f"SET synchronous_commit = {mode}")
            visible, commit = [], []
            for i in range(rows):
                start = time.perf_counter()
                w.execute("INSERT INTO bench_latency VALUES (%s)", (i,))
                acknowledged = time.perf_counter()
                while r.execute("SELECT 1 FROM bench_latency WHERE id = %s", (i,)).fetchone() is None:
                    pass
                seen = time.perf_counter()
                commit.append((acknowledged - start) * 1000)
                visible.append((seen - start) * 1000)
            out["modes"][mode] = {"standby synchronous": sync,
                                  "visible on the standby, ms": percentiles(visible),
                                  "commit acknowledged, ms": percentiles(commit),
                                  "visible, all ms": [round(v, 3) for v in visible]}
            say(f"  synchronous_commit = {mode}: visible p50 {out['modes'][mode]['visible on the standby, ms']['p50']:.2f} ms")
        w.execute("ALTER SYSTEM RESET synchronous_standby_names")
        w.execute("SELECT pg_reload_conf()")
        w.execute("DROP TABLE bench_latency")
    out["commands"] = ["SET synchronous_commit = off | on | remote_apply   # remote_apply with synchronous_standby_names = '*'",
                       f"INSERT INTO bench_latency VALUES (i)   # × {rows} on {primary.name}, autocommit",
                       f"SELECT 1 FROM bench_latency WHERE id = i   # on {standby.name}, repeated until it returns the row"]
    return out
