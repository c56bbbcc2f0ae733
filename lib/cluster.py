"""Who is who in the cluster now, read from the hosts: which server is the primary, what pgpool
calls each node and how it sees it, and where the primary's timeline began."""
from __future__ import annotations

import shlex

from lib import clone_guard, failover, failover_scripts, pgpool_client, pgpool_host, postgres
from lib.show import expect, table


def states(env) -> dict:
    """Each database server (a Remote) -> pg_lsclusters' status of its cluster."""
    return {r: postgres.cluster_state(r) for r in failover.database_remotes(env)}


def running_primary(env, found: dict | None = None):
    """The one database server that runs as a primary, or None (none, or two: a split brain)."""
    running = [r for r, state in (found or states(env)).items() if state == "online"]
    return running[0] if len(running) == 1 else None


def roles_now(env) -> dict[str, str]:
    """host name -> 'primary', 'standby', 'down, fenced' (a failed primary failover.sh fenced) or
    the cluster's state when it is not online."""
    return {r.host.name: ("standby" if state == "online,recovery" else "primary" if state == "online" else
                          "down, fenced" if state.startswith("down") and clone_guard.fenced(r) else state)
            for r, state in states(env).items()}


def remote_named(env, name: str):
    return next(r for r in failover.database_remotes(env) if r.host.name == name)


def the_primary(env, roles: dict | None = None):
    """The one server running as a primary; `roles` (roles_now's) when the caller has just read them."""
    roles = roles or roles_now(env)
    primaries = [n for n, role in roles.items() if role == "primary"]
    expect(len(primaries) == 1, f"the servers' roles are {roles}: not exactly one primary.",
           "two primaries means a split brain: stop the one with fewer writes and rejoin it (lib.rejoin).")
    return remote_named(env, primaries[0])


def node_id(env, remote) -> int:
    """pgpool's node id of the server: its place in pgpool.conf, which a parameter file with the roles
    swapped does not renumber (lib.pgpool_host.backend_hosts)."""
    text = env.pgpool.run(f"cat {shlex.quote(pgpool_host.conf(env.params, 'pgpool.conf'))}", user="root").stdout
    return [h.address for h in pgpool_host.backend_hosts(env.params, text)].index(remote.host.address)


def node_status(env, remote, node: int | None = None) -> str:
    """pgpool's status of the node: up, waiting, down. A caller that polls passes the node id it read
    once (node_id reads pgpool.conf)."""
    node = node_id(env, remote) if node is None else node
    out = env.pgpool.run(pgpool_host.pcp(env, "pcp_node_info", f"-n {node}"), user="postgres").stdout.split()
    return out[4] if len(out) > 4 else "unknown"


def timeline_history(primary) -> list[tuple[int, str]]:
    """The primary's timeline history: (timeline, the WAL position where the next one began), oldest first;
    empty on the first timeline."""
    text = postgres.value(primary, "SELECT coalesce(pg_read_file('pg_wal/' || substr(pg_walfile_name("
                                   "pg_current_wal_lsn()), 1, 8) || '.history', 0, 1000000, true), '')")
    return [(int(f[0]), f[1]) for f in (l.split("\t") for l in text.splitlines()) if len(f) > 1 and f[0].isdigit()]


def all_up(env, timeout: float = 60) -> str:
    """Every node up (or waiting for its first client) in pgpool, one primary, standbys streaming."""
    nodes = pgpool_client.wait_for_nodes(pgpool_client.via_pgpool(env), env.params, timeout=timeout, also_waiting=True)
    seen = "; ".join(f"node {n['node_id']} {n['hostname']}: {n['status']}/{n['pg_status']}, {n['role']}, "
                     f"{n['replication_state'] or 'no replication state'}" for n in nodes)
    expect(pgpool_client.nodes_ready(nodes, also_waiting=True), "not every node is up in pgpool with one primary and "
           f"streaming standbys ({seen}).", f"read {failover_scripts.FAILOVER_LOG} and pgpool's log; a node left down: rejoin it (above).")
    return nodes_now(env)


NODE_COLUMNS = ("node_id", "hostname", "status", "pg_status", "role", "pg_role", "replication_state")


def nodes_now(env) -> str:
    """SHOW pool_nodes, the columns that do not change from run to run. "waiting" (attached, not
    used by a session yet) reads as up: which node a session happened to use first varies."""
    with pgpool_client.via_pgpool(env)() as conn:
        nodes = pgpool_client.pool_nodes(conn)
    rows = [[("up" if c == "status" and n[c] == "waiting" else n[c] or "") for c in NODE_COLUMNS] for n in nodes]
    return f"{pgpool_client.through_pgpool_prompt(env)}SHOW pool_nodes;\n" + table(list(NODE_COLUMNS), rows)


def roles_line_now(env, roles: dict | None = None) -> str:
    return "roles now: " + ", ".join(f"{n} {r}" for n, r in (roles or roles_now(env)).items())

