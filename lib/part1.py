"""Part 1 of the guide, steps 1-17: each function reads facts and returns the step's plan
(lib.ops.Step) with its verifications. `step.apply()` in the notebook does it; `ci/provision
--check` calls the same functions on read-only hosts."""
from __future__ import annotations

import re
import shlex

from lib import clone_guard, facts, ops, pgconf, pgpool_host, plan_secrets, postgres, system, tls
from lib.conninfo import conninfo_fields, conninfo_quote
from lib.host_functions import cluster_is
from lib.ops import guide_step
from lib.postgres import GUIDE_ROWS, TEST_DB, auth_method, conf_file, patience, psql_read
from lib.roles import sql_literal
from lib.secret_files import PGPASS_MASKED, secret_file
from lib.show import CheckFailed, expect, masked_columns, prompt
from lib.wait import wait_until

#: the notebook's closing appendix: the guide's md5 way, as this notebook's steps planned it
md5_appendix = postgres.md5_appendix

#: Step 2: the settings the guide sets on the primary (wal_keep_size in MB).
REPLICATION_ROLE = "replicator"
#: the replicator's password on every server, for pg_basebackup, each standby's primary_conninfo (passfile=)
#: and pg_rewind: never inside primary_conninfo, which any role with pg_read_all_settings can SHOW
PGPASS = "/var/lib/postgresql/.pgpass"


# --- Steps 1-6: the primary ------------------------------------------------------------------------
@guide_step
def create_replication_role(env) -> ops.Step:
    primary = env.primary
    step = postgres.role_step(ops.Step("replication role"), primary, "replication")

    def listed():
        roles = postgres.role_listing(primary)
        expect(re.search(r"replicator\s+\|\s+Replication\b", roles), "the replicator role lacks REPLICATION or LOGIN.",
               "ALTER ROLE replicator WITH REPLICATION LOGIN;")
        return roles
    return step.verify("replicator is listed with Replication", listed)


@guide_step
def configure_primary(env) -> ops.Step:
    step = ops.Step("postgresql.conf")
    if tls.on(env.params):       # every server's own certificate, naming its address, before ssl_cert_file names it
        for r in [env.primary, *env.standbys]:
            tls.pair_step(step, r)
    return postgres.edit_step(step, env.primary, conf_file(env.primary, "postgresql.conf"),
                              lambda text: pgconf.set_settings(text, postgres.primary_settings(env.params)))


def hba_replication_lines(env) -> list[str]:
    return [hba_replication_line(env.params, s.host.address) for s in env.standbys]


def hba_replication_line(params, address: str) -> str:
    """Step 3's line for one standby: `hostssl` with postgres.tls, else the guide's `host`."""
    return f"{postgres.hba_type(params)} replication {REPLICATION_ROLE} {address}/32 {auth_method(params)}"


@guide_step
def allow_replication(env) -> ops.Step:
    step = postgres.primary_hba_step(env, hba_replication_lines, 3)
    tls.trust_step_for_servers(step, env)      # and with postgres.tls, whose certificates a connection accepts
    return step


@guide_step
def open_firewall(env) -> ops.Step:
    # the standbys stream from it; the pgpool host (Part 2) connects to it
    sources = [s.host.address for s in env.standbys] + [env.pgpool.host.address]
    return system.firewall_step(ops.Step("firewall"), env.primary, env.params.postgres["port"], sources)


@guide_step
def restart_primary(env) -> ops.Step:
    primary = env.primary
    step = pgpool_host.guard_restarts(postgres.settle(ops.Step("restart"), primary,
                                                      postgres.primary_settings(env.params)), env)

    def online():
        state = postgres.cluster_state(primary)
        expect(state == "online", f"the cluster on {primary.host.name} is {state}, not online.",
               f"read {env.params.postgres['log_file']}: a typo in postgresql.conf stops the server from starting.")
        return postgres.lsclusters(primary)
    return step.verify("the cluster is online", online)


@guide_step
def verify_primary(env) -> ops.Step:
    primary = env.primary
    wanted = {"wal_level": "replica", "listen_addresses": "*", "max_wal_senders": "5", "wal_keep_size": "64MB",
              "wal_log_hints": "on"}

    def shown():
        found = {n: postgres.value(primary, f"SHOW {n}") for n in wanted}
        expect(found == wanted, f"the primary runs with {found}.",
               "check Step 2's edits and that Step 5 restarted the server.")
        return "\n".join(f"{prompt(primary, 'postgres')}psql -c \"SHOW {n};\"  →  {v}" for n, v in found.items())
    return ops.Step("settings").verify("the running settings", shown)


# --- Steps 7-11: each standby -------------------------------------------------------------------------
def to_clone(env) -> list:
    """The standbys Steps 7-11 clone: those not already streaming from the primary (or all, with
    options.rebuild_standby), each proven clonable by the hosts themselves (lib.clone_guard).
    Decided once, at Step 7, before it stops them."""
    if env.clone_decision is None:
        try:
            proofs = dict((s.host.name, why) for s, why in clone_guard.proven(env))
        except clone_guard.CloneRefused as e:
            env.clone_decision = clone_guard.CloneDecision(refused=", ".join(e.hosts))
            raise
        env.clone_decision = clone_guard.CloneDecision([s for s in env.standbys if s.host.name in proofs], proofs)
    if env.clone_decision.refused:
        raise CheckFailed(f"Step 7 refused to clone: {env.clone_decision.refused}")
    return env.clone_decision.standbys


def _not_cloning(step: ops.Step, env) -> None:
    for s in env.standbys:
        if s not in to_clone(env):
            step.note(s, f"already a standby streaming from {env.primary.host.name}: not cloned again "
                         "(options.rebuild_standby: true would)")


@guide_step
def stop_standbys(env) -> ops.Step:
    env.clone_decision = None                   # decided afresh, from the hosts as they are now
    step = ops.Step("stop the standby")
    _not_cloning(step, env)
    p = env.params.postgres
    for s in to_clone(env):
        step.note(s, f"{env.clone_decision.proofs[s.host.name]}: it may be cloned from {env.primary.host.name}")
        # systemctl can return while the cluster is still stopping: wait until pg_lsclusters says down
        marker = clone_guard.marker_path(env.params)
        step.do(ops.Command(s, "root", f"systemctl stop {shlex.quote(p['service'])} && "
                            + ops.wait_for(cluster_is("down", "down,recovery"), 30, "the cluster is not down")
                            + " && " + _mark_cloning(s),
                            shown=f"systemctl stop {shlex.quote(p['service'])}"
                                  f"    # then the stopped checkpoint goes in {marker}",
                            summary="PostgreSQL stopped"))
    return step.verify("the standbys being cloned are down", lambda: "\n".join(
        postgres.lsclusters(s) for s in to_clone(env)) or None)


def _mark_cloning(standby) -> str:
    """Shell: note beside the data directory that this run proved it clonable and stopped it,
    with the stopped cluster's identity and checkpoint, so that a run killed before the clone
    finishes can be resumed: the next run sees the cluster has not run since (lib.clone_guard)."""
    p = standby.params.postgres
    bindir, d = f"/usr/lib/postgresql/{int(p['version'])}/bin", p["data_dir"].rstrip("/")
    return " ".join(["mark_cloning", *map(shlex.quote, (bindir, d, clone_guard.marker_path(standby.params)))])


#: the host's own IPv4 addresses, one a line
ADDRESSES = facts.CommandFact("ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1")


def _refusals(standby, primary) -> list[str]:
    """Why this host must not have its data directory cleared (identity and role)."""
    p = standby.params.postgres
    addresses = standby.facts.get(ADDRESSES).lines
    row = postgres.cluster_row(standby, fresh=False)
    refusals = []
    if standby.host.role != "standby":
        refusals.append(f"{standby.host.name} is the {standby.host.role}, not a standby")
    if standby.host.address not in addresses or primary.host.address in addresses:
        refusals.append(f"the host answering at {standby.host.address} has addresses {addresses}")
    if row.data_dir.rstrip("/") != p["data_dir"].rstrip("/"):
        refusals.append(f"cluster {p['version']}/{p['cluster']} does not use {p['data_dir']} ({row.text or 'no cluster'})")
    return refusals


def clear_data_directory(standby, primary) -> ops.Command:
    """The guide's `rm -rf .../main/*`, refused unless this is a standby host, not the primary,
    the directory is that cluster's own, and (checked on the host, just before) the server is down."""
    refusals = _refusals(standby, primary)
    expect(not refusals, "Refusing to clear the data directory: " + "; ".join(refusals) + ".",
           "check the parameters (hosts, postgres.data_dir) and stop the standby first (Step 7).")
    p = standby.params.postgres
    d = shlex.quote(p["data_dir"])
    guide = f"rm -rf {d}/* && ls {d}/"
    # a base backup left running by a killed run would go on writing into the directory
    return ops.Command(standby, "postgres",
                       f"{cluster_is('down', 'down,recovery')} || {{ echo 'refusing: the cluster is not down' >&2; exit 1; }}; "
                       f"stop_basebackup_into {d} && {guide}",
                       shown=guide, summary=f"{p['data_dir']} cleared")


@guide_step
def clear_standbys(env) -> ops.Step:
    step = ops.Step("clear the data directory")
    _not_cloning(step, env)
    for s in to_clone(env):
        step.do(clear_data_directory(s, env.primary))
    return step


PROGRESS = re.compile(r"\d+/\d+ kB")


def pgpass_file(step: ops.Step, remote) -> None:
    """~postgres/.pgpass with the replicator's password (any host, this port)."""
    secret_file(step, remote, PGPASS, (f"*:{remote.params.postgres['port']}:*:{REPLICATION_ROLE}:",
                                       plan_secrets.Secret("replication", "pgpass"), "\n"),
                PGPASS_MASKED, "the replicator's password")


@guide_step
def base_backup(env) -> ops.Step:
    """pg_basebackup -R -X stream -c fast, the password read from ~postgres/.pgpass (never in argv,
    and so -R writes passfile= into primary_conninfo, not the password)."""
    step = ops.Step("base backup")
    for s in env.standbys:
        pgpass_file(step, s)
    _not_cloning(step, env)
    p, primary = env.params.postgres, env.primary
    for s in to_clone(env):
        port = f" -p {p['port']}" if p["port"] != 5432 else ""
        command = (f"pg_basebackup -h {primary.host.address}{port} -U {REPLICATION_ROLE} "
                   f"-D {shlex.quote(p['data_dir'] + '/')} -P -Xs -R -c fast -w -d "
                   + (f"'application_name={s.host.name} {tls.conninfo_text(env.params)}'" if tls.on(env.params)
                      else f"application_name={s.host.name}"))
        # Progress (-P) and errors both go to stderr, progress with carriage returns: on success keep
        # the last progress line (stdout); on failure pass every other line on (stderr), for the report.
        # a finished clone is neither an interrupted one nor a fenced former primary any more
        marker = (f"{shlex.quote(clone_guard.marker_path(env.params))} "
                  f"{shlex.quote(clone_guard.fence_marker(env.params))}")
        script = (f"log=$(mktemp); {command} 2>\"$log\"; rc=$?; "
                  "tr '\\r' '\\n' <\"$log\" | grep -v '^$' | "
                  "if [ $rc -eq 0 ]; then tail -1; else grep -v ' kB (' >&2; fi; rm -f \"$log\"; "
                  f"[ $rc -eq 0 ] && rm -f {marker}; exit $rc")
        step.do(ops.Command(s, "postgres", script, timeout=env.params.options["step_timeout"],
                            shown=command + f"    # -w: the password comes from {PGPASS}, never a prompt",
                            summary=f"base backup from {primary.host.name} into {p['data_dir']}",
                            normalize=lambda out: PROGRESS.sub("N/N kB", out.splitlines()[-1] if out else out),
                            hint=f"the base backup failed. Likely causes: a wrong replication password "
                                 f"(PGGUIDE_REPLICATION_PASSWORD, in {PGPASS}), no pg_hba line for {s.host.address} on "
                                 f"{primary.host.name} (Step 3), or {primary.host.name} not listening on "
                                 f"{p['port']} (Steps 2 and 5)."))
    return step


# --- Step 10: primary_conninfo ---------------------------------------------------------------------
def auto_conf(standby, *, fresh: bool = True) -> str:
    """postgresql.auto.conf, unmasked: it holds the replication password; never print it. Asked now,
    or (fresh=False) as the planners know it."""
    fact = facts.FileFact(f"{standby.params.postgres['data_dir']}/postgresql.auto.conf")
    return (standby.facts.read(fact) if fresh else standby.facts.get(fact)).text or ""


def wanted_conninfo(params) -> dict[str, str]:
    """What primary_conninfo must say beside where to connect: the password's file, and how TLS is checked."""
    return {"passfile": PGPASS, **(tls.client_words(params) if tls.on(params) else {})}


def conninfo_with_passfile(standby, fields: dict[str, str]) -> ops.Sql:
    """ALTER SYSTEM SET primary_conninfo to the same fields with passfile= (and with postgres.tls, verified
    TLS) and without password= (a standby cloned before the password moved to .pgpass, or by hand), then
    reload: the WAL receiver reconnects with the new value."""
    fields = {**{k: v for k, v in fields.items() if k != "password"}, **wanted_conninfo(standby.params)}
    conninfo = " ".join(f"{k}={conninfo_quote(v)}" for k, v in fields.items())
    return ops.Sql(standby, "postgres", summary=f"primary_conninfo: the password now comes from {PGPASS}",
                   statement=(f"ALTER SYSTEM SET primary_conninfo = {sql_literal(conninfo)};\nSELECT pg_reload_conf();",))


@guide_step
def verify_backup(env) -> ops.Step:
    """standby.signal and primary_conninfo, which names the .pgpass file (Step 9) and holds no
    password: a standby cloned with the password inside gets it replaced by passfile=."""
    step = ops.Step("backup files")
    for s in env.standbys:
        fields = conninfo_fields(auto_conf(s, fresh=False))
        wanted = wanted_conninfo(env.params)
        if fields and ("password" in fields or any(fields.get(k) != v for k, v in wanted.items())):
            step.do(conninfo_with_passfile(s, fields))
        elif fields:
            step.note(s, f"primary_conninfo reads the password from {PGPASS}")

    def files():
        shown = []
        for s in env.standbys:
            data = env.params.postgres["data_dir"]
            signal = s.facts.read(facts.FileFact(f"{data}/standby.signal")).exists
            fields = conninfo_fields(auto_conf(s))
            shown.append(f"{prompt(s, 'postgres')}ls {data}/standby.signal\n"
                         + (f"{data}/standby.signal" if signal else "ls: cannot access: No such file or directory"))
            shown.append(f"{prompt(s, 'postgres')}cat {data}/postgresql.auto.conf   # primary_conninfo's fields:")
            shown += [f"  {k:<17} {'******** (it must not be here)' if k == 'password' and k in fields else fields.get(k, '(not set)')}"
                      for k in ("user", "password", "passfile", "host", "port", "application_name")]
            if tls.on(env.params):
                shown += [f"  {k:<17} {fields.get(k, '(not set)')}" for k in ("sslmode", "sslrootcert", "channel_binding")]
            wanted = wanted_conninfo(env.params)
            expect(all(fields.get(k) == v for k, v in wanted.items()),
                   f"primary_conninfo on {s.host.name} says " + ", ".join(f"{k}={fields.get(k)}" for k in wanted)
                   + ", not " + ", ".join(f"{k}={v}" for k, v in wanted.items()) + ".",
                   "provision again: Step 10 sets them.")
            expect("password" not in fields and fields.get("passfile") == PGPASS,
                   f"primary_conninfo on {s.host.name} " + ("holds the replication password, readable by any role with "
                   "pg_read_all_settings." if "password" in fields else f"does not name {PGPASS}."),
                   "provision again: Step 10 replaces it with passfile=.")
            expect(signal, f"{s.host.name} has no standby.signal.", "re-run the base backup with -R (Step 9).")
            expect(fields.get("host") == env.primary.host.address and fields.get("user") == REPLICATION_ROLE,
                   f"primary_conninfo on {s.host.name} points at {fields.get('host')} as {fields.get('user')}.",
                   "re-run pg_basebackup with the primary's address (troubleshooting: wrong master IP in backup).")
        return "\n".join(shown)
    return step.verify("standby.signal and primary_conninfo", files)


@guide_step
def start_standbys(env) -> ops.Step:
    step = ops.Step("start the standby")
    _not_cloning(step, env)
    p = env.params.postgres
    for s in to_clone(env):
        step.do(ops.Command(s, "root", f"systemctl start {shlex.quote(p['service'])} && "
                            + ops.wait_for(cluster_is("online,recovery"), 30, "the cluster is not online,recovery"),
                            shown=f"systemctl start {shlex.quote(p['service'])}", summary="PostgreSQL started",
                            hint=f"read {p['log_file']}; a missing standby.signal gives 'online' without recovery."))

    def online():
        for s in env.standbys:
            state = postgres.cluster_state(s)
            expect(state == "online,recovery", f"{s.host.name}: cluster is {state!r}, not 'online,recovery'.",
                   f"read {p['log_file']} on {s.host.name}; a missing standby.signal "
                   "(touch it in the data directory) gives 'online' without recovery.")
        return "\n".join(postgres.lsclusters(s) for s in env.standbys)
    return step.verify("each standby is online,recovery", online)


# --- Steps 12-17 ---------------------------------------------------------------------------------------
REPLICATION_QUERY = ("SELECT usename, application_name, client_addr, state, sync_state "
                     "FROM pg_stat_replication ORDER BY client_addr")
GUIDE_REPLICATION_QUERY = "SELECT * FROM pg_stat_replication;"
#: its columns that differ on every run: a process and its port, times, WAL positions and lags
UNSTABLE_REPLICATION_COLUMNS = ("pid", "usesysid", "client_port", "backend_start", "backend_xmin", "sent_lsn",
                                "write_lsn", "flush_lsn", "replay_lsn", "write_lag", "flush_lag", "replay_lag",
                                "reply_time")


@guide_step
def check_streaming(env) -> ops.Step:
    primary = env.primary
    wanted = {s.host.address for s in env.standbys}

    def streaming():
        def rows():
            return [l.split("|") for l in primary.psql(REPLICATION_QUERY, reads_only=True).lines]
        found, _ = wait_until(lambda: {r[2] for r in rows() if r[3] == "streaming"} >= wanted,
                              timeout=patience(primary, 30))
        streaming = {r[2] for r in rows() if r[3] == "streaming"}
        expect(found, f"pg_stat_replication on {primary.host.name} shows {sorted(streaming) or 'no standby'} "
                      f"streaming, expected {sorted(wanted)}.",
               f"check the standby's log ({env.params.postgres['log_file']}), the pg_hba line for the standby "
               "(Step 3), the firewall (Step 4) and primary_conninfo (Step 10).")
        shown, _, table = psql_read(primary, GUIDE_REPLICATION_QUERY).partition("\n")
        return (f"{shown}    # {', '.join(UNSTABLE_REPLICATION_COLUMNS)}: masked, they differ on every run\n"
                + masked_columns(table, {c: "…" for c in UNSTABLE_REPLICATION_COLUMNS}))
    return ops.Step("streaming").verify("every standby streams", streaming)


@guide_step
def check_standby_mode(env) -> ops.Step:
    def in_recovery():
        shown = []
        for s in env.standbys:
            expect(postgres.value(s, "SELECT pg_is_in_recovery()") == "t", f"{s.host.name} is not in recovery.",
                   "standby.signal is missing: touch it in the data directory and restart (troubleshooting table).")
            shown.append(psql_read(s, "SELECT pg_is_in_recovery();"))
        return "\n".join(shown)
    return ops.Step("standby mode").verify("each standby is in recovery", in_recovery)


TABLE_DDL = """CREATE TABLE employees (
    id         SERIAL PRIMARY KEY,
    name       VARCHAR(100),
    department VARCHAR(100)
);"""


@guide_step
def write_test_data(env) -> ops.Step:
    """testdb, employees and the guide's three rows; what is there is kept, nothing is doubled."""
    primary, step = env.primary, ops.Step("test data")
    has_db = postgres.known(primary, f"SELECT count(*) FROM pg_database WHERE datname = '{TEST_DB}'").value == "1"
    has_table = has_db and postgres.known(primary, "SELECT to_regclass('employees') IS NOT NULL",
                                          database=TEST_DB).value == "t"
    names = postgres.names_known(primary) if has_table else []
    missing = [(n, d) for n, d in GUIDE_ROWS if n not in names]
    if not has_db:
        step.do(ops.Sql(primary, "postgres", statement=(f"CREATE DATABASE {TEST_DB};",), summary=f"database {TEST_DB} created"))
    if not has_table:
        step.do(ops.Sql(primary, "postgres", database=TEST_DB, statement=(TABLE_DDL,), summary="table employees created"))
    if missing:
        values = ",\n    ".join(f"({sql_literal(n)}, {sql_literal(d)})" for n, d in missing)
        step.do(ops.Sql(primary, "postgres", database=TEST_DB,
                        statement=(f"INSERT INTO employees (name, department) VALUES\n    {values};",),
                        summary=f"{len(missing)} rows inserted into {TEST_DB}.employees"))
    if has_table and not missing:
        step.note(primary, f"{TEST_DB}.employees already holds the guide's {len(GUIDE_ROWS)} rows")

    def rows():
        found = postgres.employee_names(primary)
        expect(all(n in found for n, _ in GUIDE_ROWS), f"{TEST_DB}.employees holds {found}.", "run Step 14 again.")
        return postgres.employees(primary)
    return step.verify("the guide's rows are on the primary", rows)


@guide_step
def read_on_standbys(env) -> ops.Step:
    names = [n for n, _ in GUIDE_ROWS]
    return ops.Step("read on the standby").verify(
        "the rows are on each standby", lambda: "\n".join(postgres.rows_visible(s, names) for s in env.standbys))


@guide_step
def prove_read_only(env) -> ops.Step:
    return postgres.read_only_step(env.standbys, "Unknown")


@guide_step
def sync_test(env) -> ops.Step:
    """The guide's two-terminal test: insert David on the primary, then watch each standby until he
    appears (the measured times are in step.measured)."""
    step = postgres.insert_if_absent(ops.Step("sync test"), env.primary, "David", "HR", primary=env.primary)
    return postgres.arrives_on_standbys(step, env.standbys, "David", "check replication (Step 12): "
                                        "pg_stat_replication on the primary, and the standby's log.")
