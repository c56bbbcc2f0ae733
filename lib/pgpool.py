"""Part 2 of the guide: PgPool-II on its own host, in front of the primary and standbys.

Scram end to end: roles keep SCRAM passwords, pool_passwd holds AES-encrypted passwords
(pg_enc) under a key in ~postgres/.pgpoolkey, and nothing is downgraded to md5.
"""
from __future__ import annotations

import hashlib
import math
import shlex

from lib import pgconf, pgpoolconf, replication
from lib.params import Params
from lib.roles import sql_literal
from lib.show import expect
from lib.steps import Hosts, Remote
from lib.wait import wait_until

PGPOOL_ROLE = "pgpool"
KEY_FILE = "/var/lib/postgresql/.pgpoolkey"     # pgpool runs as postgres and reads its home's key
PCPPASS = "/var/lib/postgresql/.pcppass"


def conf(params: Params, name: str) -> str:
    return f"{params.pgpool['conf_dir']}/{name}"


# --- Steps 19-20 --------------------------------------------------------------------------------
def missing_packages(remote: Remote, packages: list[str]) -> list[str]:
    return [p for p in packages if "install ok installed" not in remote.run(
        f"dpkg-query -W -f='${{Status}}' {p} 2>/dev/null", check=False).stdout]


def ensure_packages(remote: Remote, packages: list[str]) -> str:
    query = " ".join(packages)
    missing = missing_packages(remote, packages)
    if not missing:
        return f"{remote.host.name}: {query} already installed"
    remote.sudo("apt-get update -q", timeout=600)
    remote.sudo(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {' '.join(missing)}", timeout=900,
                hint="the host needs a reachable apt repository with these packages")
    remote.changed(f"installed {' '.join(missing)}")
    return f"{remote.host.name}: installed {' '.join(missing)}"


def major_version(remote: Remote, command: str) -> str:
    """`psql --version` → 'psql (PostgreSQL) 15'; `pgpool --version` → 'pgpool-II version 4.3'."""
    out = remote.sudo(f"{command} 2>&1").stdout.strip().splitlines()[0]
    words = out.split()
    for i, w in enumerate(words):
        if w[:1].isdigit():
            parts = w.split(".")
            keep = parts[:1] if "psql" in command else parts[:2]
            return " ".join(words[:i] + [".".join(keep)])
    return out


# --- Steps 21-28 (backends) ---------------------------------------------------------------------
def ensure_monitor_grant(primary: Remote) -> str:
    member = primary.psql(f"SELECT pg_has_role({sql_literal(PGPOOL_ROLE)}, 'pg_monitor', 'MEMBER')").stdout.strip()
    if member == "t":
        return f"{primary.host.name}: {PGPOOL_ROLE} already a member of pg_monitor"
    primary.psql(f"GRANT pg_monitor TO {PGPOOL_ROLE};")
    primary.changed(f"granted pg_monitor to {PGPOOL_ROLE}")
    return f"{primary.host.name}: granted pg_monitor to {PGPOOL_ROLE}"


def hba_pgpool_lines(remote: Remote, pgpool_host) -> list[str]:
    method = replication.auth_method(remote.params)
    return [f"host all {PGPOOL_ROLE} {pgpool_host.address}/32 {method}",
            f"host all all {pgpool_host.address}/32 {method}"]


def allow_pgpool(remote: Remote, pgpool_host) -> list[str]:
    return replication.edit_file(remote, replication.conf_file(remote, "pg_hba.conf"),
                                 lambda text: pgconf.add_hba_records(text, hba_pgpool_lines(remote, pgpool_host)))


def password_encryption(remote: Remote) -> str:
    return remote.psql("SHOW password_encryption").stdout.strip()


def encryption_settings(params: Params) -> dict:
    return {"password_encryption": replication.auth_method(params)}


def configure_encryption(remote: Remote) -> list[str]:
    """Steps 24 and 27. md5 mode: password_encryption = md5, as the guide does. Default:
    nothing to write, PostgreSQL 14+ already stores SCRAM."""
    if replication.auth_method(remote.params) != "md5":
        return []
    return replication.edit_file(remote, replication.conf_file(remote, "postgresql.conf"),
                                 lambda text: pgconf.set_settings(text, encryption_settings(remote.params)))


def switch_hba_methods(remote: Remote) -> list[str]:
    """Steps 25 and 26. md5 mode: every scram-sha-256 host line becomes md5."""
    if replication.auth_method(remote.params) != "md5":
        return []
    return replication.edit_file(remote, replication.conf_file(remote, "pg_hba.conf"),
                                 lambda text: pgconf.set_hba_method(text, "scram-sha-256", "md5"))


def stored_formats(primary: Remote, roles: list[str]) -> dict[str, str]:
    """How each role's password is stored: 'md5' or 'SCRAM-SHA-256' (never the value)."""
    names = ", ".join(sql_literal(r) for r in roles)
    return dict(line.split("|") for line in primary.psql(
        f"SELECT rolname, CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE split_part(rolpassword, '$', 1) END "
        f"FROM pg_authid WHERE rolname IN ({names}) ORDER BY rolname").lines)


STANDBY_SETTINGS = {"listen_addresses": "*"}


def configure_standby(remote: Remote) -> list[str]:
    return replication.edit_file(remote, replication.conf_file(remote, "postgresql.conf"),
                                 lambda text: pgconf.set_settings(text, STANDBY_SETTINGS))


# --- Step 29 ------------------------------------------------------------------------------------
def login_from(remote: Remote, target, user: str, password: str, port: int, database: str = "postgres") -> str:
    """psql from `remote` to `target` with a password (on stdin, via PGPASSWORD)."""
    r = remote.run(f"read -r PGPASSWORD; export PGPASSWORD; psql -X -A -t -h {target.address} -p {port} "
                   f"-U {user} -d {database} -c 'SELECT current_user'", stdin=password + "\n", check=False)
    expect(r.ok and r.stdout.strip() == user,
           f"{user} cannot log in from {remote.host.name} to {target.name}:{port}: {r.stderr.strip()}",
           "no pg_hba.conf entry → add the pgpool host's /32 (steps 23, 26) and reload; connection refused → "
           "listen_addresses = '*' and restart (step 28); password authentication failed → re-set the "
           "password (steps 21-22) or pool_passwd (step 32).")
    return f"{remote.host.name} → {target.name}:{port} as {user}: connected"


# --- Step 30 ------------------------------------------------------------------------------------
def pgpool_settings(params: Params) -> dict:
    p = params.pgpool
    settings: dict = {
        "listen_addresses": "*", "port": p["port"], "pcp_listen_addresses": "localhost", "pcp_port": p["pcp_port"],
        "backend_clustering_mode": "streaming_replication", "load_balance_mode": True,
        "num_init_children": p["num_init_children"], "max_pool": p["max_pool"],
        "child_life_time": 300, "connection_life_time": 600,
        "health_check_period": 10, "health_check_timeout": 20, "health_check_user": PGPOOL_ROLE,
        "health_check_password": "", "health_check_database": "postgres",
        "health_check_max_retries": 3, "health_check_retry_delay": 1,
        "sr_check_period": 10, "sr_check_user": PGPOOL_ROLE, "sr_check_password": "",
        "sr_check_database": "postgres",
        "enable_pool_hba": True, "pool_passwd": "pool_passwd",
        "logging_collector": True, "log_directory": "/var/log/pgpool2",
        "log_filename": "pgpool.log", "log_truncate_on_rotation": False, "log_rotation_age": 0,
    }
    for i, host in enumerate(params.database_hosts):
        settings.update({f"backend_hostname{i}": host.address, f"backend_port{i}": params.postgres["port"],
                         f"backend_weight{i}": host.lb_weight,
                         f"backend_data_directory{i}": params.postgres["data_dir"],
                         f"backend_flag{i}": "ALLOW_TO_FAILOVER", f"backend_application_name{i}": host.name})
    return settings


def configure_pgpool(remote: Remote) -> list[str]:
    """The changed settings, as their new lines (the file's old lines are the shipped comments)."""
    if not remote.read_only and not remote.run("test -d /var/log/pgpool2", check=False).ok:
        remote.sudo("install -d -o postgres -g postgres -m 750 /var/log/pgpool2")
        remote.changed("created /var/log/pgpool2")
    return replication.edit_file(remote, conf(remote.params, "pgpool.conf"),
                                 lambda text: pgpoolconf.set_settings(text, pgpool_settings(remote.params)))


def connection_budget(primary: Remote) -> tuple[int, int]:
    """(pgpool's worst case backend connections, what each backend allows clients)."""
    p = primary.params.pgpool
    allowed = int(primary.psql("SELECT current_setting('max_connections')::int - "
                               "current_setting('superuser_reserved_connections')::int").stdout.strip())
    return p["num_init_children"] * p["max_pool"], allowed


# --- Steps 31-32 --------------------------------------------------------------------------------
def allow_clients(remote: Remote) -> list[str]:
    line = f"host all all {remote.params.pgpool['allowed_clients']} {replication.auth_method(remote.params)}"
    return replication.edit_file(remote, conf(remote.params, "pool_hba.conf"),
                                 lambda text: pgconf.add_hba_records(text, [line]))


def ensure_key(remote: Remote, key: str) -> str:
    """The AES key pool_passwd is encrypted with, readable by postgres only."""
    if replication.auth_method(remote.params) == "md5":
        return f"{remote.host.name}: md5 mode stores md5 hashes in pool_passwd: no AES key needed"
    if key_in_place(remote, key):
        return f"{remote.host.name}: {KEY_FILE} already in place"
    remote.postgres(f"umask 077; cat > {KEY_FILE}", stdin=key + "\n")
    remote.changed(f"wrote {KEY_FILE}")
    return f"{remote.host.name}: wrote {KEY_FILE} (mode 600, owner postgres)"


def _postgres_dotfile(remote: Remote, path: str) -> str:
    """A file in postgres's home, "" if absent (secrets not masked: compare, never print)."""
    return remote.run(f"test -f {path} && cat {path}", user="postgres", check=False, mask=False).stdout.strip()


def key_in_place(remote: Remote, key: str) -> bool:
    return _postgres_dotfile(remote, KEY_FILE) == key


def pcppass_line(params: Params, password: str) -> str:
    return f"localhost:{params.pgpool['pcp_port']}:{PGPOOL_ROLE}:{password}"


def pcppass_in_place(remote: Remote, password: str) -> bool:
    return _postgres_dotfile(remote, PCPPASS) == pcppass_line(remote.params, password)


def ensure_pool_passwd(remote: Remote, users: dict[str, str]) -> str:
    """Default: AES entries via pg_enc, fed on stdin (-i /dev/stdin) so no password is in
    argv; pg_enc's output is deterministic for a key, so a rerun leaves the file as it is.
    md5 mode: the guide's pg_md5 entries (user:md5 of password+user), written directly."""
    path = conf(remote.params, "pool_passwd")
    before = remote.sudo(f"sha256sum {path}").stdout
    if replication.auth_method(remote.params) == "md5":
        for user, pw in users.items():
            entry = f"{user}:md5{hashlib.md5((pw + user).encode()).hexdigest()}"
            replication.edit_file(remote, path, lambda text: _ensure_line(text, entry, f"{user}:"),
                                  secret_content=True)
    else:
        pairs = "".join(f"{u}:{pw}\n" for u, pw in users.items())
        remote.sudo(f"pg_enc -m -k {KEY_FILE} -f {conf(remote.params, 'pgpool.conf')} -i /dev/stdin", stdin=pairs)
    after = remote.sudo(f"sha256sum {path}").stdout
    if before != after and replication.auth_method(remote.params) != "md5":
        remote.changed(f"{path}: entries for {', '.join(users)} written with pg_enc")
    kinds = []
    for line in remote.sudo(f"cat {path}", mask=False).lines:
        if line.strip():
            user, _, value = line.partition(":")
            kinds.append(f"{user}:{'AES' if value.startswith('AES') else value[:3]}…")
    return f"{remote.host.name}: {path} " + ("unchanged" if before == after else "written") + "\n  " + "\n  ".join(kinds)


def ensure_pcp(remote: Remote, password: str) -> str:
    """pcp.conf (user:md5 of the password, as pg_md5 writes it) and ~postgres/.pcppass, so
    pcp_node_info and friends work without a prompt."""
    pcp_conf = conf(remote.params, "pcp.conf")
    line = f"{PGPOOL_ROLE}:{hashlib.md5(password.encode()).hexdigest()}"
    changed = replication.edit_file(remote, pcp_conf, lambda text: _ensure_line(text, line, f"{PGPOOL_ROLE}:"),
                                    secret_content=True)
    if not pcppass_in_place(remote, password):
        remote.postgres(f"umask 077; cat > {PCPPASS}", stdin=pcppass_line(remote.params, password) + "\n")
        remote.changed(f"wrote {PCPPASS}")
        changed.append(f"+{PCPPASS}")
    return f"{remote.host.name}: pcp " + ("already set up" if not changed else "set up (pcp.conf, .pcppass)")


def pcp_node_count(remote: Remote) -> int:
    """pcp works: pcp_node_count as postgres, password from ~postgres/.pcppass (-w: never prompt)."""
    r = remote.postgres(f"pcp_node_count -h localhost -p {remote.params.pgpool['pcp_port']} -U {PGPOOL_ROLE} -w",
                        check=False)
    expect(r.ok, f"pcp_node_count failed on {remote.host.name}: {r.stderr.strip()}",
           f"check pcp.conf (user:md5 of the password) and {PCPPASS} (host:port:user:password, mode 600).")
    count = int(r.stdout.strip())
    expect(count == len(remote.params.database_hosts), f"pcp reports {count} nodes.", "check pgpool.conf's backends.")
    return count


def _ensure_line(text: str, line: str, prefix: str) -> tuple[str, list[str]]:
    kept = [l for l in text.splitlines() if not l.startswith(prefix)]
    new = "\n".join(kept + [line]) + "\n"
    return (text, []) if line in text.splitlines() else (new, pgconf.changed_lines(text, new))


# --- Step 33 ------------------------------------------------------------------------------------
def service_state(remote: Remote) -> list[str]:
    """['active', 'enabled'] when pgpool runs and starts at boot."""
    service = remote.params.pgpool["service"]
    return remote.run(f"systemctl is-active {service}; systemctl is-enabled {service}", check=False).lines


def start_pgpool(remote: Remote, changed: bool) -> str:
    service = remote.params.pgpool["service"]
    hint = f"read /var/log/pgpool2/pgpool.log and `journalctl -u {service}` on {remote.host.name}"
    state = service_state(remote)
    active = state[:1] == ["active"]
    if state[1:] != ["enabled"]:
        remote.sudo(f"systemctl enable {service} 2>&1 | grep -v '^Synchronizing\\|^Executing' || true")
        remote.changed(f"{service} enabled at boot")
    if changed or not active:
        if active:
            # SIGTERM is pgpool's "smart" shutdown, which can wait out systemd's 90 s stop
            # timeout (seen on the freshly installed service); SIGINT is its fast shutdown.
            remote.sudo(f"systemctl kill --kill-who=main -s SIGINT {service}")
            stopped, _ = wait_until(lambda: not remote.run(f"systemctl is-active -q {service}", check=False).ok,
                                    timeout=30, interval=0.1)
            if not stopped:
                remote.sudo(f"systemctl stop {service}", hint=hint)
        remote.sudo(f"systemctl start {service}", hint=hint)
        remote.changed(f"{service} {'restarted' if active else 'started'}")
        action = "restarted (configuration changed)" if active else "started"
    else:
        action = "already running with this configuration"
    port = remote.params.pgpool["port"]
    listening, _ = wait_until(lambda: remote.run(f"timeout 1 bash -c '</dev/tcp/127.0.0.1/{port}'",
                                                 check=False).ok, timeout=30, interval=0.1)
    expect(listening, f"{service} on {remote.host.name} does not listen on port {port}.", hint)
    state = service_state(remote)
    expect(state == ["active", "enabled"], f"{service} on {remote.host.name} is {state}.", hint)
    return f"{remote.host.name}: {service} {action}; active (running), enabled at boot"


# --- Step 34 and on: through pgpool ---------------------------------------------------------------
POOL_NODE_COLUMNS = ["node_id", "hostname", "port", "status", "pg_status", "lb_weight", "role", "pg_role",
                     "replication_state"]


def pool_nodes(conn) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute("SHOW pool_nodes")
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def wait_for_nodes(connect, params: Params, timeout: float = 60) -> list[dict]:
    """Until every node is up with the right role (and standbys report streaming)."""
    def ready():
        try:
            with connect() as conn:
                nodes = pool_nodes(conn)
        except ConnectionError as e:
            if any(sign in str(e) for sign in AUTH_FAILURES):
                raise_auth_failure(params, e)
            return None                                     # not listening yet: try again
        ok = all(n["status"] == "up" and n["pg_status"] == "up" for n in nodes) and \
            all(n["replication_state"] == "streaming" for n in nodes if n["role"] == "standby")
        return nodes if ok else None
    nodes, _ = wait_until(ready, timeout=timeout, interval=0.5)
    if nodes is None:
        with connect() as conn:
            nodes = pool_nodes(conn)
    return nodes


AUTH_FAILURES = ("authentication failed", "valid password not found", "failed to authenticate",
                 "unable to decrypt password", "md5 authentication failed", "SCRAM")


def raise_auth_failure(params: Params, error: Exception) -> None:
    method = replication.auth_method(params)
    store = ("AES entries made by pg_enc with the key in " + KEY_FILE if method == "scram-sha-256"
             else "md5 entries as pg_md5 makes them")
    expect(False, f"pgpool refused the login: {error}",
           f"pgpool checks passwords against pool_passwd ({conf(params, 'pool_passwd')}), which with "
           f"auth_method {method} must hold {store}, for the same password the role has on the servers. "
           "Run step 32 again with the right secrets (PGGUIDE_POSTGRES_PASSWORD, PGGUIDE_PGPOOL_PASSWORD) "
           "and restart pgpool (step 33).")


def check_nodes(nodes: list[dict], params: Params) -> None:
    hosts = params.database_hosts
    total = sum(h.lb_weight for h in hosts)
    expect(len(nodes) == len(hosts), f"pgpool knows {len(nodes)} backends, the parameters name {len(hosts)}.",
           "check backend_hostnameN in pgpool.conf (step 30) and restart pgpool.")
    for node, host in zip(nodes, hosts):
        where = f"node {node['node_id']} ({node['hostname']})"
        expect(node["hostname"] == host.address, f"{where} should be {host.address}.", "check step 30.")
        expect(node["status"] == "up",
               f"{where} is {node['status']} in pgpool.",
               "pgpool cannot reach it or remembers it as down: test with psql from the pgpool host (step 29); "
               "then `pcp_attach_node -h localhost -U pgpool -n N`, or stop pgpool, remove "
               "/var/log/postgresql/pgpool_status and start it.")
        expect(node["role"] == host.role, f"{where} has role {node['role']}, expected {host.role}.",
               "check replication (Part 1) and sr_check_user / pg_monitor (step 22).")
        expect(math.isclose(float(node["lb_weight"]), host.lb_weight / total, abs_tol=1e-5),
               f"{where} has lb_weight {node['lb_weight']}, expected {host.lb_weight / total:.6f}.",
               "check backend_weightN (step 30) and restart pgpool.")
        if host.role == "standby":
            expect(node["replication_state"] == "streaming",
                   f"{where} shows replication_state {node['replication_state']!r}.",
                   "backend_application_nameN must match the standby's application_name (step 30).")


def node_rows(nodes: list[dict]) -> list[list[str]]:
    return [[n[c] for c in POOL_NODE_COLUMNS] for n in nodes]


def insert_through_pgpool(connect, pgpool: Remote, name: str, department: str) -> bool:
    """Insert one employee through pgpool unless one with that name exists; True if inserted.
    (Steps 35 and 39: a write through pgpool must reach the primary.)"""
    from lib import db
    with connect(dbname=replication.TEST_DB) as conn:
        added = bool(db.rows(conn, "INSERT INTO employees (name, department) SELECT %(n)s::varchar, %(d)s::varchar "
                                   "WHERE NOT EXISTS (SELECT FROM employees WHERE name = %(n)s::varchar) RETURNING 1",
                             {"n": name, "d": department}))
    if added:
        pgpool.changed(f"{name} inserted into {replication.TEST_DB}.employees through pgpool")
    return added
