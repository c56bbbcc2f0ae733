"""Part 2, Steps 30-33: pgpool configured (pgpool.conf, pool_hba.conf, pool_passwd, pcp) and started."""
from __future__ import annotations

import ipaddress
import re
import shlex
from functools import partial

from lib import facts, health_check_guard, ops, pgconf, pgpoolconf, plan_secrets, postgres, system
from lib.ops import Secret, guide_step
from lib.pgpool_host import (APP_ROLE, KEY_FILE, LOG_DIR, PCPPASS, PGPOOL_ROLE, POOL_PASSWD_ROLES, STOP_DROPIN,
                             backend_hosts, conf, pgpool_service, pgpool_settings, restart_pending, restart_pgpool,
                             service_state, stop_dropin)
from lib.postgres import TEST_DB, auth_method, md5_mode
from lib.roles import sql_literal
from lib.secret_files import PCPPASS_MASKED, SECRET_MODE, SECRET_OWNER, secret_access, secret_file
from lib.secrets import secret
from lib.show import expect, prompt


APP_GRANTS = ("GRANT SELECT, INSERT ON employees TO app;", "GRANT USAGE ON SEQUENCE employees_id_seq TO app;")


# --- Step 30 ------------------------------------------------------------------------------------------------


def connection_budget(env) -> str:
    p = env.params.pgpool
    allowed = int(postgres.known(env.primary, "SELECT current_setting('max_connections')::int - "
                                              "current_setting('superuser_reserved_connections')::int").value)
    needed = p["num_init_children"] * p["max_pool"]
    expect(needed <= allowed, f"pgpool may open {needed} connections per server, more than {allowed}.",
           "lower num_init_children or max_pool, or raise max_connections on the servers.")
    return f"num_init_children x max_pool = {needed}; each server allows {allowed} client connections"


@guide_step
def configure_pgpool(env) -> ops.Step:
    vm3, step = env.pgpool, ops.Step("pgpool.conf")
    if not vm3.facts.get(facts.CommandFact(f"test -d {LOG_DIR}")).ok:
        step.do(ops.Command(vm3, "root", f"install -d -o postgres -g postgres -m 750 {LOG_DIR}",
                            summary=f"created {LOG_DIR}"))
    path = conf(env.params, "pgpool.conf")
    current = vm3.facts.get(facts.FileFact(path)).text or ""
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
    text = vm3.read_file(path)
    active = pgpoolconf.active_settings(text)
    wanted = pgpool_settings(env.params, backend_hosts(env.params, text), text)
    lines = [f"{prompt(vm3, 'root')}cat {path}    # its active settings, grouped as the guide groups them"]
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
    exists = postgres.known(primary, f"SELECT count(*) FROM pg_roles WHERE rolname = {sql_literal(APP_ROLE)}").value == "1"
    postgres.role_step(step, primary, APP_ROLE)
    may = exists and postgres.known(primary, f"SELECT has_table_privilege({sql_literal(APP_ROLE)}, 'employees', 'SELECT') "
                                             f"AND has_table_privilege({sql_literal(APP_ROLE)}, 'employees', 'INSERT') AND "
                                             f"has_sequence_privilege({sql_literal(APP_ROLE)}, 'employees_id_seq', 'USAGE')",
                                    database=TEST_DB).value == "t"
    if may:
        return step.note(primary, f"{APP_ROLE} may already read and add employees in {TEST_DB}")
    return step.do(ops.Sql(primary, "postgres", statement=("\n".join(APP_GRANTS),), database=TEST_DB,
                           summary=f"{APP_ROLE} may read and add employees in {TEST_DB}"))


def _user_line(line: str) -> str:
    """`user:secret` shown as `user:********`."""
    return line.split(":", 1)[0] + ":" + plan_secrets.MASK if ":" in line else plan_secrets.MASK


def _replace_line(text: str | None, prefix: str, line: tuple) -> tuple:
    """`text` without its lines that start with `prefix`, and `line` after them (replace_line by hand)."""
    kept = "".join(l + "\n" for l in (text or "").splitlines() if not l.startswith(prefix))
    return (kept, *line, "\n")


def pool_passwd_entries(env) -> dict[str, str]:
    """What pg_enc makes of each password with the key (its output is deterministic for a key):
    compared with pool_passwd, never shown."""
    vm3 = env.pgpool
    pairs = "".join(f"{u}:{secret(u, env.params)}\n" for u in POOL_PASSWD_ROLES)
    out = vm3.run(f"pg_enc -k {KEY_FILE} -i /dev/stdin", user="root", stdin=pairs, mask=False, check=False,
                  reads_only=True).stdout
    # pg_enc prints each pair's entry as `pool_passwd string: AES…` (some builds: `user:AES…`).
    users = POOL_PASSWD_ROLES
    found = dict(l.split(":", 1) for l in out.splitlines() if re.match(r"^[^\s:]+:AES\S+$", l))
    strings = re.findall(r"^pool_passwd string: (AES\S+)$", out, re.M)
    return found if found else dict(zip(users, strings)) if len(strings) == len(users) else {}


def pcppass_line(params) -> tuple:
    """~postgres/.pcppass's one line. pcp reads it as libpq reads .pgpass: a \\ or : in the password is
    escaped, or the password is cut short at it."""
    return (f"localhost:{params.pgpool['pcp_port']}:{PGPOOL_ROLE}:", Secret("pgpool", "pgpass"), "\n")


@guide_step
def password_file(env) -> ops.Step:
    """pool_passwd: AES entries (pg_enc) under ~postgres/.pgpoolkey, or md5 entries in md5 mode;
    pcp.conf and ~postgres/.pcppass for pgpool's admin commands."""
    vm3, p, step = env.pgpool, env.params, ops.Step("pool_passwd")
    path = conf(p, "pool_passwd")
    current = vm3.facts.get(facts.FileFact(path)).text or ""
    if md5_mode(p):
        entries = {u: (f"{u}:md5", Secret(u, f"md5:{u}")) for u in POOL_PASSWD_ROLES}
        kept = "".join(l + "\n" for l in current.splitlines() if l.split(":", 1)[0] not in entries)
        pieces = (kept,) + tuple(x for u in entries for x in (*entries[u], "\n"))
        if plan_secrets.resolve(pieces, p) != current:
            step.do(ops.FileChange(vm3, "root", path=path, old=current, new=pieces, owner=SECRET_OWNER,
                                   mode=SECRET_MODE, mask_line=_user_line))
        else:
            step.note(vm3, f"{path} already holds md5 entries for {', '.join(POOL_PASSWD_ROLES)}")
    else:
        secret_file(step, vm3, KEY_FILE, (Secret("pgpool_key"), "\n"), lambda l: plan_secrets.MASK, "PGGUIDE_PGPOOL_KEY")
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
    secret_file(step, vm3, PCPPASS, pcppass_line(p), PCPPASS_MASKED, "PGGUIDE_PGPOOL_PASSWORD")

    def entries():
        kinds = []
        for line in vm3.read_file(path).splitlines():
            if line.strip():
                user, _, value = line.partition(":")
                kinds.append(f"{user}:{'AES' if value.startswith('AES') else value[:3]}…")
        return f"{prompt(vm3, 'root')}cat {path}   # entries, their secret part cut\n" + "\n".join(kinds)

    def private():
        files = [path, pcp, PCPPASS] + ([] if md5_mode(p) else [KEY_FILE])
        out = vm3.run("stat -c '%U:%G %a %n' " + " ".join(map(shlex.quote, files)), user="root", reads_only=True).lines
        loose = [l for l in out if not l.startswith(f"{SECRET_OWNER} {SECRET_MODE} ")]
        expect(not loose, f"files that hold secrets can be read by others: {'; '.join(loose)}.",
               f"provision again: it sets them to {SECRET_OWNER}, mode {SECRET_MODE}")
        return f"{prompt(vm3, 'root')}stat -c '%U:%G %a %n' {' '.join(files)}\n" + "\n".join(out)
    step.verify("pool_passwd has an entry per role", entries)
    return step.verify("only postgres can read the files that hold secrets", private)


# --- Step 33 ---------------------------------------------------------------------------------------------------


@guide_step
def start_pgpool(env) -> ops.Step:
    vm3, p = env.pgpool, env.params.pgpool
    step, service, port = ops.Step("pgpool service"), shlex.quote(p["service"]), p["port"]
    hint = f"read {LOG_DIR}/pgpool.log and `journalctl -u {service}` on {vm3.host.name}"
    system.firewall_step(step, vm3, port, pgpool_sources(env.params))       # clients connect to pgpool
    dropin = stop_dropin(env.params)
    units_changed = postgres.ensure_file(step, vm3, dropin, STOP_DROPIN, owner="root:root", mode="644", make_dir=True)
    units_changed |= health_check_guard.plan(step, env)
    if units_changed:
        step.do(ops.Command(vm3, "root", "systemctl daemon-reload", summary="systemd read the changed units"))
    state = service_state(vm3, fresh=False)
    if state[1:] != ["enabled"]:
        step.do(ops.Command(vm3, "root", f"systemctl enable {service} 2>&1 | grep -v '^Synchronizing\\|^Executing' || true",
                            shown=f"systemctl enable {service}", summary=f"{service} enabled at boot"))
    else:
        step.note(vm3, f"{service} is already enabled at boot (the package enables it), so `systemctl enable "
                       f"{service}` has nothing to do")
    if state[:1] != ["active"]:
        step.notify(pgpool_service(env, "start"))
    elif restart_pending(vm3):
        restart_pgpool(step, env)
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
            kill_mode, *health_check_guard.evidence(env)])
    return step.verify("pgpool runs and starts at boot", running)
