"""Sessions through pgpool, as the notebooks, the drills and the checks open them, and what they
see: SHOW pool_nodes, a wait until every node is up in its role, and the verdict on the nodes."""
from __future__ import annotations

import math
from functools import partial

from lib import db
from lib.pgpool_host import KEY_FILE, conf
from lib.postgres import auth_method, md5_mode
from lib.secrets import secret
from lib.show import expect, prompt
from lib.wait import wait_until


AUTH_FAILURES = ("authentication failed", "valid password not found", "failed to authenticate",
                 "unable to decrypt password", "md5 authentication failed", "SCRAM")


def via_pgpool(env, database: str = "postgres"):
    """psycopg connections from the notebook to pgpool, as postgres (the guide's client).
    Sessions that come and go should use TEST_DB: pgpool never keeps its backend connections
    for the databases postgres, template0, template1 and regression (child.c), so there every
    session costs a new login on every server."""
    connect = partial(db.connect, env.params, env.pgpool.host, user="postgres", password=secret("postgres", env.params),
                      port=env.params.pgpool["port"], dbname=database)

    def connected(**kw):
        if env.pgpool.unreachable is not None:      # SSH already failed: do not wait out a connect timeout too
            raise ConnectionError(str(env.pgpool.unreachable))
        return connect(**kw)
    return connected


def through_pgpool_prompt(env, database: str = "postgres") -> str:
    """The notebook as a client of pgpool, as postgres (and the database, when not postgres)."""
    return prompt(f"notebook → {env.pgpool.host.name}:{env.params.pgpool['port']}",
                  "postgres" + (f", {database}" if database != "postgres" else ""))


def pool_show(conn, what: str) -> list[dict]:
    """pgpool's SHOW commands, over the simple query protocol (libpq's PQexec): over the
    extended protocol, which psycopg uses, pgpool 4.3 answers SHOW pool_processes with no rows."""
    res = conn.pgconn.exec_(f"SHOW {what}".encode())
    if res.status != 2:                                  # PGRES_TUPLES_OK
        raise ConnectionError(f"SHOW {what} through pgpool failed: {(res.error_message or b'').decode().strip()}")
    names = [res.fname(i).decode() for i in range(res.nfields)]
    return [{n: (None if res.get_value(r, i) is None else res.get_value(r, i).decode()) for i, n in enumerate(names)}
            for r in range(res.ntuples)]


def pool_nodes(conn) -> list[dict]:
    return pool_show(conn, "pool_nodes")


def raise_auth_failure(params, error: Exception) -> None:
    store = ("AES entries made by pg_enc with the key in " + KEY_FILE if not md5_mode(params)
             else "md5 entries as pg_md5 makes them")
    expect(False, f"pgpool refused the login: {error}",
           f"pgpool checks passwords against pool_passwd ({conf(params, 'pool_passwd')}), which with "
           f"auth_method {auth_method(params)} must hold {store}, for the same password the role has on the servers. "
           "Run Step 32 again with the right secrets (PGGUIDE_POSTGRES_PASSWORD, PGGUIDE_PGPOOL_PASSWORD) "
           "and restart pgpool (Step 33).")


def wait_for_nodes(connect, params, timeout: float = 60, also_waiting: bool = False) -> list[dict]:
    """Until every node is up with one primary and streaming standbys; also_waiting counts a node
    that pgpool has not yet given a client ("waiting") as up. The nodes as last seen."""
    def ready():
        try:
            with connect() as conn:
                nodes = pool_nodes(conn)
        except ConnectionError as e:
            if any(sign in str(e) for sign in AUTH_FAILURES):
                raise_auth_failure(params, e)
            return None            # not listening yet, or restarting its children as it attaches a node
        return nodes if nodes_ready(nodes, also_waiting) else None
    nodes, _ = wait_until(ready, timeout=timeout, interval=0.5)
    if nodes is None:
        try:
            with connect() as conn:
                nodes = pool_nodes(conn)
        except ConnectionError as e:
            expect(False, f"cannot log in through pgpool as postgres: {e}",
                   "start pgpool (Step 33) and read its log; check pool_hba.conf (Step 31) and pool_passwd (Step 32).")
    return nodes


def nodes_ready(nodes: list[dict], also_waiting: bool = False) -> bool:
    ready_states = ("up", "waiting") if also_waiting else ("up",)
    return all(n["status"] in ready_states and n["pg_status"] == "up" for n in nodes) and \
        sum(n["role"] == "primary" for n in nodes) == 1 and \
        all(n["replication_state"] == "streaming" for n in nodes if n["role"] == "standby")


def check_nodes(nodes: list[dict], params) -> None:
    hosts = params.database_hosts
    total = sum(h.lb_weight for h in hosts)
    expect(len(nodes) == len(hosts), f"pgpool knows {len(nodes)} backends, the parameters name {len(hosts)}.",
           "check backend_hostnameN in pgpool.conf (Step 30) and restart pgpool.")
    by_address = {h.address: h for h in hosts}
    for node in nodes:
        where = f"node {node['node_id']} ({node['hostname']})"
        expect(node["hostname"] in by_address, f"{where} is none of the parameters' servers.", "check Step 30.")
        host = by_address[node["hostname"]]
        expect(node["status"] == "up", f"{where} is {node['status']} in pgpool.",
               "pgpool cannot reach it or remembers it as down: test with psql from the pgpool host (Step 29); "
               "then `pcp_attach_node -h localhost -U pgpool -n N`, or stop pgpool, remove "
               "/var/log/postgresql/pgpool_status and start it.")
        expect(node["role"] == host.role, f"{where} has role {node['role']}, expected {host.role}.",
               "check replication (Part 1) and sr_check_user / pg_read_all_stats (Step 22).")
        expect(math.isclose(float(node["lb_weight"]), host.lb_weight / total, abs_tol=1e-5),
               f"{where} has lb_weight {node['lb_weight']}, expected {host.lb_weight / total:.6f}.",
               "check backend_weightN (Step 30) and restart pgpool.")
        if host.role == "standby":
            expect(node["replication_state"] == "streaming",
                   f"{where} shows replication_state {node['replication_state']!r}.",
                   "backend_application_nameN must match the standby's application_name (Step 30).")
