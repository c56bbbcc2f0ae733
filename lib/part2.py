"""Part 2 of the guide, steps 19-39: PgPool-II on its own host, in front of the primary and the
standbys. Each function reads facts and returns the step's plan (lib.ops.Step).

Scram end to end by default: roles keep SCRAM passwords, pool_passwd holds AES-encrypted
passwords (pg_enc) under a key in ~postgres/.pgpoolkey, and nothing is downgraded to md5.
postgres.auth_method: md5 does what the guide does instead.
"""
from __future__ import annotations

import ipaddress
import math
import re
import shlex
from functools import partial

from lib import db, ops, pgconf, pgpoolconf, postgres, system, tls
from lib.secret_files import SECRET_MODE, SECRET_OWNER, last_field_masked, secret_access, secret_file
from lib.ops import Secret, guide_step
from lib.part1 import REPLICATION_ROLE
from lib.postgres import TEST_DB, auth_method, conf_file, patience
from lib.roles import sql_literal
from lib.show import expect, masked_columns, table
from lib.wait import wait_until

#: the notebook's closing appendix: the guide's md5 way, as this notebook's steps planned it
md5_appendix = postgres.md5_appendix

PGPOOL_ROLE = "pgpool"
#: an application's own role through pgpool (Step 31): it reads and adds employees, and nothing more
APP_ROLE = "app"
APP_GRANTS = ("GRANT SELECT, INSERT ON employees TO app;", "GRANT USAGE ON SEQUENCE employees_id_seq TO app;")
#: the roles pgpool logs in to the servers as, for its clients: each has a pool_passwd entry (Step 32)
POOL_PASSWD_ROLES = ("postgres", PGPOOL_ROLE, APP_ROLE)
HOME = "/var/lib/postgresql"                  # pgpool runs as postgres and reads its home's files
KEY_FILE = f"{HOME}/.pgpoolkey"
PCPPASS = f"{HOME}/.pcppass"
LOG_DIR = "/var/log/pgpool2"
STANDBY_SETTINGS = {"listen_addresses": "*"}


def standby_settings(params) -> dict:
    """Step 28's setting, and with postgres.tls the TLS ones."""
    return {**STANDBY_SETTINGS, **postgres.tls_settings(params)}


def conf(params, name: str) -> str:
    return f"{params.pgpool['conf_dir']}/{name}"


def md5_mode(params) -> bool:
    return auth_method(params) == "md5"


def encryption_settings(params) -> dict:
    return {"password_encryption": auth_method(params)}


# --- Steps 19-20 --------------------------------------------------------------------------------------
def version_line(remote, command: str, user: str | None = None) -> str:
    """`psql --version` → 'psql (PostgreSQL) 15'; `pgpool --version` → 'pgpool-II version 4.3', and a comment
    saying what was left out: the point release and Debian's revision, which change with every update of the
    package and change nothing this guide relies on."""
    out = remote.run(f"{command} 2>&1", user=user).stdout.strip().splitlines()[0]
    words, said = out.split(), ""
    for i, w in enumerate(words):
        if w[:1].isdigit():
            parts = w.split(".")
            out = " ".join(words[:i] + [".".join(parts[:1] if "psql" in command else parts[:2])])
            said = "    # shortened here to the major version: the rest changes with every update of the package"
            break
    return f"{remote.host.name} ({user or remote.params.ssh['user']}) $ {command}{said}\n{out}"


@guide_step
def install_client(env) -> ops.Step:
    # with postgres.tls, openssl makes the host's own certificate, for pgpool's clients (Step 30)
    step = system.packages_step(ops.Step("client"), env.pgpool,
                                ["postgresql-client"] + (["openssl"] if tls.on(env.params) else []))
    if tls.on(env.params):
        tls.pair_step(step, env.pgpool)
    return step.verify("psql is installed", lambda: version_line(env.pgpool, "psql --version"))


@guide_step
def install_pgpool(env) -> ops.Step:
    vm3 = env.pgpool
    # with postgres.tls and your own pair: as Debian keeps keys, readable by the group ssl-cert, which
    # postgres (pgpool runs as it) joins; the pair made here is postgres's own
    own_pair = tls.on(env.params) and not tls.ours(env.params)
    step = system.packages_step(ops.Step("pgpool"), vm3, [env.params.pgpool["package"]] + (["ssl-cert"] if own_pair else []))
    if own_pair and "ssl-cert" not in vm3.run("id -nG postgres 2>/dev/null || true").stdout.split():
        step.do(ops.Command(vm3, "root", "adduser postgres ssl-cert", summary="postgres may read the TLS key",
                            show_output=False))
    tls.key_owner_step(step, vm3)
    tls.trust_step_for_pgpool(step, env)       # before Step 29's logins from this host to the servers
    return step.verify("pgpool is installed", lambda: version_line(env.pgpool, "pgpool --version", "root"))


# --- Steps 21-28: the backends -------------------------------------------------------------------------
@guide_step
def set_postgres_password(env) -> ops.Step:
    return postgres.role_step(ops.Step("postgres password"), env.primary, "postgres")


#: what pgpool's checks read: pg_stat_replication's columns (sr_check, SHOW pool_nodes). The guide grants
#: pg_monitor, which also holds pg_read_all_settings: pgpool could read a standby's primary_conninfo, password included
PGPOOL_GRANT, GUIDE_GRANT = "pg_read_all_stats", "pg_monitor"


def granted(primary, role: str) -> bool:
    """PGPOOL_ROLE is a direct member of `role` (pg_has_role would also count what pg_monitor holds)."""
    return postgres.value(primary, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                                   f"JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {sql_literal(PGPOOL_ROLE)} "
                                   f"AND r.rolname = {sql_literal(role)}") != "0"


@guide_step
def create_pgpool_role(env) -> ops.Step:
    primary = env.primary
    step = postgres.role_step(ops.Step("pgpool role"), primary, "pgpool")
    step.note(primary, f"the guide's `GRANT {GUIDE_GRANT} TO {PGPOOL_ROLE};` is not run: {GUIDE_GRANT} includes "
                       f"pg_read_all_settings, with which {PGPOOL_ROLE} could read primary_conninfo and the replication "
                       f"password in it; {PGPOOL_GRANT} is what its checks read")
    if granted(primary, PGPOOL_GRANT):
        step.note(primary, f"{PGPOOL_ROLE} is already a member of {PGPOOL_GRANT}")
    else:
        step.do(ops.Sql(primary, "postgres", statement=(f"GRANT {PGPOOL_GRANT} TO {PGPOOL_ROLE};",),
                        summary=f"granted {PGPOOL_GRANT} to {PGPOOL_ROLE}"))
    if granted(primary, GUIDE_GRANT):
        step.do(ops.Sql(primary, "postgres", statement=(f"REVOKE {GUIDE_GRANT} FROM {PGPOOL_ROLE};",),
                        summary=f"{GUIDE_GRANT} revoked from {PGPOOL_ROLE}"))
    return step


def hba_pgpool_lines(env) -> list[str]:
    return pgpool_hba_records(env.params)


def pgpool_hba_records(params) -> list[str]:
    """The pgpool host's lines in a server's pg_hba.conf (Steps 23, 26). replicator, whose password the standbys
    keep, has no business there: rejected first (lib.pgconf puts a reject line in front of the others for that
    address)."""
    method, address, kind = auth_method(params), params.pgpool_host.address, postgres.hba_type(params)
    return [f"{kind} all {REPLICATION_ROLE} {address}/32 reject",
            f"{kind} all {PGPOOL_ROLE} {address}/32 {method}", f"{kind} all all {address}/32 {method}"]


def backend_hba(env, text: str) -> tuple[str, list[str]]:
    """Steps 23/26 (the pgpool host's lines) and, in md5 mode, 25/26 (every scram line to md5)."""
    new, _ = pgconf.add_hba_records(text, hba_pgpool_lines(env))
    if md5_mode(env.params):
        new, _ = pgconf.set_hba_method(new, "scram-sha-256", "md5")
    return new, pgconf.changed_lines(text, new)


@guide_step
def allow_pgpool_on_primary(env) -> ops.Step:
    return postgres.primary_hba_step(env, hba_pgpool_lines, 23)


def encryption_step(step: ops.Step, remote) -> ops.Step:
    """Steps 24 and 27. md5 mode: password_encryption = md5, as the guide does. Default: nothing
    to write, PostgreSQL 14+ already stores SCRAM."""
    if not md5_mode(remote.params):
        return step.note(remote, "auth_method scram-sha-256: password_encryption stays scram-sha-256 (no md5 downgrade)")
    return postgres.edit_step(step, remote, conf_file(remote, "postgresql.conf"),
                              lambda text: pgconf.set_settings(text, encryption_settings(remote.params)))


def stored_formats(primary, roles: list[str]) -> dict[str, str]:
    """How each role's password is stored: 'md5' or 'SCRAM-SHA-256' (never the value)."""
    names = ", ".join(sql_literal(r) for r in roles)
    return dict(line.split("|") for line in primary.psql(
        f"SELECT rolname, CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE split_part(rolpassword, '$', 1) END "
        f"FROM pg_authid WHERE rolname IN ({names}) ORDER BY rolname").lines)


def _md5_on_primary(env) -> ops.Step:
    """The guide's Step 24: password_encryption = md5, a restart, the passwords set again (as md5)."""
    step = encryption_step(ops.Step("password_encryption"), env.primary)
    if md5_mode(env.params):
        for secret_name in ("postgres", "pgpool"):     # app is made in Step 31, already as md5
            postgres.role_step(step, env.primary, secret_name)
        postgres.settle(step, env.primary, {**postgres.primary_settings(env.params), **encryption_settings(env.params)})
    return step


@guide_step
def md5_on_primary(env) -> ops.Step:
    primary = env.primary
    step = postgres.guides_md5_way(encryption_step(ops.Step("password_encryption"), primary), env, _md5_on_primary, 24)

    def formats():
        found = stored_formats(primary, ["postgres", PGPOOL_ROLE])
        want = "md5" if md5_mode(env.params) else "SCRAM-SHA-256"
        expect(set(found.values()) == {want}, f"passwords are stored as {found}.",
               "re-set them (Steps 21-22 do it when the format differs).")
        return f"{primary.host.name}: passwords of postgres and {PGPOOL_ROLE} are stored as {want}"
    return step.verify("passwords are stored as auth_method says", formats)


def _md5_hba(env) -> ops.Step:
    step = ops.Step("pg_hba.conf methods")
    return postgres.edit_step(step, env.primary, conf_file(env.primary, "pg_hba.conf"),
                              lambda text: pgconf.set_hba_method(text, "scram-sha-256", "md5"))


@guide_step
def md5_hba_on_primary(env) -> ops.Step:
    primary = env.primary
    step = _md5_hba(env) if md5_mode(env.params) else postgres.guides_md5_way(ops.Step("methods"), env, _md5_hba, 25)
    postgres.settle(step, primary, {**postgres.primary_settings(env.params), **encryption_settings(env.params)})
    return step.verify("password_encryption in effect", lambda: postgres.psql_read(primary, "SHOW password_encryption;"))


@guide_step
def allow_pgpool_on_standbys(env) -> ops.Step:
    return postgres.guides_md5_way(_pgpool_hba_on_standbys(env), env, _pgpool_hba_on_standbys, 26)


def _pgpool_hba_on_standbys(env) -> ops.Step:
    step = ops.Step("standby pg_hba.conf")
    for s in env.standbys:
        system.firewall_step(step, s, env.params.postgres["port"], [env.pgpool.host.address])   # pgpool reads from it
        postgres.edit_step(step, s, conf_file(s, "pg_hba.conf"), partial(backend_hba, env))
        if not step.actions or step.actions[-1].host != s.host.name:
            postgres.reload_if_pending(step, s)          # an earlier run's edit, never reloaded
        else:
            step.notify(ops.service(s, "reload", env.params.postgres["service"]))
    return step


def _md5_on_standbys(env) -> ops.Step:
    """The guide's Step 27: password_encryption = md5 on each standby, and a restart."""
    step = ops.Step("standby password_encryption")
    for s in env.standbys:
        encryption_step(step, s)
        if md5_mode(env.params) and step.actions:
            step.notify(ops.service(s, "restart", env.params.postgres["service"]))
    return step


@guide_step
def md5_on_standbys(env) -> ops.Step:
    step = ops.Step("standby password_encryption")
    for s in env.standbys:
        encryption_step(step, s)
    return postgres.guides_md5_way(step, env, _md5_on_standbys, 27)


@guide_step
def listen_on_standbys(env) -> ops.Step:
    """listen_addresses = '*' on each standby (Debian keeps postgresql.conf out of the data
    directory, so the base backup did not bring the primary's), then restart or reload."""
    step = ops.Step("standby listen_addresses")
    for s in env.standbys:
        postgres.edit_step(step, s, conf_file(s, "postgresql.conf"),
                           lambda text: pgconf.set_settings(text, {**standby_settings(env.params), **(
                               encryption_settings(env.params) if md5_mode(env.params) else {})}))
        postgres.settle(step, s, {**standby_settings(env.params), **encryption_settings(env.params)})

    def back():
        for s in env.standbys:
            expect(postgres.cluster_state(s) == "online,recovery", f"{s.host.name} is not back as a standby.",
                   f"read {env.params.postgres['log_file']} on {s.host.name}.")
        return "\n".join(postgres.read(s, "grep listen_addresses " + shlex.quote(conf_file(s, "postgresql.conf")))
                         + "\n" + postgres.lsclusters(s) for s in env.standbys)
    return step.verify("each standby listens and is back", back)


# --- Step 29 -----------------------------------------------------------------------------------------------
def as_client(remote, command: str, secret_name: str, *, flags: str = "-X", check: bool = True):
    """`command` (a psql command line as the guide writes it) run on `remote` as the admin user, a
    client's way: the secret's password on stdin into PGPASSWORD, `flags` added to psql."""
    from lib.secrets import secret
    to_pgpool = f"-p {remote.params.pgpool['port']} " in command
    verified = tls.environment(remote.params, to_pgpool=to_pgpool) if tls.on(remote.params) else ""
    return remote.run(f"read -r PGPASSWORD; export PGPASSWORD; {verified}{command.replace('psql', f'psql {flags}', 1)}",
                      stdin=secret(secret_name, remote.params) + "\n", check=check)


def login_from(remote, target, user: str, secret_name: str, port: int, database: str = "postgres") -> str:
    """psql from `remote` to `target` with a password."""
    command = f"psql -h {target.address} -p {port} -U {user} -d {database} -c 'SELECT current_user'"
    r = as_client(remote, command, secret_name, flags="-X -A -t", check=False)
    expect(r.ok and r.stdout.strip() == user,
           f"{user} cannot log in from {remote.host.name} to {target.name}:{port}: {r.stderr.strip()}",
           "no pg_hba.conf entry → add the pgpool host's /32 (Steps 23, 26) and reload; connection refused → "
           "listen_addresses = '*' and restart (Step 28); password authentication failed → re-set the "
           "password (Steps 21-22) or pool_passwd (Step 32).")
    return f"{remote.host.name} ({remote.params.ssh['user']}) $ {command}\n{r.stdout.strip()}"


@guide_step
def test_connectivity(env) -> ops.Step:
    port = env.params.postgres["port"]
    return ops.Step("connectivity").verify("pgpool's host reaches every backend", lambda: "\n".join(
        login_from(env.pgpool, b.host, PGPOOL_ROLE, "pgpool", port) for b in [env.primary, *env.standbys]))


# --- Step 30 ------------------------------------------------------------------------------------------------
#: how fast pgpool finds a server gone: a check every period; a failed one is tried again
#: max_retries times, retry_delay apart; each try gives up connecting after timeout
HEALTH_CHECK = {"health_check_period": 2, "health_check_timeout": 3, "health_check_max_retries": 2,
                "health_check_retry_delay": 1}
#: what brings a detached server back, and what keeps clients waiting while there is no primary
HEALING = {"sr_check_period": 5, "auto_failback": True, "auto_failback_interval": 10,
           "search_primary_node_timeout": 10, "detach_false_primary": True}


def detection_bounds(settings: dict = HEALTH_CHECK) -> dict[str, int]:
    """Seconds from a server's failure to pgpool's verdict, at worst, from the health-check settings:
    `refused` when its host answers (the server stopped or crashed: each try fails at once),
    `silent` when nothing answers (host or network down: each try waits out the timeout)."""
    period, timeout = settings["health_check_period"], settings["health_check_timeout"]
    retries, delay = settings["health_check_max_retries"], settings["health_check_retry_delay"]
    return {"refused": period + retries * delay, "silent": period + (retries + 1) * timeout + retries * delay}


def reattach_bound(healing: dict = HEALING) -> int:
    """Seconds, at worst, from a detached standby streaming again to pgpool using it again: the
    next replication check finds it in pg_stat_replication, unless a failback happened within
    auto_failback_interval."""
    return healing["sr_check_period"] + healing["auto_failback_interval"]


def backend_hosts(params, conf_text: str = "") -> list:
    """The servers in pgpool's node order: as pgpool.conf has them when it names the same servers
    (node ids are pgpool's identities, kept in pgpool_status, so a failover that swapped the roles in
    the parameters does not renumber them), else as the parameters list them, primary first."""
    found = dict(re.findall(r"^backend_hostname(\d+)\s*=\s*'([^']*)'", conf_text, re.M))
    addresses = [found[k] for k in sorted(found, key=int)]
    hosts = params.database_hosts
    if sorted(addresses) == sorted(h.address for h in hosts) and len(addresses) == len(hosts):
        return [params.host(a) for a in addresses]
    return hosts


#: where local clients find pgpool's socket: where psql looks by default on Debian and Ubuntu
SOCKET_DIR = "/var/run/postgresql"


def socket_setting(conf_text: str) -> str:
    """The setting's name in this pgpool: `socket_dir` up to 4.4 (its shipped file names it),
    `unix_socket_directories` from 4.5, whose compiled default is /tmp."""
    return "socket_dir" if re.search(r"^\s*#?\s*socket_dir\s*=", conf_text, re.M) else "unix_socket_directories"


def pgpool_settings(params, hosts: list | None = None, conf_text: str = "") -> dict:
    p = params.pgpool
    settings: dict = {
        "listen_addresses": "*", "port": p["port"], socket_setting(conf_text): SOCKET_DIR, "pcp_listen_addresses": "localhost", "pcp_port": p["pcp_port"],
        "backend_clustering_mode": "streaming_replication", "load_balance_mode": True,
        "num_init_children": p["num_init_children"], "max_pool": p["max_pool"],
        "child_life_time": 300, "connection_life_time": 600,
        **HEALTH_CHECK, "health_check_user": PGPOOL_ROLE, "health_check_password": "",
        "health_check_database": "postgres",
        **HEALING, "sr_check_user": PGPOOL_ROLE, "sr_check_password": "", "sr_check_database": "postgres",
        "enable_pool_hba": True, "pool_passwd": "pool_passwd",
        "logging_collector": True, "log_directory": LOG_DIR,
        "log_filename": "pgpool.log", "log_truncate_on_rotation": False, "log_rotation_age": 0,
    }
    if tls.on(params):      # TLS to clients (with this pair) and to the servers, whose certificates it checks
        settings.update({"ssl": True, "ssl_cert": params.postgres["tls_cert_file"],
                         "ssl_key": params.postgres["tls_key_file"], "ssl_ca_cert": params.postgres["tls_ca_file"]})
    for i, host in enumerate(hosts or params.database_hosts):
        settings.update({f"backend_hostname{i}": host.address, f"backend_port{i}": params.postgres["port"],
                         f"backend_weight{i}": host.lb_weight,
                         f"backend_data_directory{i}": params.postgres["data_dir"],
                         f"backend_flag{i}": "ALLOW_TO_FAILOVER", f"backend_application_name{i}": host.name})
    return settings


def connection_budget(env) -> str:
    p = env.params.pgpool
    allowed = int(postgres.value(env.primary, "SELECT current_setting('max_connections')::int - "
                                              "current_setting('superuser_reserved_connections')::int"))
    needed = p["num_init_children"] * p["max_pool"]
    expect(needed <= allowed, f"pgpool may open {needed} connections per server, more than {allowed}.",
           "lower num_init_children or max_pool, or raise max_connections on the servers.")
    return f"num_init_children x max_pool = {needed}; each server allows {allowed} client connections"


@guide_step
def configure_pgpool(env) -> ops.Step:
    vm3, step = env.pgpool, ops.Step("pgpool.conf")
    if not vm3.run(f"test -d {LOG_DIR}", check=False).ok:
        step.do(ops.Command(vm3, "root", f"install -d -o postgres -g postgres -m 750 {LOG_DIR}",
                            summary=f"created {LOG_DIR}"))
    path = conf(env.params, "pgpool.conf")
    current = vm3.run(f"cat {shlex.quote(path)} 2>/dev/null || true", user="root", mask=False).stdout
    wanted = pgpool_settings(env.params, backend_hosts(env.params, current), current)
    postgres.edit_step(step, vm3, path, lambda text: pgpoolconf.set_settings(text, wanted))
    change = next((a for a in step.actions if getattr(a, "path", None) == path), None)
    if change:
        # what the guide sets that the shipped file already says, so the diff does not show it
        already = [f"{n} = {pgpoolconf.render(v)}" for n, v in wanted.items()
                   if pgpoolconf.set_settings(change.old, {n: v})[0] == change.old]
        if already:
            step.note(vm3, "already set in the shipped file: " + ", ".join(already))
    return step.verify("pgpool's connections fit the servers'", partial(connection_budget, env))


#: the settings of Step 30 in the guide's groups, each group with why it is set so; the guide's groups first, ours after
GUIDE_GROUPS = [
    ("Listening", r"listen_addresses|port|socket_dir|unix_socket_directories|pcp_listen_addresses|pcp_port",
     "clients connect to pgpool on port 9999, not 5432; pcp, its admin interface, answers on this host only"),
    ("Backend {n}: {role}", r"backend_\w+{n}",
     "one block per server, the primary first; the weights split the sessions' reads, and the application name is "
     "the one the standby reports, so that pgpool can show its replication state"),
    ("Load balancing", r"load_balance_mode", "reads are spread over the servers by weight, one draw per session"),
    ("Clustering mode", r"backend_clustering_mode",
     "streaming replication: pgpool asks each server whether it is in recovery to find the primary"),
    ("Connection pooling", r"num_init_children|max_pool|child_life_time|connection_life_time",
     "32 children, each keeping up to 3 connections to every server: 96, within what each server allows"),
    ("Health check", r"health_check_\w+",
     "a check every 2 s as pgpool, its password from pool_passwd; a server gone is noticed within 4 s (13 s if its "
     "host does not answer)"),
    ("Streaming replication check", r"sr_check_\w+", "every 5 s pgpool reads which server is the primary and each "
     "standby's lag"),
    ("Password file, and who may connect", r"pool_passwd|enable_pool_hba",
     "pool_passwd (Step 32) holds the passwords pgpool logs in with; pool_hba.conf (Step 31) is read only when "
     "enabled"),
    ("Healing (not in the guide)", r"auto_failback|auto_failback_interval|search_primary_node_timeout|detach_false_primary",
     "a standby that streams again is used again, and a missing primary keeps readers waiting 10 s, not 5 min"),
    ("Log (not in the guide)", r"logging_collector|log_\w+",
     "pgpool's own log in /var/log/pgpool2, where the failover scripts of Step 42 write too"),
    ("TLS (postgres.tls)", r"ssl\w*", "TLS to the clients, and to the servers, whose certificates pgpool checks"),
]


def guide_groups(names: list[str], hosts: list) -> list[tuple[str, str, list[str]]]:
    """(title, why, settings) in the guide's order; every name falls in exactly one group."""
    groups = []
    for title, pattern, why in GUIDE_GROUPS:
        for n, host in (enumerate(hosts) if "{n}" in pattern else [(None, None)]):
            role = "the primary" if n == 0 else "a standby"
            found = [x for x in names if re.fullmatch(pattern.format(n=n), x)]
            if found:
                groups.append((title.format(n=n, role=f"{role} ({host.name})" if host else ""), why, found))
    return groups


def settings_as_the_guide_groups(env) -> str:
    """Step 30's settings read back from pgpool.conf on the host, grouped as the guide groups them, each group
    with why."""
    vm3, path = env.pgpool, conf(env.params, "pgpool.conf")
    text = vm3.run(f"cat {shlex.quote(path)}", user="root", mask=False).stdout
    active = pgpoolconf.active_settings(text)
    wanted = pgpool_settings(env.params, backend_hosts(env.params, text), text)
    lines = [f"{vm3.host.name} (root) $ cat {path}    # its active settings, grouped as the guide groups them"]
    for title, why, names in guide_groups(list(wanted), backend_hosts(env.params, text)):
        lines += [f"{title}: {why}"] + [f"  {n} = {pgpoolconf.render(_typed(active[n]))}" if n in active
                                        else f"  {n} is not set" for n in names]
    return "\n".join(lines)


def _typed(value: str):
    """A value as active_settings reads it, typed again so that render() quotes only strings."""
    return int(value) if value.isdigit() else {"on": True, "off": False}.get(value, value)


# --- Steps 31-32 ---------------------------------------------------------------------------------------------
def pool_hba_lines(params) -> list[str]:
    """Who may use pgpool, as one block: the superuser from the pgpool host and from pgpool.admin_clients, then
    nobody else as the superuser, then the clients' network as any other role."""
    kind, method, p = postgres.hba_type(params), auth_method(params), params.pgpool
    admins = dict.fromkeys([f"{params.pgpool_host.address}/32", p["admin_clients"]])
    return ([f"{kind} all postgres {a} {method}" for a in admins]
            + [f"host all postgres {p['allowed_clients']} reject", f"{kind} all all {p['allowed_clients']} {method}"])


def pgpool_sources(params) -> list[str]:
    """Who reaches pgpool's port: the clients' network, and the admin machine when it lies outside it."""
    clients, admins = (ipaddress.ip_network(params.pgpool[k]) for k in ("allowed_clients", "admin_clients"))
    return [str(clients)] + ([] if admins.subnet_of(clients) else [str(admins)])


@guide_step
def configure_pool_hba(env) -> ops.Step:
    """The clients' network with a password, the superuser only from the admin addresses, and no `trust`
    line left (Debian ships three)."""
    method = auth_method(env.params)

    def change(text):
        no_trust, _ = pgconf.without_trust(text, method)
        new, _ = pgconf.hba_block(no_trust, pool_hba_lines(env.params))
        return new, pgconf.changed_lines(text, new)
    step = postgres.edit_step(ops.Step("pool_hba.conf"), env.pgpool, conf(env.params, "pool_hba.conf"), change)
    return app_role(step, env)


def app_role(step: ops.Step, env) -> ops.Step:
    """The application's own role: it logs in (through pgpool, from the clients' network), reads and adds
    employees, and can do nothing else: no other table, no DELETE, no DDL."""
    primary = env.primary
    exists = postgres.value(primary, f"SELECT count(*) FROM pg_roles WHERE rolname = {sql_literal(APP_ROLE)}") == "1"
    postgres.role_step(step, primary, APP_ROLE)
    may = exists and postgres.value(primary, f"SELECT has_table_privilege({sql_literal(APP_ROLE)}, 'employees', 'SELECT') "
                                             f"AND has_table_privilege({sql_literal(APP_ROLE)}, 'employees', 'INSERT') AND "
                                             f"has_sequence_privilege({sql_literal(APP_ROLE)}, 'employees_id_seq', 'USAGE')",
                                    database=TEST_DB) == "t"
    if may:
        return step.note(primary, f"{APP_ROLE} may already read and add employees in {TEST_DB}")
    return step.do(ops.Sql(primary, "postgres", statement=("\n".join(APP_GRANTS),), database=TEST_DB,
                           summary=f"{APP_ROLE} may read and add employees in {TEST_DB}"))


def _user_line(line: str) -> str:
    """`user:secret` shown as `user:********`."""
    return line.split(":", 1)[0] + ":" + ops.MASK if ":" in line else ops.MASK


def _replace_line(text: str | None, prefix: str, line: tuple) -> tuple:
    """`text` without its lines that start with `prefix`, and `line` after them (replace_line by hand)."""
    kept = "".join(l + "\n" for l in (text or "").splitlines() if not l.startswith(prefix))
    return (kept, *line, "\n")


def pool_passwd_entries(env) -> dict[str, str]:
    """What pg_enc makes of each password with the key (its output is deterministic for a key):
    compared with pool_passwd, never shown."""
    from lib.secrets import secret
    vm3 = env.pgpool
    pairs = "".join(f"{u}:{secret(u, env.params)}\n" for u in POOL_PASSWD_ROLES)
    out = vm3.run(f"pg_enc -k {KEY_FILE} -i /dev/stdin", user="root", stdin=pairs, mask=False, check=False).stdout
    # pg_enc prints each pair's entry as `pool_passwd string: AES…` (some builds: `user:AES…`).
    users = POOL_PASSWD_ROLES
    found = dict(l.split(":", 1) for l in out.splitlines() if re.match(r"^[^\s:]+:AES\S+$", l))
    strings = re.findall(r"^pool_passwd string: (AES\S+)$", out, re.M)
    return found if found else dict(zip(users, strings)) if len(strings) == len(users) else {}


@guide_step
def password_file(env) -> ops.Step:
    """pool_passwd: AES entries (pg_enc) under ~postgres/.pgpoolkey, or md5 entries in md5 mode;
    pcp.conf and ~postgres/.pcppass for pgpool's admin commands."""
    vm3, p, step = env.pgpool, env.params, ops.Step("pool_passwd")
    path = conf(p, "pool_passwd")
    current = vm3.read_file(path)
    if md5_mode(p):
        entries = {u: (f"{u}:md5", Secret(u, f"md5:{u}")) for u in POOL_PASSWD_ROLES}
        kept = "".join(l + "\n" for l in current.splitlines() if l.split(":", 1)[0] not in entries)
        pieces = (kept,) + tuple(x for u in entries for x in (*entries[u], "\n"))
        if ops.resolve(pieces, p) != current:
            step.do(ops.FileChange(vm3, "root", path=path, old=current, new=pieces, owner=SECRET_OWNER,
                                   mode=SECRET_MODE, mask_line=_user_line))
        else:
            step.note(vm3, f"{path} already holds md5 entries for {', '.join(POOL_PASSWD_ROLES)}")
    else:
        secret_file(step, vm3, KEY_FILE, (Secret("pgpool_key"), "\n"), lambda l: ops.MASK, "PGGUIDE_PGPOOL_KEY")
        wanted = pool_passwd_entries(env) if not step.actions else {}
        have = dict(l.split(":", 1) for l in current.splitlines() if ":" in l)
        if step.actions or any(have.get(u) != e for u, e in wanted.items()) or len(wanted) < len(POOL_PASSWD_ROLES):
            pg_enc = f"pg_enc -m -k {KEY_FILE} -f {shlex.quote(conf(p, 'pgpool.conf'))} -i /dev/stdin"
            step.do(ops.Command(vm3, "root", pg_enc,
                                input=tuple(x for u in POOL_PASSWD_ROLES for x in (f"{u}:", Secret(u), "\n")),
                                shown=f"{pg_enc}    # stdin: " + ", ".join(f"{u}:********" for u in POOL_PASSWD_ROLES),
                                summary=f"{path}: entries for {', '.join(POOL_PASSWD_ROLES)} written with pg_enc",
                                show_output=False))
        else:
            step.note(vm3, f"{path} already holds the AES entries of {', '.join(POOL_PASSWD_ROLES)}")
    if not any(isinstance(a, ops.FileChange) and a.path == path for a in step.actions):
        secret_access(step, vm3, path)        # pg_enc keeps the mode the file has
    pcp = conf(p, "pcp.conf")
    # by hand, the package's pcp.conf keeps its own text: only pgpool's line is replaced
    by_hand = (f"replace_line {shlex.quote(pcp)} '^{PGPOOL_ROLE}:' {SECRET_OWNER} {SECRET_MODE} '{PGPOOL_ROLE}:'",
               (Secret("pgpool", "md5"), "\n"))
    secret_file(step, vm3, pcp, lambda old: _replace_line(old, f"{PGPOOL_ROLE}:", (f"{PGPOOL_ROLE}:", Secret("pgpool", "md5"))),
                _user_line, f"{PGPOOL_ROLE}'s md5 (pg_md5 of PGGUIDE_PGPOOL_PASSWORD)", by_hand=by_hand)
    secret_file(step, vm3, PCPPASS, (f"localhost:{p.pgpool['pcp_port']}:{PGPOOL_ROLE}:", Secret("pgpool"), "\n"),
                 last_field_masked, "PGGUIDE_PGPOOL_PASSWORD")

    def entries():
        kinds = []
        for line in vm3.read_file(path).splitlines():
            if line.strip():
                user, _, value = line.partition(":")
                kinds.append(f"{user}:{'AES' if value.startswith('AES') else value[:3]}…")
        return f"{vm3.host.name} (root) $ cat {path}   # entries, their secret part cut\n" + "\n".join(kinds)

    def private():
        files = [path, pcp, PCPPASS] + ([] if md5_mode(p) else [KEY_FILE])
        out = vm3.run("stat -c '%U:%G %a %n' " + " ".join(map(shlex.quote, files)), user="root").lines
        loose = [l for l in out if not l.startswith(f"{SECRET_OWNER} {SECRET_MODE} ")]
        expect(not loose, f"files that hold secrets can be read by others: {'; '.join(loose)}.",
               f"provision again: it sets them to {SECRET_OWNER}, mode {SECRET_MODE}")
        return f"{vm3.host.name} (root) $ stat -c '%U:%G %a %n' {' '.join(files)}\n" + "\n".join(out)
    step.verify("pool_passwd has an entry per role", entries)
    return step.verify("only postgres can read the files that hold secrets", private)


# --- Step 33 ---------------------------------------------------------------------------------------------------
def service_state(remote) -> list[str]:
    """['active', 'enabled'] when pgpool runs and starts at boot."""
    service = shlex.quote(remote.params.pgpool["service"])
    return remote.run(f"systemctl is-active {service}; systemctl is-enabled {service}", check=False).lines


#: the checksums of pgpool's configuration files as they were when this step last (re)started pgpool
LOADED = "/var/run/postgresql/pgpool.pgguide-loaded"
PID_FILE = "/var/run/postgresql/pgpool.pid"


def config_files(params) -> list[str]:
    return [conf(params, n) for n in ("pgpool.conf", "pool_hba.conf", "pool_passwd")]


def restart_pending_script(files: list[str], loaded: str = LOADED, pid: str = PID_FILE) -> str:
    """Shell that prints `newer` when pgpool runs with other configuration files than those on disk. After our own
    (re)start the checksums written then decide; without them (pgpool started by the package), a file written
    after pgpool's pid file."""
    quoted = " ".join(shlex.quote(f) for f in files)
    return (f"if test -f {loaded}; then sha256sum --quiet --status -c {loaded} 2>/dev/null || echo newer; "
            f"elif test -f {pid}; then started=$(date -r {pid} +%s%N); for f in {quoted}; do "
            f"[ $(date -r $f +%s%N) -gt $started ] && echo newer; done; fi; true")


def restart_pending(remote) -> bool:
    """pgpool runs with other configuration than the files on disk. The pid file's time alone once misled: after
    a crash drill and a heal on the Debian 13 lab, Step 30 changed a weight and Step 33 found nothing to restart."""
    return "newer" in remote.sudo(restart_pending_script(config_files(remote.params))).stdout


#: a systemd drop-in for pgpool's unit. The packaged unit signals every pgpool process at once
#: (KillMode=control-group); pgpool's main process then signals its children too, and now and then a
#: child is left waiting on a lock (a futex) as it exits, and the stop hangs for systemd's whole 90 s (measured on the
#: lab: 9 of 700 restarts under sessions). With the main process alone signalled, 1 of 800 restarts
#: still hung (main and logger processes busy), so the stop is also bounded: after 10 s systemd kills
#: what is left, and the start goes on.
STOP_TIMEOUT_S = 10
STOP_DROPIN = f"""\
# Written by Step 33. pgpool stops its own children: on a stop, systemd sends SIGINT (pgpool's
# fast shutdown, as the packaged unit says) to the main process only, and kills whatever is
# left after {STOP_TIMEOUT_S} s, so that a stop that hangs (rare) delays a restart by {STOP_TIMEOUT_S} s, not 90.
[Service]
KillMode=mixed
TimeoutStopSec={STOP_TIMEOUT_S}
"""


def stop_dropin(params) -> str:
    return f"/etc/systemd/system/{params.pgpool['service']}.service.d/pgguide-stop.conf"


def pgpool_service(env, verb: str) -> ops.Command:
    """A handler: pgpool started or restarted, then listening on its port. A restart, not a reload, after
    pgpool.conf changed: Step 43 restarts pgpool whenever the file is newer than the running pgpool."""
    vm3, p = env.pgpool, env.params.pgpool
    service, port = shlex.quote(p["service"]), p["port"]
    listening = ops.wait_for(f"listens {int(port)}", 30, f"pgpool does not listen on {port}")
    files = " ".join(shlex.quote(f) for f in config_files(env.params))
    loaded = f"sha256sum {files} > {LOADED}"       # what this pgpool read, for restart_pending
    return ops.Command(vm3, "root", f"systemctl {verb} {service} && {listening} && {loaded}", handler=True,
                       shown=f"systemctl {verb} {service}", summary=f"{service} {verb}ed",
                       hint=f"read {LOG_DIR}/pgpool.log and `journalctl -u {service}` on {vm3.host.name}")


@guide_step
def start_pgpool(env) -> ops.Step:
    vm3, p = env.pgpool, env.params.pgpool
    step, service, port = ops.Step("pgpool service"), shlex.quote(p["service"]), p["port"]
    hint = f"read {LOG_DIR}/pgpool.log and `journalctl -u {service}` on {vm3.host.name}"
    system.firewall_step(step, vm3, port, pgpool_sources(env.params))       # clients connect to pgpool
    dropin = stop_dropin(env.params)
    if postgres.ensure_file(step, vm3, dropin, STOP_DROPIN, owner="root:root", mode="644", make_dir=True):
        step.do(ops.Command(vm3, "root", "systemctl daemon-reload", summary="systemd read the drop-in"))
    state = service_state(vm3)
    if state[1:] != ["enabled"]:
        step.do(ops.Command(vm3, "root", f"systemctl enable {service} 2>&1 | grep -v '^Synchronizing\\|^Executing' || true",
                            shown=f"systemctl enable {service}", summary=f"{service} enabled at boot"))
    else:
        step.note(vm3, f"{service} is already enabled at boot (the package enables it), so `systemctl enable "
                       f"{service}` has nothing to do")
    if state[:1] != ["active"]:
        step.notify(pgpool_service(env, "start"))
    elif restart_pending(vm3):
        step.notify(pgpool_service(env, "restart"))
    else:
        step.note(vm3, f"{service} is running with the configuration on disk")

    def running():
        now = service_state(vm3)
        expect(now == ["active", "enabled"], f"{service} on {vm3.host.name} is {now}.", hint)
        kill_mode = postgres.read(vm3, f"systemctl show -p KillMode {service}", user=None)
        expect(kill_mode.endswith("\nKillMode=mixed"), f"{service} on {vm3.host.name} runs with "
               f"{kill_mode.splitlines()[-1]}: a stop can hang.", f"run `systemctl daemon-reload` there so that systemd reads {dropin}")
        return "\n".join([
            postgres.read(vm3, f"systemctl status {service} --no-pager | grep -o 'Active: [a-z]* ([a-z]*)'", user=None),
            postgres.read(vm3, f"systemctl is-enabled {service}", user=None),
            kill_mode])
    return step.verify("pgpool runs and starts at boot", running)


# --- Step 34 and on: through pgpool -------------------------------------------------------------------------------
AUTH_FAILURES = ("authentication failed", "valid password not found", "failed to authenticate",
                 "unable to decrypt password", "md5 authentication failed", "SCRAM")


def via_pgpool(env, database: str = "postgres"):
    """psycopg connections from the notebook to pgpool, as postgres (the guide's client).
    Sessions that come and go should use TEST_DB: pgpool never keeps its backend connections
    for the databases postgres, template0, template1 and regression (child.c), so there every
    session costs a new login on every server."""
    from lib.secrets import secret
    connect = partial(db.connect, env.params, env.pgpool.host, user="postgres", password=secret("postgres", env.params),
                      port=env.params.pgpool["port"], dbname=database)

    def connected(**kw):
        if env.pgpool.unreachable is not None:      # SSH already failed: do not wait out a connect timeout too
            raise ConnectionError(str(env.pgpool.unreachable))
        return connect(**kw)
    return connected


def through_pgpool_prompt(env, database: str = "postgres") -> str:
    return (f"notebook → {env.pgpool.host.name}:{env.params.pgpool['port']} (postgres"
            + (f", {database}" if database != "postgres" else "") + ") $ ")


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


def pcp_node_count(env) -> str:
    """pcp works: pcp_node_count as postgres, password from ~postgres/.pcppass (-w: never prompt)."""
    vm3 = env.pgpool
    command = pcp(env, "pcp_node_count")
    r = vm3.run(command, user="postgres", check=False)
    expect(r.ok, f"pcp_node_count failed on {vm3.host.name}: {r.stderr.strip()}",
           f"check pcp.conf (user:md5 of the password) and {PCPPASS} (host:port:user:password, mode 600) (Step 32).")
    expect(int(r.stdout.strip()) == len(env.params.database_hosts), f"pcp reports {r.stdout.strip()} nodes.",
           "check pgpool.conf's backends.")
    return f"{vm3.host.name} (postgres) $ {command}\n{r.stdout.strip()}"


def pcp(env, tool: str, *args: str) -> str:
    """A pcp command as postgres on the pgpool host (password from ~postgres/.pcppass; -w: never prompt)."""
    return " ".join([tool, "-h localhost", f"-p {env.params.pgpool['pcp_port']}", f"-U {PGPOOL_ROLE}", "-w", *args])


def healthy_but_detached(env, nodes: list[dict]) -> list[tuple[int, str]]:
    """Nodes pgpool keeps down although the server answers in the role the cluster gives it: a
    standby streaming from the primary, or the primary itself. pgpool remembers a detached node
    (pgpool_status) and, for a primary, never re-attaches it by itself."""
    found = []
    for node in nodes:
        if node["status"] != "down" or node["pg_status"] != "up":
            continue
        name = env.params.host(node["hostname"]).name
        if node["pg_role"] == "standby" and node["replication_state"] == "streaming":
            found.append((int(node["node_id"]), f"{name} is down in pgpool, but it streams from the primary"))
        elif node["pg_role"] == "primary" and not any(
                n["pg_role"] == "primary" and n["status"] == "up" for n in nodes if n is not node):
            found.append((int(node["node_id"]), f"{name} is down in pgpool, but it is the only primary"))
    return found


def current_nodes(env) -> list[dict] | None:
    """SHOW pool_nodes now, or None when pgpool does not answer."""
    try:
        with via_pgpool(env)() as conn:
            return pool_nodes(conn)
    except ConnectionError:
        return None


def nodes_as_wanted(env) -> str:
    """Every node up with its role and weight (waiting for pgpool's checks), shown as the guide does."""
    found = wait_for_nodes(via_pgpool(env), env.params, timeout=patience(env.pgpool, 60))
    check_nodes(found, env.params)
    return show_pool_nodes(env)


@guide_step
def check_pool_nodes(env) -> ops.Step:
    nodes = partial(nodes_as_wanted, env)
    step = ops.Step("pool_nodes")
    for node_id, why in healthy_but_detached(env, current_nodes(env) or []):
        step.do(ops.Command(env.pgpool, "postgres", pcp(env, "pcp_attach_node", f"-n {node_id}"),
                            shown=pcp(env, "pcp_attach_node", f"-n {node_id}") + f"    # {why}",
                            summary=f"node {node_id} attached again",
                            hint="read pgpool's log: pcp refuses a node it cannot reach"))
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
    return f"{vm3.host.name} ({env.params.ssh['user']}) $ {command}\n{out.stdout.rstrip()}"


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
    return f"{vm3.host.name} ({env.params.ssh['user']}) $ {command}" + (f"   # × {times}" if times > 1 else "") + "\n" + out


#: SHOW pool_nodes' columns that differ on every run: this session's draw of a node for its reads, and a time
UNSTABLE_POOL_NODES_COLUMNS = {"load_balance_node": "(drawn)", "last_status_change": "YYYY-MM-DD hh:mm:ss"}


def show_pool_nodes(env, also: tuple[str, ...] = ()) -> str:
    """The guide's `SHOW pool_nodes` with psql from the pgpool host, aligned as psql prints it, with the
    values that differ on every run masked (and the comment saying so); `also`: more columns to mask."""
    vm3 = env.pgpool
    command = f"psql -h {vm3.host.address} -p {env.params.pgpool['port']} -U postgres -c \"SHOW pool_nodes;\""
    out = as_client(vm3, command, "postgres").stdout.rstrip()
    masks = {**{c: "…" for c in also}, **UNSTABLE_POOL_NODES_COLUMNS}
    return (f"{vm3.host.name} ({env.params.ssh['user']}) $ {command}    # {', '.join(masks)}: masked, they differ "
            "on every run\n" + masked_columns(out, masks))


def pgpool_sql_login(env, database: str = TEST_DB) -> dict:
    """Sql's options for a statement sent through pgpool with psql from its host, as the guide does."""
    return {"login": f"-h {env.pgpool.host.address} -p {env.params.pgpool['port']} -U postgres",
            "database": database, "password": Secret("postgres")}


def names_through_pgpool(env) -> list[str]:
    with via_pgpool(env, TEST_DB)() as conn:
        return [r[0] for r in db.rows(conn, "SELECT name FROM employees ORDER BY id")]


def employees_through_pgpool(env) -> str:
    with via_pgpool(env, TEST_DB)() as conn:
        rows = db.rows(conn, "SELECT * FROM employees ORDER BY id")
    return through_pgpool_prompt(env, TEST_DB) + "SELECT * FROM employees ORDER BY id;\n" + \
        table(["id", "name", "department"], rows)


def _insert_through_pgpool(env, name: str, department: str, what: str) -> ops.Step:
    step = postgres.insert_if_absent(ops.Step(what), env.pgpool, name, department, names=names_through_pgpool(env),
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
    from lib import loadbalance
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


def pgpool_log(env, lines: int = 5) -> str:
    """The guide's `journalctl -u pgpool2 | tail`: with logging_collector on (Step 30) pgpool
    writes its own log file instead."""
    return postgres.read(env.pgpool, f"tail -n {lines} {LOG_DIR}/pgpool.log")


def journal(env, lines: int = 5) -> str:
    """The guide's log command: with logging_collector on, systemd's journal keeps only what
    pgpool printed before its log file took over."""
    return postgres.read(env.pgpool, f"journalctl -u {shlex.quote(env.params.pgpool['service'])} --no-pager | tail -n {lines}")
