"""pgpool's checks: pool_passwd and its key, the nodes as pgpool sees them, the settings it needs, the
servers' capacity for its pools, clients getting in, and reads spread by the weights."""
from __future__ import annotations

import math

import psycopg

from lib import db, loadbalance, pgpool_host, pgpoolconf
from lib.diagnose.checks.access import isready
from lib.diagnose.checks.model import FAIL, WARN, Cluster, Finding, nodes_by_pcp, passed
from lib.diagnose.checks.servers import streaming_rows
from lib.diagnose.readonly import check_sql
from lib.pgpool_client import pool_nodes, pool_show
from lib.pgpool_host import KEY_FILE, LOG_DIR, PCPPASS, PGPOOL_ROLE, POOL_PASSWD_ROLES
from lib.postgres import md5_mode
from lib.secrets import secret
from lib.show import prompt


def pool_passwd_configured(c: Cluster) -> list[Finding]:
    conf = c.pgpool_conf
    name = conf.get("pool_passwd", "")
    path = f"{c.conf_dir()}/pgpool.conf"
    if not name:
        return [Finding("pool_passwd configured", FAIL, c.pgpool.host.name, "pool_passwd is not set in pgpool.conf",
                        symptom="clients get `valid password not found`",
                        evidence=[f"{path}: no uncommented `pool_passwd = …` line"],
                        cause="the pool_passwd setting is commented out (or empty)",
                        fix=[f"sudo sed -i \"s/^#\\?pool_passwd.*/pool_passwd = 'pool_passwd'/\" {path}",
                             c.service("restart", "pgpool")],
                        step="Step 30 / Step 32", guide_row="valid password not found")]
    entries = (c.pgpool.file(f"{c.conf_dir()}/{name}") or "").splitlines()
    users = {e.split(":", 1)[0]: e.split(":", 1)[1] if ":" in e else "" for e in entries if e.strip()}
    out = [passed("pool_passwd configured", c.pgpool.host.name, f"pool_passwd = '{name}'",
               guide_row="valid password not found")]
    prefix = "md5" if md5_mode(c.params) else "AES"
    for user in POOL_PASSWD_ROLES:
        stored = users.get(user)
        if stored is None:
            out.append(Finding("pool_passwd entry", FAIL, c.pgpool.host.name, f"{user} is missing from {name}",
                               symptom=f"`valid password not found` when {user} connects through pgpool",
                               evidence=[f"{c.conf_dir()}/{name}: users {', '.join(sorted(users)) or '(none)'}"],
                               cause=f"pool_passwd has no entry for {user}",
                               fix=[f"sudo pg_enc -m -k {KEY_FILE} -f {path} -u {user} -p" if prefix == "AES"
                                    else f"sudo pg_md5 -m -f {path} -u {user} -p"],
                               step="Step 32", guide_row="valid password not found"))
        elif not stored.startswith(prefix):
            out.append(Finding("pool_passwd entry", FAIL, c.pgpool.host.name,
                               f"{user}'s entry is {stored[:3]}…, this cluster needs {prefix} entries",
                               symptom="`failed to authenticate using SCRAM` (or md5) through pgpool",
                               evidence=[f"{c.conf_dir()}/{name}: {user}:{stored[:3]}…"],
                               cause=f"auth_method {c.params.postgres['auth_method']} needs {prefix} entries in pool_passwd",
                               fix=["provision again (Step 32), or pg_enc/pg_md5 as the guide shows"],
                               step="Step 32", guide_row="failed to authenticate using SCRAM"))
        else:
            out.append(passed("pool_passwd entry", c.pgpool.host.name, f"{user}: {prefix} entry",
                           guide_row="valid password not found"))
    if prefix == "AES":
        key = c.pgpool.read(["stat", "-c", "%U %a", KEY_FILE])
        if not key.ok or key.stdout.split() != ["postgres", "600"]:
            out.append(Finding(".pgpoolkey", FAIL, c.pgpool.host.name,
                               f"{KEY_FILE} is {'missing' if not key.ok else key.stdout.strip()}",
                               symptom="pgpool cannot decrypt the AES entries: `failed to authenticate using SCRAM`",
                               evidence=[f"stat {KEY_FILE} → {key.stdout.strip() or key.stderr.strip()}"],
                               cause="the key that decrypts pool_passwd is missing or not postgres's alone (600)",
                               fix=[f"sudo chown postgres:postgres {KEY_FILE} && sudo chmod 600 {KEY_FILE}",
                                    "or provision again (Step 32)"], step="Step 32",
                               guide_row="failed to authenticate using SCRAM"))
        else:
            out.append(passed(".pgpoolkey", c.pgpool.host.name, f"{KEY_FILE}: postgres, 600"))
    return out


def pgpool_nodes(c: Cluster) -> list[Finding]:
    nodes, error = c.pcp_nodes
    if error:
        said = " / ".join(l.strip() for l in error.splitlines() if l.strip())[-240:]
        auth = "authentication" in said.lower() or "password" in said.lower()
        return [Finding("pcp", FAIL, c.pgpool.host.name, "pcp_node_info fails",
                        evidence=[f"pcp_node_info → {said}"],
                        cause=("the pcp password in ~postgres/.pcppass does not match pcp.conf" if auth
                               else "pgpool is not running, or pcp listens elsewhere"),
                        fix=[f"check {c.conf_dir()}/pcp.conf (user:md5 of the password) and {PCPPASS} "
                             "(host:port:user:password, mode 600)" if auth else c.service("status", "pgpool")],
                        step="Step 32" if auth else "Step 33", guide_row="" if auth else "SHOW pool_nodes error")]
    out = []
    by_address = {h.host.address: h for h in c.servers}
    for n in nodes:
        server = by_address.get(n["hostname"])
        name = server.host.name if server else n["hostname"]
        state = c.states.get(name, "")
        actual = "primary" if state == "online" else "standby" if state == "online,recovery" else "down"
        if n["status"] == "down" and actual != "down":
            reachable = server is None or isready(c, c.pgpool, server.host, int(c.params.postgres["port"]))[0] in (0, 1)
            streams = actual != "standby" or server is None or any(
                r[0] == server.host.address and r[2] == "streaming" for r in streaming_rows(c))
            if not reachable:
                cause, fix = (f"pgpool cannot reach {name} (the port finding above), so it detached it",
                              ["fix what keeps pgpool from reaching it; auto_failback then attaches it again"])
            elif not streams:
                cause, fix = (f"{name} does not stream from the primary (the standby-streams finding above)",
                              ["fix its replication first; auto_failback then attaches it again"])
            else:
                cause, fix = ("pgpool detached it (a failure or a restart) and keeps it down (pgpool_status)",
                              [f"sudo -u postgres pcp_attach_node -h localhost -p {c.params.pgpool['pcp_port']} "
                               f"-U {PGPOOL_ROLE} -w -n {n['node_id']}"])
            out.append(Finding("pgpool node status", FAIL, c.pgpool.host.name,
                               f"node {n['node_id']} ({name}) is down in pgpool while its server runs ({actual})",
                               symptom="load balancing skips it; SHOW pool_nodes: status down, pg_status up",
                               evidence=[f"pcp_node_info -n {n['node_id']}: status {n['status']}, role {n['role']}",
                                         f"{name}: pg_lsclusters {state}"],
                               cause=cause, fix=fix, step="Step 34"))
        elif n["status"] != "down" and actual != "down" and n["role"] != actual:
            out.append(Finding("pgpool node role", FAIL, c.pgpool.host.name,
                               f"pgpool takes node {n['node_id']} ({name}) for the {n['role']}; it is the {actual}",
                               evidence=[f"pcp_node_info -n {n['node_id']}: role {n['role']}", f"{name}: {state}"],
                               cause="pgpool has not found the primary again after a change of roles",
                               fix=[c.service("restart", "pgpool")], step="Step 33"))
        else:
            status = "up" if n["status"] == "waiting" else n["status"]       # waiting: up, no session used it yet
            out.append(passed("pgpool node status", c.pgpool.host.name,
                           f"node {n['node_id']} ({name}): {status}, {n['role']}", guide_row="SHOW pool_nodes error"))
    return out


def pgpool_settings(c: Cluster) -> list[Finding]:
    """The settings without which pgpool fails its job, against the values Step 30 writes."""
    conf, path, out = c.pgpool_conf, f"{c.conf_dir()}/pgpool.conf", []
    host, wanted = c.pgpool.host.name, c.pgpool_wanted

    def as_step_30(name) -> list[str]:
        return [f"sudo sed -i \"s/^#\\?{name}\\s*=.*/{name} = {pgpoolconf.render(wanted[name])}/\" {path}",
                c.service("restart", "pgpool")]

    def setting(name, ok, summary_bad, cause, fix, step, status=FAIL):
        value = conf.get(name, "")
        if ok(value):
            out.append(passed(name, host, f"{name} = {value or repr('')}"))
        else:
            out.append(Finding(name, status, host, summary_bad.format(value=value or "''"),
                               evidence=[f"{path}: {name} = {value or '(not set)'}"], cause=cause, fix=fix, step=step))
    setting("health_check_period", lambda v: v.isdigit() and int(v) > 0,
            "health_check_period = {value}: no health check",
            "a server that stops while no client uses it is never noticed, so no failover happens",
            as_step_30("health_check_period"), "Step 30")
    setting("failover_command", bool, "no failover_command: a stopped primary is never replaced",
            "pgpool detaches the primary and promotes nothing; every client is refused",
            ["provision again (notebook 03, Steps 40-43)"], "Step 42")
    setting("load_balance_mode", lambda v: v == "on", "load_balance_mode = {value}: every read goes to the primary",
            "load balancing is off", as_step_30("load_balance_mode"), "Step 30", status=WARN)
    # node i is the server pgpool.conf names as node i, whichever role it has now
    for i, server in enumerate(pgpool_host.backend_hosts(c.params, c.pgpool_conf_text)):
        name = f"backend_weight{i}"
        if not wanted[name]:
            continue                    # the parameters give it no reads
        setting(name, lambda v: v not in ("0", "0.0"), f"{name} = {{value}}: node {i} ({server.name}) gets no reads",
                "its weight is 0", as_step_30(name), "Step 30", status=WARN)
    return out


def capacity(c: Cluster) -> list[Finding]:
    conf = c.pgpool_conf
    try:
        children, pool = int(conf.get("num_init_children", "32")), int(conf.get("max_pool", "4"))
    except ValueError:
        return []
    out = []
    for h in c.servers:
        rows = c.query(h, "SELECT current_setting('max_connections')::int - "
                          "current_setting('superuser_reserved_connections')::int")
        if not rows:
            continue
        room = int(rows[0][0])
        if children * pool <= room:
            out.append(passed("capacity", h.host.name, f"num_init_children × max_pool = {children * pool} ≤ {room}"))
        else:
            out.append(Finding("capacity", WARN, h.host.name,
                               f"num_init_children × max_pool = {children} × {pool} = {children * pool} > {room}",
                               symptom="under load: FATAL: sorry, too many clients already",
                               evidence=[f"pgpool.conf: num_init_children = {children}, max_pool = {pool}",
                                         f"{h.host.name}: max_connections - superuser_reserved_connections = {room}"],
                               cause="pgpool may open more backend connections than the server allows",
                               fix=["lower max_pool (pgpool.parameters) or raise max_connections"], step="Step 30"))
    return out


def clients_get_in(c: Cluster) -> list[Finding]:
    """What a client sees: a login through pgpool and `SHOW pool_nodes`, the guide's first command."""
    p, sql = c.params, "SHOW pool_nodes"
    check_sql(sql)
    shown = f"psql -h {p.pgpool_host.address} -p {p.pgpool['port']} -U postgres -c \"{sql}\""
    c.pgpool.transcript.append(f"{prompt('this machine', 'a client')}{shown}")
    try:
        with db.connect(p, p.pgpool_host, user="postgres", password=secret("postgres", p), port=p.pgpool["port"]) as conn:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            nodes = pool_nodes(conn)
            check_sql("SHOW pool_processes")
            c.pgpool.transcript.append(f"{prompt('this machine', 'a client')}{shown.replace(sql, 'SHOW pool_processes')}")
            processes = pool_show(conn, "pool_processes")
    except ConnectionError as e:
        said = str(e)
        row = ("valid password not found" if "valid password not found" in said else
               "failed to authenticate using SCRAM" if "authenticat" in said else
               "no pg_hba.conf entry" if "pg_hba" in said else "SHOW pool_nodes error")
        return [Finding("client through pgpool", FAIL, c.pgpool.host.name, "a client cannot log in through pgpool",
                        symptom=said.split(": ", 1)[-1][:200], evidence=[f"this machine $ {shown}", said[-300:]],
                        cause="see the findings above: pool_passwd, pg_hba, the servers, or pgpool itself",
                        fix=["fix the FAIL findings above; then: sudo journalctl -u pgpool2 --no-pager | tail -30"],
                        step="Steps 30-34", guide_row=row)]
    up = sum(n["status"] in ("up", "waiting") for n in nodes)
    return [passed("client through pgpool", c.pgpool.host.name, f"{shown}: {up} of {len(nodes)} nodes up",
                guide_row="SHOW pool_nodes error"), children_free(c, processes)]


def children_free(c: Cluster, processes: list[dict]) -> Finding:
    """SHOW pool_processes: each pgpool child serves one client at a time; when none waits for a
    connection, a new client waits in the listen queue (num_init_children)."""
    host = c.pgpool.host.name
    if not processes or "status" not in processes[0]:
        return passed("pgpool children", host, "SHOW pool_processes has no status column here: not judged")
    free = sum(1 for row in processes if (row["status"] or "").startswith("Wait for connection"))
    if free:
        return passed("pgpool children", host, f"{free} of {len(processes)} children wait for a client")
    return Finding("pgpool children", WARN, host, f"all {len(processes)} children are busy: new clients wait",
                   symptom="connecting through pgpool hangs, then succeeds (or times out) under load",
                   evidence=[f"SHOW pool_processes: 0 of {len(processes)} in 'Wait for connection'"],
                   cause="more clients at once than num_init_children",
                   fix=["raise num_init_children (pgpool.num_init_children) within the servers' max_connections, "
                        "or pool connections in the application"], step="Step 30")


#: a server with a share p of the weights gets none of n sessions with probability (1 - p)^n; the
#: spread check opens enough sessions that this stays below 1e-6 (35 sessions at a share of 1/3)
SPREAD_FALSE_ALARM = 1e-6


#: the settings that send reads away from a server, at the values (pgpool's defaults) that do not;
#: user_redirect_preference_list and delay_threshold_by_time are in 4.6, not in 4.3
SPREAD_SETTINGS = {"database_redirect_preference_list": "", "app_name_redirect_preference_list": "",
                   "user_redirect_preference_list": "", "delay_threshold": "0", "delay_threshold_by_time": "0",
                   "disable_load_balance_on_write": "transaction"}


def spread_sessions(shares: dict[str, float]) -> int:
    smallest = min(s for s in shares.values() if s > 0)
    return 1 if smallest >= 1 else math.ceil(math.log(SPREAD_FALSE_ALARM) / math.log(1 - smallest))


def reads_spread(c: Cluster) -> list[Finding]:
    """Reads go where pgpool.conf's weights send them: sessions of its own through pgpool, each
    asking which server answered (Step 38's way), judged only by a server that got none."""
    p, conf, host = c.params, c.pgpool_conf, c.pgpool.host.name
    nodes, error = c.pcp_nodes
    if conf.get("load_balance_mode") != "on" or error or not all(n["status"] in ("up", "waiting") for n in nodes):
        return []                       # the findings above say why reads cannot spread
    weights = {n["hostname"]: float(conf.get(f"backend_weight{n['node_id']}", "1") or 0) for n in nodes}
    total = sum(weights.values())
    if total <= 0:
        return []
    shares = {address: w / total for address, w in weights.items()}
    sessions, sql = spread_sessions(shares), "SELECT inet_server_addr()"
    check_sql(sql)
    c.pgpool.transcript.append(f"{prompt('this machine', 'a client')}psql -h {p.pgpool_host.address} -p {p.pgpool['port']} "
                               f"-U postgres -c \"{sql}\"   # × {sessions} sessions")

    def connect():
        conn = db.connect(p, p.pgpool_host, user="postgres", password=secret("postgres", p), port=p.pgpool["port"])
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return conn
    try:
        counts, closed = loadbalance.sample_despite(connect, sessions, loadbalance.CONCURRENT,
                                                    survivable=(psycopg.OperationalError,))
    except ConnectionError:
        return []                       # clients_get_in reports a login that fails
    found = [_sessions_closed(c, closed, sessions)] if closed else []
    names = {h.host.address: h.host.name for h in c.servers}
    seen = ", ".join(f"{names.get(a, a)} {counts.get(a, 0)}" for a in shares)
    answered = sessions - len(closed)
    idle = [a for a, share in shares.items() if share > 0 and counts.get(a, 0) == 0]
    if not idle:
        return found + [passed("reads spread", host, f"{sql} × {answered} sessions: every server with a weight served some")]
    if any((1 - shares[a]) ** answered > SPREAD_FALSE_ALARM for a in idle):
        return found                    # too few sessions answered to tell chance from a cause
    set_here = [f"pgpool.conf: {k} = {conf[k]}" for k, harmless in SPREAD_SETTINGS.items() if conf.get(k, harmless) != harmless]
    return found + [Finding("reads spread", WARN, host, f"{', '.join(names.get(a, a) for a in idle)} served none of "
                    f"{answered} read sessions", symptom="load balancing does nothing: the reads all land elsewhere",
                    evidence=[f"{sql} × {answered} sessions: {seen}",
                              *[f"{names.get(a, a)}: backend_weight {weights[a]:g} (a share of {shares[a]:.2f}; none of "
                                f"{answered} by chance: p = {(1 - shares[a]) ** answered:.0e})" for a in idle],
                              *set_here],
                    cause=("pgpool sends these reads elsewhere: the settings above" if set_here else
                           "no setting in pgpool.conf sends them elsewhere now: pgpool may still act on an earlier "
                           "configuration (seen after a change was undone with only a reload)"),
                    fix=([f"edit {c.conf_dir()}/pgpool.conf (compare with Step 30)"] if set_here else [])
                        + [c.service("restart", "pgpool")], step="Step 38")]


def _sessions_closed(c: Cluster, closed: list[Exception], sessions: int) -> Finding:
    """pgpool closed sessions that had logged in. Read the nodes again: a node pgpool detached while
    the check ran is the usual cause (its sr_check or health check found the node wrong or gone)."""
    errors = sorted({str(e).strip().splitlines()[0] for e in closed})
    before, _ = c.pcp_nodes
    after, error = nodes_by_pcp(c)
    names = {h.host.address: h.host.name for h in c.servers}
    changed = [f"pcp_node_info -n {b['node_id']} ({names.get(b['hostname'], b['hostname'])}): "
               f"{b['status']} {b['role']} before, {a['status']} {a['role']} after"
               for b, a in zip(before, after) if (b["status"], b["role"]) != (a["status"], a["role"])]
    return Finding("sessions through pgpool", WARN, c.pgpool.host.name,
                   f"pgpool closed {len(closed)} of {sessions} read sessions after login",
                   symptom="statements fail with `server closed the connection unexpectedly`; a new session works",
                   evidence=[f"psycopg: {e}" for e in errors] + (changed or [f"pcp_node_info: {error}" if error else
                                                                         "pcp_node_info: no node changed"]),
                   cause=("pgpool detached a node while the check ran, and restarted the children that used it "
                          "(the findings above, read before, say what was wrong with the node)" if changed else
                          "pgpool restarted children while the check ran, with no change of node status"),
                   fix=["run the diagnosis again: it reads the nodes as pgpool now has them",
                        f"sudo grep -E 'degenerate|failover' {LOG_DIR}/pgpool.log | tail   "
                        f"# on {c.pgpool.host.name}"] if changed else
                       [f"sudo tail -50 {LOG_DIR}/pgpool.log   # on {c.pgpool.host.name}"],
                   step="Step 34")
