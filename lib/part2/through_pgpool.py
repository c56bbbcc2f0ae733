"""Part 2, Steps 34-39 and the guide's Quick Reference: the cluster used through pgpool, as its clients
see it."""
from __future__ import annotations

from functools import partial

from lib import db, loadbalance, ops, postgres
from lib.ops import Secret, guide_step
from lib.part2.backends import as_client
from lib.pgpool_client import (check_nodes, pool_nodes, pool_show,
                               through_pgpool_prompt, via_pgpool, wait_for_nodes)
from lib.pgpool_host import APP_ROLE, PCPPASS, attach_healthy_nodes, pcp
from lib.postgres import TEST_DB, patience
from lib.show import expect, masked_columns, prompt, table
from lib.wait import wait_until


# --- Step 34 and on: through pgpool -------------------------------------------------------------------------------


def pcp_node_count(env) -> str:
    """pcp works: pcp_node_count as postgres, password from ~postgres/.pcppass (-w: never prompt)."""
    vm3 = env.pgpool
    command = pcp(env, "pcp_node_count")
    r = vm3.run(command, user="postgres", check=False, reads_only=True)
    expect(r.ok, f"pcp_node_count failed on {vm3.host.name}: {r.stderr.strip()}",
           f"check pcp.conf (user:md5 of the password) and {PCPPASS} (host:port:user:password, mode 600) (Step 32).")
    expect(int(r.stdout.strip()) == len(env.params.database_hosts), f"pcp reports {r.stdout.strip()} nodes.",
           "check pgpool.conf's backends.")
    return f"{prompt(vm3, 'postgres')}{command}\n{r.stdout.strip()}"


def nodes_as_wanted(env) -> str:
    """Every node up with its role and weight (waiting for pgpool's checks), shown as the guide does."""
    found = wait_for_nodes(via_pgpool(env), env.params, timeout=patience(env.pgpool, 60))
    check_nodes(found, env.params)
    return show_pool_nodes(env)


@guide_step
def check_pool_nodes(env) -> ops.Step:
    nodes = partial(nodes_as_wanted, env)
    step = attach_healthy_nodes(ops.Step("pool_nodes"), env)
    step.verify("every node up, with its role and weight", nodes) \
        .verify("pcp answers", partial(pcp_node_count, env)) \
        .verify("an application gets in with a role of its own, and may only what it needs", partial(app_login, env))
    if postgres.tls(env.params):
        step.verify("every connection between the hosts, and to pgpool, is TLS", partial(tls_in_use, env))
    return step


def app_login(env) -> str:
    """The app role through pgpool, as an application would log in: it may read and add employees, not delete them."""
    vm3 = env.pgpool
    sql = ("SELECT current_user, has_table_privilege('employees', 'INSERT') AS may_insert, "
           "has_table_privilege('employees', 'DELETE') AS may_delete")
    command = f"psql -h {vm3.host.address} -p {env.params.pgpool['port']} -U {APP_ROLE} -d {TEST_DB} -c \"{sql}\""
    out = as_client(vm3, command, APP_ROLE, check=False)
    rows = [[c.strip() for c in line.split("|")] for line in out.stdout.splitlines() if "|" in line]
    expect(out.ok and rows[1:] == [[APP_ROLE, "t", "f"]],
           f"{APP_ROLE} through pgpool: {out.stderr.strip() or out.stdout.strip()}",
           "Step 31 makes the role and its grants, Step 32 its pool_passwd entry; provision again.")
    return f"{prompt(vm3, env.params.ssh['user'])}{command}\n{out.stdout.rstrip()}"


TLS_SESSIONS = ("SELECT a.backend_type, host(a.client_addr), s.ssl, coalesce(s.version, '') "
                "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.client_addr IS NOT NULL "
                "ORDER BY 1, 2")


def tls_in_use(env) -> str:
    """postgres.tls: each server's sessions from other hosts (the standby's WAL stream, pgpool's
    backend connections) use TLS, and so does the notebook's connection to pgpool."""
    rows, plain = [], []
    with via_pgpool(env)() as conn:       # held open, so that pgpool's connections to the servers show
        client = "t" if conn.pgconn.ssl_in_use else "f"
        db.rows(conn, "SELECT 1")
        for s in [env.primary, *env.standbys]:
            for line in s.psql(TLS_SESSIONS).lines:
                kind, source, ssl, version = line.split("|")
                rows.append((s.host.name, kind, source, ssl, version))
                if ssl != "t":
                    plain.append(f"{kind} from {source} on {s.host.name}")
    rows.append((env.pgpool.host.name, "client (this notebook)", "-", client, ""))
    expect(any(r[2] == env.pgpool.host.address for r in rows), "no connection from pgpool reached the servers.",
           "check Step 34: pgpool must see its backends up")
    expect(not plain and client == "t", "connections without TLS: " + "; ".join(
               plain + ([] if client == "t" else ["the notebook's to pgpool"])) + ".",
           "every pg_hba/pool_hba line for another host must be hostssl (Steps 3, 23, 26, 31), and pgpool needs "
           "ssl = on (Step 30); provision again, then restart pgpool so that it reconnects.")
    # one row per kind of session: how many pgpool holds open varies
    return table(["server", "session", "from", "ssl", "version"], list(dict.fromkeys(rows)))


def psql_through_pgpool(env, sql: str, database: str = TEST_DB, times: int = 1) -> str:
    """The guide's client command, run on the pgpool host: psql to pgpool's port as postgres,
    the password on stdin. Its output is shown once, however many times it ran."""
    vm3 = env.pgpool
    command = f"psql -h {vm3.host.address} -p {env.params.pgpool['port']} -U postgres -d {database} -c \"{sql}\""
    for _ in range(times):
        out = as_client(vm3, command, "postgres").stdout.rstrip()
    return f"{prompt(vm3, env.params.ssh['user'])}{command}" + (f"   # × {times}" if times > 1 else "") + "\n" + out


#: SHOW pool_nodes' columns that differ on every run: this session's draw of a node for its reads, and a time
UNSTABLE_POOL_NODES_COLUMNS = {"load_balance_node": "(drawn)", "last_status_change": "YYYY-MM-DD hh:mm:ss"}


def show_pool_nodes(env, also: tuple[str, ...] = ()) -> str:
    """The guide's `SHOW pool_nodes` with psql from the pgpool host, aligned as psql prints it, with the
    values that differ on every run masked (and the comment saying so); `also`: more columns to mask."""
    vm3 = env.pgpool
    command = f"psql -h {vm3.host.address} -p {env.params.pgpool['port']} -U postgres -c \"SHOW pool_nodes;\""
    out = as_client(vm3, command, "postgres").stdout.rstrip()
    masks = {**{c: "…" for c in also}, **UNSTABLE_POOL_NODES_COLUMNS}
    return (f"{prompt(vm3, env.params.ssh['user'])}{command}    # {', '.join(masks)}: masked, they differ "
            "on every run\n" + masked_columns(out, masks))


def pgpool_sql_login(env, database: str = TEST_DB) -> dict:
    """Sql's options for a statement sent through pgpool with psql from its host, as the guide does."""
    return {"login": f"-h {env.pgpool.host.address} -p {env.params.pgpool['port']} -U postgres",
            "database": database, "password": Secret("postgres")}


def employees_through_pgpool(env) -> str:
    with via_pgpool(env, TEST_DB)() as conn:
        rows = db.rows(conn, "SELECT * FROM employees ORDER BY id")
    return through_pgpool_prompt(env, TEST_DB) + "SELECT * FROM employees ORDER BY id;\n" + \
        table(["id", "name", "department"], rows)


def _insert_through_pgpool(env, name: str, department: str, what: str) -> ops.Step:
    step = postgres.insert_if_absent(ops.Step(what), env.pgpool, name, department, primary=env.primary,
                                     **pgpool_sql_login(env))
    return step


@guide_step
def write_through_pgpool(env) -> ops.Step:
    step = _insert_through_pgpool(env, "Frank", "PgPool Test", "write through pgpool")
    return step.verify("Frank is there, read through pgpool", partial(employees_through_pgpool, env))


@guide_step
def read_on_standbys(env) -> ops.Step:
    return ops.Step("read on the standby").verify(
        "Frank is on each standby", lambda: "\n".join(postgres.rows_visible(s, ["Frank"]) for s in env.standbys))


@guide_step
def prove_read_only(env) -> ops.Step:
    return postgres.read_only_step(env.standbys, "Test")


@guide_step
def sync_through_pgpool(env) -> ops.Step:
    step = _insert_through_pgpool(env, "Grace", "Sync Test", "sync through pgpool")
    return postgres.arrives_on_standbys(step, env.standbys, "Grace", "check replication (Step 12) and "
                                        "that the write went to the primary (Step 35).")


# --- Step 38 ----------------------------------------------------------------------------------------------------
@guide_step
def verify_load_balancing(env) -> ops.Step:
    """Load balancing is per session: open many sessions through pgpool, ask each which server
    answered, and compare the shares with the weights (lib/loadbalance.py has the arithmetic).
    Not run by --check: hundreds of sessions are a test, not an observation."""
    step = ops.Step("load balancing")
    step.measured = {}
    hosts, connect = env.params.database_hosts, via_pgpool(env)
    plan = loadbalance.plan([h.lb_weight for h in hosts], at_least=env.params.pgpool["lb_sessions"])

    def guides_three():
        with connect() as conn:
            before = {n["node_id"]: int(n["select_cnt"]) for n in pool_nodes(conn)}
        shown = psql_through_pgpool(env, "SELECT * FROM employees;", times=3)
        with connect() as conn:
            after = pool_nodes(conn)
        grew = sum(int(n["select_cnt"]) - before.get(n["node_id"], 0) for n in after)
        # the guide's table, its select_cnt grown by the three sessions: chance, so shown with the figures
        step.measured["the guide's table"] = table(
            ["node_id", "hostname", "role", "select_cnt"],
            [[n["node_id"], n["hostname"], n["role"], int(n["select_cnt"]) - before.get(n["node_id"], 0)] for n in after])
        expect(grew == 3, f"select_cnt grew by {grew} over the guide's 3 queries.", "something else queries pgpool.")
        return (shown + "\n" + show_pool_nodes(env, also=("select_cnt",)) + "\n"
                "select_cnt grew by 3 in all; which server answered each session is chance (the guide's 1:2 split "
                f"happens {loadbalance.chance_of_guides_split(hosts):.0%} of the time)")

    def balanced():
        with connect() as conn:
            before = {n["hostname"]: int(n["select_cnt"]) for n in pool_nodes(conn)}
        counts = loadbalance.sample(via_pgpool(env, TEST_DB), plan.sessions, concurrent=loadbalance.CONCURRENT)
        expected = {h.address: counts.get(h.address, 0) for h in hosts}

        def deltas_now():
            with connect() as conn:
                after = {n["hostname"]: int(n["select_cnt"]) for n in pool_nodes(conn)}
            return {h.address: after[h.address] - before[h.address] for h in hosts}
        # pgpool's children add to select_cnt with a plain `++` on shared memory, without a lock
        # (stat_count_up in src/utils/statistics.c), so concurrent sessions can be counted short: 1 in
        # some 500 here. A count above what the sessions saw still means someone else is querying.
        deltas = wait_until(lambda: (d := deltas_now()) == expected and d, timeout=3, interval=0.2)[0] or deltas_now()
        verdicts = loadbalance.verdicts(counts, hosts, plan)
        step.measured.update(counts=counts, deltas=deltas, plan=plan)
        expect(all(ok for *_, ok in verdicts), f"observed {dict(counts)} does not fit the weights "
               f"{loadbalance.ratio(plan.weights)}.",
               "check backend_weightN (Step 30) and that load_balance_mode = on; then SHOW pool_nodes.")
        expect(all(deltas[a] <= expected[a] for a in expected),
               f"select_cnt grew by {deltas}, more than the sessions saw {dict(counts)}.",
               "something else is querying pgpool.")
        expect(sum(expected.values()) - sum(deltas.values()) <= loadbalance.uncounted_at_most(plan.sessions),
               f"select_cnt grew by {deltas}, far less than the sessions saw {dict(counts)}.",
               "pgpool was restarted during the run (select_cnt starts again at 0), or reads bypassed it.")
        return "\n".join([
            f"So, many sessions instead, {loadbalance.CONCURRENT} at a time:",
            through_pgpool_prompt(env, TEST_DB) + f"SELECT inet_server_addr();   # × {plan.sessions} sessions, one query each",
            *(f"  {name}: a share of {share:.3f}; a correct setup lands within {lo}–{hi} sessions: "
              f"{'within' if ok else 'OUTSIDE'}" for name, share, (lo, hi), ok in verdicts),
            loadbalance.what_it_tells(plan),
            through_pgpool_prompt(env) + "SHOW pool_nodes;   # before and after",
            "select_cnt grew on each node by the sessions it served (concurrent ones may go uncounted: "
            "pgpool adds to it without a lock)"])
    return step.verify("the guide's three queries", guides_three, in_check=False) \
        .verify("reads spread by the weights", balanced, in_check=False)


# --- the guide's Quick Reference ------------------------------------------------------------------------------
def quick_reference(env) -> str:
    """SHOW pool_processes and SHOW pool_pools, summarised to what does not change run to run."""
    p = env.params.pgpool
    with via_pgpool(env)() as conn:
        processes = pool_show(conn, "pool_processes")
        pools = pool_show(conn, "pool_pools")
    backends = len(env.params.database_hosts)
    expect(len(processes) == p["num_init_children"], f"pgpool has {len(processes)} children.",
           "num_init_children in pgpool.conf (Step 30); restart pgpool.")
    expect(len(pools) == p["num_init_children"] * p["max_pool"] * backends,
           f"SHOW pool_pools has {len(pools)} rows.", "max_pool in pgpool.conf (Step 30).")
    return "\n".join([
        through_pgpool_prompt(env) + "SHOW pool_processes;",
        f"{len(processes)} rows: one per pgpool child process (num_init_children = {p['num_init_children']}); "
        "each serves one client at a time",
        through_pgpool_prompt(env) + "SHOW pool_pools;",
        f"{len(pools)} rows: {p['num_init_children']} children × {p['max_pool']} cached connections (max_pool) "
        f"× {backends} backends"])
