"""What pgpool costs and buys: pgbench from the standby host, straight to the primary and through
pgpool, select-only and the read/write mix, with persistent connections and a new one per
transaction (-C), at 1, 8 and 32 clients; and what a new connection costs, by path: SCRAM or md5,
through pgpool to a database it pools or to `postgres` (which it never pools), and with more
clients than pgpool has children."""
from __future__ import annotations

import re
import shlex
import statistics

from lib import pgpool_client
from lib.bench import memory, spread
from lib.roles import sql_literal
from lib.secrets import secret

WORKLOADS = {"select-only": "-S", "read/write": ""}
CONNECTIONS = {"persistent": "", "new per transaction": "-C"}
CLIENTS = (1, 8, 32)
DATABASE, SCALE = "bench", 10
USER = "pgpool"          # pool_passwd holds it; the bench's pg_hba line admits it from the standby host


def pgbench_path(params) -> str:
    return f"/usr/lib/postgresql/{int(params.postgres['version'])}/bin/pgbench"


def prepare(env) -> None:
    """A pgbench database on the primary, owned by the pgpool role (it runs the transactions)."""
    primary, p = env.primary, env.params
    exists = primary.postgres(f"psql -XAtc \"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'\"").stdout.strip()
    if not exists:
        primary.postgres(f"createdb -O {USER} {DATABASE}")
    primary.postgres(f"{pgbench_path(p)} -q -i -s {SCALE} {DATABASE} >/dev/null 2>&1")
    primary.postgres(f"psql -Xq -d {DATABASE} -c 'GRANT ALL ON ALL TABLES IN SCHEMA public TO {USER}'")


def run(env, target: str, workload: str, connections: str, clients: int, seconds: int) -> dict:
    """One pgbench run on the standby host; its TPS and average latency."""
    p, client = env.params, env.standbys[0]
    host, port = (p.primary.address, p.postgres["port"]) if target == "direct" else (p.pgpool_host.address, p.pgpool["port"])
    flags = " ".join(f for f in (WORKLOADS[workload], CONNECTIONS[connections]) if f)
    command = (f"{pgbench_path(p)} -n {flags} -c {clients} -j {min(clients, 2)} -T {seconds} "
               f"-h {host} -p {port} -U {USER} {DATABASE}")
    # the password on stdin, never on the command line
    out = client.run(f"read -r PGPASSWORD; export PGPASSWORD; {command}", stdin=secret("pgpool", p) + "\n",
                  timeout=seconds + 60).stdout
    tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    return {"command": command, "tps": tps, "latency_ms": float(latency.group(1)) if latency else None,
            "transactions": int(done.group(1)) if done else None}


def measure(env, seconds: int, repeats: int, say) -> dict:
    prepare(env)
    results = []
    for target in ("direct", "pgpool"):
        for workload in WORKLOADS:
            for connections in CONNECTIONS:
                for clients in CLIENTS:
                    runs = [run(env, target, workload, connections, clients, seconds) for _ in range(repeats)]
                    row = {"target": target, "workload": workload, "connections": connections, "clients": clients,
                           "tps": spread([r["tps"] for r in runs]),
                           "latency_ms": spread([r["latency_ms"] for r in runs if r["latency_ms"] is not None]),
                           "command": runs[0]["command"]}
                    results.append(row)
                    say(f"  {target:6} {workload:11} {connections:19} {clients:2} clients: "
                        f"{row['tps']['median']:8.0f} TPS")
    return {"runs": results, "seconds": seconds, "repeats": repeats, "scale": SCALE, "pools": pool_reuse(env),
            "logins": logins(env, seconds, repeats, say)}


MD5_USER = "bench_md5"   # the same password as USER, stored as md5: what the guide's md5 mode pays per login
SELECT_1 = "/tmp/pgguide-bench-select1.sql"
#: (label, target, user, database, clients): one login and `SELECT 1` per transaction, each path alone
LOGIN_PATHS = [
    ("direct, SCRAM", "direct", USER, DATABASE, 8),
    ("direct, md5", "direct", MD5_USER, DATABASE, 8),
    ("pgpool, SCRAM, a pooled database", "pgpool", USER, DATABASE, 8),
    ("pgpool, SCRAM, database postgres (never pooled)", "pgpool", USER, "postgres", 8),
    ("pgpool, SCRAM, 64 clients for 32 children", "pgpool", USER, DATABASE, 64),
]


def prepare_md5_login(env) -> None:
    """MD5_USER on the primary with its password stored as md5, and the primary's pg_hba admitting
    it with md5 from the standby host (where pgbench runs): only a pg_hba `md5` line lets md5 through."""
    p, primary = env.params, env.primary
    primary.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MD5_USER}') THEN "
                 f"CREATE ROLE {MD5_USER} LOGIN; END IF; END $$;\n"
                 f"SET password_encryption = 'md5';\n"
                 f"ALTER ROLE {MD5_USER} PASSWORD {sql_literal(secret('pgpool', p))};\n"
                 f"GRANT CONNECT ON DATABASE {DATABASE} TO {MD5_USER};")
    hba = f"{p.postgres['conf_dir']}/pg_hba.conf"
    line = f"host {DATABASE} {MD5_USER} {p.standbys[0].address}/32 md5   # ci/bench"
    primary.run(f"grep -qF {shlex.quote(line)} {hba} || echo {shlex.quote(line)} >> {hba}", user="root")
    primary.psql("SELECT pg_reload_conf()")
    env.standbys[0].run(f"echo 'SELECT 1;' > {SELECT_1}")


def login_run(env, target: str, user: str, database: str, clients: int, seconds: int) -> dict:
    """pgbench -C with a transaction of `SELECT 1`: the cost of a connection and little else; TPS,
    latency, and the CPU time each host spent per connection (its container's cgroup)."""
    p, client = env.params, env.standbys[0]
    host, port = (p.primary.address, p.postgres["port"]) if target == "direct" else (p.pgpool_host.address, p.pgpool["port"])
    # a thread per client: pgbench connects synchronously, so a thread serving several clients stops them
    # all while one waits for a pgpool child, and with more clients than children those it stopped hold
    # every child: with -j 2, 64 clients never finished (pgbench's deadlock, and any client pool's that
    # connects while it holds connections)
    command = (f"{pgbench_path(p)} -n -C -f {SELECT_1} -c {clients} -j {clients} -T {seconds} "
               f"-h {host} -p {port} -U {user} {database}")
    before = {h.name: memory.cpu_seconds(p, h.name) for h in p.all_hosts}
    out = client.run(f"read -r PGPASSWORD; export PGPASSWORD; {command}", stdin=secret("pgpool", p) + "\n",
                     timeout=seconds + 60).stdout
    after = {h.name: memory.cpu_seconds(p, h.name) for h in p.all_hosts}
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return {"command": command, "tps": float(re.search(r"tps = ([\d.]+)", out).group(1)),
            "latency_ms": float(re.search(r"latency average = ([\d.]+) ms", out).group(1)),
            "cpu ms": {n: (after[n] - before[n]) * 1000 / done for n in before}}


def logins(env, seconds: int, repeats: int, say) -> list[dict]:
    """What one new connection costs, path by path (LOGIN_PATHS)."""
    prepare_md5_login(env)
    rows = []
    for label, target, user, database, clients in LOGIN_PATHS:
        runs = [login_run(env, target, user, database, clients, seconds) for _ in range(repeats)]
        row = {"path": label, "clients": clients, "command": runs[0]["command"],
               "tps": spread([r["tps"] for r in runs]), "latency_ms": spread([r["latency_ms"] for r in runs]),
               "cpu ms per connection": {n: round(statistics.median(r["cpu ms"][n] for r in runs), 2)
                                         for n in runs[0]["cpu ms"]}}
        rows.append(row)
        say(f"  a new connection, {label}: {row['tps']['median']:.0f} per s, "
            + ", ".join(f"{n} {v:.1f} ms" for n, v in row["cpu ms per connection"].items()) + " of CPU each")
    return rows


def pool_reuse(env) -> list[dict]:
    """SHOW pool_pools after the runs: which pgpool children keep a backend connection for the
    bench user (what a new client connection can reuse instead of logging in to the servers)."""
    with pgpool_client.via_pgpool(env)() as conn:
        rows = pgpool_client.pool_show(conn, "pool_pools")
    kept = [r for r in rows if r.get("username") == USER and r.get("database") == DATABASE]
    return [{"children with a cached backend connection for pgpool@bench": len({r["pool_pid"] for r in kept})}]
