"""What pgpool costs and buys: pgbench from the standby host, straight to the primary and through
pgpool, select-only and the read/write mix, with persistent connections and a new one per
transaction (-C), at 1, 8 and 32 clients; and what a new connection costs."""
from __future__ import annotations

import re
import shlex

from lib import part2
from lib.bench import spread
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
            "login cpu": login_cpu(env, seconds, say)}


def login_cpu(env, seconds: int, say) -> dict:
    """CPU time per new connection on each host (its container's cgroup), from a select-only run with
    a new connection per transaction at 8 clients: where a login's cost is paid."""
    from lib.bench import memory
    out = {}
    for target in ("direct", "pgpool"):
        before = {h.name: memory.cpu_seconds(env.params, h.name) for h in env.params.all_hosts}
        r = run(env, target, "select-only", "new per transaction", 8, seconds)
        after = {h.name: memory.cpu_seconds(env.params, h.name) for h in env.params.all_hosts}
        out[target] = {"connections": r["transactions"],
                       "cpu ms per connection": {n: round((after[n] - before[n]) * 1000 / r["transactions"], 2)
                                                 for n in before}}
        say(f"  a new connection, {target}: " + ", ".join(f"{n} {v:.1f} ms" for n, v in
                                                          out[target]["cpu ms per connection"].items()) + " of CPU")
    return out


def pool_reuse(env) -> list[dict]:
    """SHOW pool_pools after the runs: which pgpool children keep a backend connection for the
    bench user (what a new client connection can reuse instead of logging in to the servers)."""
    with part2.via_pgpool(env)() as conn:
        rows = part2.pool_show(conn, "pool_pools")
    kept = [r for r in rows if r.get("username") == USER and r.get("database") == DATABASE]
    return [{"children with a cached backend connection for pgpool@bench": len({r["pool_pid"] for r in kept})}]
