"""Part 2, Steps 19-29: the pgpool host's tools and pgpool installed, then the servers made ready for it
(its roles, its pg_hba lines, the standbys listening) and a login from its host to each."""
from __future__ import annotations

import shlex
from functools import partial

from lib import ops, pgconf, postgres, system, tls
from lib.ops import guide_step
from lib.part1 import REPLICATION_ROLE
from lib.pgpool_host import PGPOOL_ROLE, guard_restarts, service_state
from lib.postgres import auth_method, conf_file, md5_mode
from lib.roles import sql_literal
from lib.secrets import ROLES, secret
from lib.show import expect, prompt


STANDBY_SETTINGS = {"listen_addresses": "*"}


def standby_settings(params) -> dict:
    """Step 28's setting, and with postgres.tls the TLS ones."""
    return {**STANDBY_SETTINGS, **postgres.tls_settings(params)}


def encryption_settings(params) -> dict:
    return {"password_encryption": auth_method(params)}


# --- Steps 19-20 --------------------------------------------------------------------------------------
def version_line(remote, command: str, user: str | None = None) -> str:
    """`psql --version` → 'psql (PostgreSQL) 15'; `pgpool --version` → 'pgpool-II version 4.3', and a comment
    saying what was left out: the point release and Debian's revision, which change with every update of the
    package and change nothing this guide relies on."""
    out = remote.run(f"{command} 2>&1", user=user, reads_only=True).stdout.strip().splitlines()[0]
    words, said = out.split(), ""
    for i, w in enumerate(words):
        if w[:1].isdigit():
            parts = w.split(".")
            out = " ".join(words[:i] + [".".join(parts[:1] if "psql" in command else parts[:2])])
            said = "    # shortened here to the major version: the rest changes with every update of the package"
            break
    return f"{prompt(remote, user or remote.params.ssh['user'])}{command}{said}\n{out}"


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
    return postgres.known(primary, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                                   f"JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = {sql_literal(PGPOOL_ROLE)} "
                                   f"AND r.rolname = {sql_literal(role)}").value != "0"


@guide_step
def create_pgpool_role(env) -> ops.Step:
    primary = env.primary
    step = postgres.role_step(stop_pgpool_for_a_new_password(env, ops.Step("pgpool role")), primary, "pgpool")
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


def stop_pgpool_for_a_new_password(env, step: ops.Step) -> ops.Step:
    """pgpool's health checks log in as pgpool with the password pool_passwd holds (Step 32). A new password
    (options.reset_passwords) set under a running pgpool fails every check from then on, and 2 retries a second
    apart later pgpool detaches every server, the primary too, which starts failover.sh: seen on the lab,
    where a rotation's Steps 22 to 33 took longer than those retries now and then. So pgpool is stopped first,
    and Step 33 starts it with the new pool_passwd: clients wait for those seconds instead."""
    vm3, service = env.pgpool, shlex.quote(env.params.pgpool["service"])
    role, attributes = ROLES["pgpool"]
    differences = postgres.role_differences(env.primary, role, secret("pgpool", env.params), attributes) or []
    if "has another password" in differences and service_state(vm3, fresh=False)[:1] == ["active"]:
        step.do(ops.Command(vm3, "root", f"systemctl stop {service}",
                            summary=f"{service} stopped until Step 33: its health checks would fail with the old "
                                    f"password and detach every server"))
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
    return dict(postgres.known(
        primary, f"SELECT rolname, CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' ELSE split_part(rolpassword, '$', 1) END "
                 f"FROM pg_authid WHERE rolname IN ({names}) ORDER BY rolname").rows)


def _md5_on_primary(env) -> ops.Step:
    """The guide's Step 24: password_encryption = md5, a restart, the passwords set again (as md5)."""
    step = encryption_step(ops.Step("password_encryption"), env.primary)
    if md5_mode(env.params):
        for secret_name in ("postgres", "pgpool"):     # app is made in Step 31, already as md5
            postgres.role_step(step, env.primary, secret_name)
        postgres.settle(step, env.primary, {**postgres.primary_settings(env.params), **encryption_settings(env.params)})
    return guard_restarts(step, env)


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
    return guard_restarts(step, env).verify("password_encryption in effect", lambda: postgres.psql_read(primary, "SHOW password_encryption;"))


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
    return guard_restarts(step, env)


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
    return guard_restarts(step, env).verify("each standby listens and is back", back)


# --- Step 29 -----------------------------------------------------------------------------------------------
def as_client(remote, command: str, secret_name: str, *, flags: str = "-X", check: bool = True):
    """`command` (a psql command line as the guide writes it, which only reads) run on `remote` as the
    admin user, a client's way: the secret's password on stdin into PGPASSWORD, `flags` added to psql."""
    to_pgpool = f"-p {remote.params.pgpool['port']} " in command
    verified = tls.environment(remote.params, to_pgpool=to_pgpool) if tls.on(remote.params) else ""
    return remote.run(f"read -r PGPASSWORD; export PGPASSWORD; {verified}{command.replace('psql', f'psql {flags}', 1)}",
                      stdin=secret(secret_name, remote.params) + "\n", check=check, reads_only=True)


def login_from(remote, target, user: str, secret_name: str, port: int, database: str = "postgres") -> str:
    """psql from `remote` to `target` with a password."""
    command = f"psql -h {target.address} -p {port} -U {user} -d {database} -c 'SELECT current_user'"
    r = as_client(remote, command, secret_name, flags="-X -A -t", check=False)
    expect(r.ok and r.stdout.strip() == user,
           f"{user} cannot log in from {remote.host.name} to {target.name}:{port}: {r.stderr.strip()}",
           "no pg_hba.conf entry → add the pgpool host's /32 (Steps 23, 26) and reload; connection refused → "
           "listen_addresses = '*' and restart (Step 28); password authentication failed → re-set the "
           "password (Steps 21-22) or pool_passwd (Step 32).")
    return f"{prompt(remote, remote.params.ssh['user'])}{command}\n{r.stdout.strip()}"


@guide_step
def test_connectivity(env) -> ops.Step:
    port = env.params.postgres["port"]
    return ops.Step("connectivity").verify("pgpool's host reaches every backend", lambda: "\n".join(
        login_from(env.pgpool, b.host, PGPOOL_ROLE, "pgpool", port) for b in [env.primary, *env.standbys]))
