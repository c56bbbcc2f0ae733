"""PostgreSQL server operations both parts of the guide use: facts (cluster state, running
settings, roles), reads shown the way a person runs them, and plans for roles, config files
and restarts."""
from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from typing import Callable

from lib import facts, ops, pgconf, plan_secrets, secrets
from lib.remote import Hosts
from lib.roles import sql_literal, verifier_matches
from lib.show import expect, prompt
from lib.wait import wait_until

TEST_DB = "testdb"
GUIDE_ROWS = [("Alice", "Engineering"), ("Bob", "Marketing"), ("Charlie", "Finance")]


def auth_method(params) -> str:
    """pg_hba's method, and how passwords are stored: postgres.auth_method. The guide writes
    md5; with PostgreSQL 14+ passwords are stored as SCRAM and md5 in pg_hba only means
    "SCRAM or md5", so by default we name the method that is actually used."""
    return params.postgres["auth_method"]


def md5_mode(params) -> bool:
    return auth_method(params) == "md5"



#: the guide's Step 2, on the primary (Part 2 keeps them when it restarts it)
PRIMARY_SETTINGS = {"listen_addresses": "*", "wal_level": "replica", "max_wal_senders": 5, "wal_keep_size": 64,
                    # not the guide's: pg_rewind needs it to turn a failed primary into a standby (notebook 03)
                    "wal_log_hints": "on"}


def primary_settings(params) -> dict:
    """The guide's Step 2 settings, and with postgres.tls the TLS ones."""
    return {**PRIMARY_SETTINGS, **tls_settings(params)}


def tls(params) -> bool:
    return bool(params.postgres["tls"])


def hba_type(params) -> str:
    """`hostssl` (TLS required) with postgres.tls, else the guide's `host`."""
    return "hostssl" if tls(params) else "host"


def tls_settings(params) -> dict:
    """postgresql.conf's TLS settings with postgres.tls (Debian already has them, with its snakeoil pair)."""
    p = params.postgres
    return {"ssl": "on", "ssl_cert_file": p["tls_cert_file"], "ssl_key_file": p["tls_key_file"]} if tls(params) else {}


def cluster_words(p: dict) -> str:
    """`VERSION CLUSTER` as pg_lsclusters and pg_ctlcluster take them, quoted for the shell."""
    return f"{int(p['version'])} {shlex.quote(p['cluster'])}"


def conf_file(remote, name: str) -> str:
    return f"{remote.params.postgres['conf_dir']}/{name}"


def patience(remote, seconds: float) -> float:
    """How long to wait for a condition: a check observes the cluster as it is, it does not wait."""
    return min(seconds, 2) if remote.read_only else seconds



def guides_md5_way(step: ops.Step, env, build, number: int) -> ops.Step:
    """In the default scram mode, keep what the guide's md5 way (postgres.auth_method: md5) would run at
    guide step `number`, planned by `build` on read-only connections against the hosts as they are, and not
    applied: md5_appendix shows it at the end of the notebook, so a reader following the guide sees its
    commands, and the step itself what we do instead."""
    if auth_method(env.params) == "md5" or env.read_only:
        return step
    if env.md5_way is None:
        variant = dataclasses.replace(env.params, postgres={**env.params.postgres, "auth_method": "md5"})
        env.md5_way = Hosts(variant, read_only=True)
        for twin, remote in zip(env.md5_way.all, env.all):     # the same hosts: what they are is read once
            twin.facts = remote.facts
    plan = build(env.md5_way).preview()
    if plan:
        env.md5_previews[number] = plan
        step.notes.append("The guide's md5 way differs here: the appendix at the end of this notebook shows it.")
    return step


def md5_appendix(env) -> str:
    """Each step's plan of the guide's md5 way, kept by guides_md5_way as the step ran."""
    if auth_method(env.params) == "md5":
        return "postgres.auth_method is md5 here: the steps above ran the guide's md5 way itself."
    kept = env.md5_previews
    if not kept:
        return "No step of this session planned the guide's md5 way: run the notebook's steps first."
    return "\n".join(f"Step {n}, planned on the hosts as they were then, not applied:\n"
                     + "\n".join("    " + line.replace("\n", "\n    ") for line in plan) for n, plan in sorted(kept.items()))


def primary_hba_step(env, lines_of, number: int) -> ops.Step:
    """Add `lines_of(env)` to the primary's pg_hba.conf (guide step `number`: 3 or 23), keeping the guide's md5
    way for the appendix."""
    def build(e):
        return edit_step(ops.Step("pg_hba.conf"), e.primary, conf_file(e.primary, "pg_hba.conf"),
                         lambda text: pgconf.add_hba_records(text, lines_of(e)))
    return guides_md5_way(build(env), env, build, number)


# --- reads, shown as a person would type them ------------------------------------------------
def read(remote, command: str, *, user: str | None = "root", shown: str | None = None) -> str:
    """Run a read-only command; return the transcript: the command line and its output."""
    out = remote.run(command, user=user, reads_only=True).stdout.rstrip()
    who = user or remote.params.ssh["user"]
    return f"{prompt(remote, who)}{shown or command}" + (f"\n{out}" if out else "")


def psql_read(remote, sql: str, *, database: str = "postgres") -> str:
    """A query as postgres over the local socket, shown with psql's own table."""
    db = f" -d {database}" if database != "postgres" else ""
    out = remote.psql(sql, database=database, tuples=False, reads_only=True).stdout.rstrip()
    return f"{prompt(remote, 'postgres')}psql{db} -c \"{sql}\"\n{out}"


def value(remote, sql: str, *, database: str = "postgres") -> str:
    """One value, asked of the server now (a read: the facts read so far stay)."""
    return remote.psql(sql, database=database, reads_only=True).stdout.strip()


def known(remote, sql: str, *, database: str = "postgres", masked: bool = True, live: bool = False) -> facts.Rows:
    """A planner's read-only query: its answer, asked once in the run (lib.facts). masked=False keeps the
    secret values of the run in it: only for comparing, never for printing. live: what pgpool's scripts
    change as they run, never asked ahead."""
    return remote.facts.get(facts.SqlFact(sql, database, remote.params.postgres["port"], masked=masked, live=live))


# --- the cluster ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterRow:
    """Our cluster as Debian's tools see it: the line `pg_lsclusters --no-header VERSION CLUSTER` prints
    (Ver Cluster Port Status Owner Data-directory Log-file), read in one place."""
    state: str                  # online, online,recovery, down, down,recovery; "absent": no such cluster
    data_dir: str = ""
    text: str = ""              # the line, its fields one space apart

    @classmethod
    def parse(cls, out: str) -> "ClusterRow":
        f = out.split()
        return cls(f[3] if len(f) > 3 else "absent", f[5] if len(f) > 5 else "", " ".join(f))


def cluster_fact(params) -> facts.CommandFact:
    return facts.CommandFact(f"pg_lsclusters --no-header {cluster_words(params.postgres)}")


def cluster_row(remote, *, fresh: bool = True) -> ClusterRow:
    """Our cluster's line, asked now; fresh=False: as the planners know it (lib.facts)."""
    fact = cluster_fact(remote.params)
    return ClusterRow.parse((remote.facts.read(fact) if fresh else remote.facts.get(fact)).stdout)


def cluster_state(remote, *, fresh: bool = True) -> str:
    """pg_lsclusters' status of our cluster: online, online,recovery, down, … or absent."""
    return cluster_row(remote, fresh=fresh).state


def lsclusters(remote) -> str:
    return read(remote, "pg_lsclusters")


def settings_differing(remote, wanted: dict) -> list[str]:
    """Settings whose running value differs from `wanted` (pg_settings.setting, base units)."""
    names = ", ".join(sql_literal(n) for n in wanted)
    running = dict(known(remote, f"SELECT name, setting FROM pg_settings WHERE name IN ({names})").rows)
    return [n for n, v in wanted.items() if running.get(n) != str(v)]


def hba_reload_pending(remote) -> bool:
    """pg_hba.conf was written after the server last read its configuration."""
    path = shlex.quote(conf_file(remote, "pg_hba.conf"))
    written = float(remote.facts.get(facts.CommandFact(f"date -r {path} +%s.%N")).stdout.strip())
    loaded = float(known(remote, "SELECT extract(epoch FROM pg_conf_load_time())").value)
    return written > loaded


def reload_if_pending(step: ops.Step, remote) -> ops.Step:
    """Reload when pg_hba.conf was written after the server last read its configuration."""
    if hba_reload_pending(remote):
        step.notify(ops.service(remote, "reload", remote.params.postgres["service"]))
    return step


def settle(step: ops.Step, remote, wanted: dict) -> ops.Step:
    """The guide restarts after every edit. We restart when the running server has other values
    than `wanted`, reload when pg_hba.conf changed since the server read it, and otherwise leave
    it alone: a second run disturbs nothing, and a run killed between edit and restart is
    finished by the next one."""
    service = remote.params.postgres["service"]
    hint = f"the server did not come back: read {remote.params.postgres['log_file']} on {remote.host.name}"
    differing = settings_differing(remote, wanted)
    if differing:
        step.notify(ops.service(remote, "restart", service, hint=hint))
        step.note(remote, f"running with other values of {', '.join(differing)}: restart")
    elif hba_reload_pending(remote):
        step.notify(ops.service(remote, "reload", service, hint=hint))
        step.note(remote, "pg_hba.conf changed since the server read it: reload")
    else:
        step.note(remote, "configuration unchanged and in effect: no restart needed")
    return step


# --- files ------------------------------------------------------------------------------------------
def edit(remote, path: str, change: Callable[[str], tuple[str, list[str]]]) -> ops.FileChange | None:
    """The file change that `change` makes to the file's current text; None if it makes none."""
    found = remote.facts.get(facts.FileFact(path))
    expect(found.exists, f"{remote.host.name} has no {path}.", "install the package that provides it (Step 18 or "
                         "the guide's prerequisites), or check postgres.version and postgres.cluster.")
    old = found.text
    new, _ = change(old)
    if new == old:
        return None
    return ops.FileChange(remote, "root", path=path, old=old, new=(new,), original_kept=found.original_kept)


def ensure_file(step: ops.Step, remote, path: str, text: str, *, owner: str, mode: str,
                make_dir: bool = False) -> bool:
    """A whole file of ours: written (with owner and mode; make_dir: its directory made first)
    unless it already holds `text` with that owner and mode. True when a write is planned."""
    found = remote.facts.get(facts.FileFact(path))
    access, old = found.access, found.text or ""
    if old == text and access == f"{owner} {mode}":
        step.note(remote, f"{path} is in place")
        return False
    if make_dir:
        step.do(ops.Command(remote, "root", f"install -d {shlex.quote(os.path.dirname(path))}",
                            summary=f"{os.path.dirname(path)} exists"))
    step.do(ops.FileChange(remote, "root", path=path, old=old if access else None, new=(text,), owner=owner, mode=mode))
    return True


def edit_step(step: ops.Step, remote, path: str, change) -> ops.Step:
    action = edit(remote, path, change)
    if action:
        step.do(action)
    else:
        step.note(remote, f"{path} already as the guide wants it")
    return step


# --- roles --------------------------------------------------------------------------------------------
def role_differences(remote, role: str, password: str, attributes: str) -> list[str] | None:
    """None if the role does not exist; else what differs from the wanted attributes and
    password (an empty list: nothing). Reads only; the password is never shown."""
    found = known(remote, f"SELECT rolreplication, rolcanlogin, coalesce(rolpassword, '') FROM pg_authid "
                          f"WHERE rolname = {sql_literal(role)}", masked=False)
    if not found.rows:
        return None
    replication, login, stored = found.rows[0]
    method = auth_method(remote.params)
    differences = []
    # Only what is asked for is checked: postgres keeps its REPLICATION when asked for LOGIN.
    if login != "t":
        differences.append("cannot log in")
    if replication != "t" and "REPLICATION" in attributes.upper():
        differences.append("lacks REPLICATION")
    if not stored:
        differences.append("has no password")
    elif ("md5" if stored.startswith("md5") else "scram-sha-256") != method:
        differences.append(f"password not stored as {method}")
    elif not verifier_matches(stored, password, role):
        differences.append("has another password")
    return differences


def role_step(step: ops.Step, remote, secret_name: str) -> ops.Step:
    """Create the role, or bring its attributes and password in line; nothing if both match.
    The password is stored the way postgres.auth_method says (SCRAM or md5)."""
    role, attributes = secrets.ROLES[secret_name]
    differences = role_differences(remote, role, secrets.secret(secret_name, remote.params), attributes)
    if differences == []:
        return step.note(remote, f"role {role} already has {attributes} and the password in "
                                 f"{secrets.SECRETS[secret_name][0]}: nothing to change")
    method = auth_method(remote.params)
    if differences is None:
        head = f"CREATE ROLE {role} WITH {attributes} PASSWORD "
    elif all(d in ("has no password", "has another password", f"password not stored as {method}") for d in differences):
        head = f"ALTER USER {role} PASSWORD "                   # the guide's form: only the password changes
    else:
        head = f"ALTER ROLE {role} WITH {attributes} PASSWORD "
    # the verifier, computed here: the plain password reaches neither the server nor its log
    statement = plan_secrets.text(head, plan_secrets.Secret(secret_name, f"verifier:{role}"), ";")
    # scram-sha-256 is PostgreSQL's default; md5 mode stores this password as md5 whatever the server's setting
    session = f"-c password_encryption={method}" if method != "scram-sha-256" else ""
    why = "" if differences is None else f" ({', '.join(differences)})"
    return step.do(ops.Sql(remote, "postgres", statement=statement, session=session,
                           summary=f"role {role} {'created' if differences is None else 'updated' + why}"))


def role_listing(remote) -> str:
    """psql's own \\du, as the guide runs it."""
    return psql_read(remote, "\\du")


# --- the guide's test data ----------------------------------------------------------------------
EMPLOYEE_NAMES = "SELECT name FROM employees ORDER BY id"


def employee_names(remote) -> list[str]:
    r = remote.psql(EMPLOYEE_NAMES, database=TEST_DB, check=False, reads_only=True)
    return r.lines if r.ok else []


def employees(remote) -> str:
    return psql_read(remote, "SELECT * FROM employees ORDER BY id", database=TEST_DB)


def rows_visible(remote, names: list[str], timeout: float = 10) -> str:
    """Wait until `remote` shows every name; the evidence is the table."""
    found, _ = wait_until(lambda: set(names) <= set(employee_names(remote)), timeout=patience(remote, timeout),
                          interval=0.01)
    expect(found, f"{remote.host.name} does not show {', '.join(names)} after {timeout:.0f} s.",
           "check replication (Step 12): pg_stat_replication on the primary, and the standby's log.")
    return employees(remote)


SYNC_BOUND_S = 5


def arrives_on_standbys(step: ops.Step, standbys, name: str, fix: str) -> ops.Step:
    """Verify that the row `name` reaches every standby within SYNC_BOUND_S. The compared output
    states the bound; the measured times go to step.measured, for a cell that is not compared."""
    step.measured = {}

    def arrived():
        shown = []
        for s in standbys:
            found, waited = wait_until(lambda: name in employee_names(s), timeout=patience(s, SYNC_BOUND_S),
                                       interval=0.01)
            expect(found, f"{s.host.name} does not show {name} after {SYNC_BOUND_S} s.", fix)
            step.measured[s.host.name] = waited
            shown.append(f"{s.host.name}: {name} appeared within {SYNC_BOUND_S * 1000} ms\n" + employees(s))
        return "\n".join(shown)
    return step.verify(f"{name} reaches every standby in time", arrived)


def names_known(primary) -> list[str]:
    """The names in the guide's table, as the planners know them: read on the primary itself, never
    through a load-balanced session (lib.facts)."""
    return [r[0] for r in known(primary, EMPLOYEE_NAMES, database=TEST_DB).rows]


def insert_if_absent(step: ops.Step, remote, name: str, department: str, *, primary, **login) -> ops.Step:
    """Plan one INSERT of the guide's on `remote`, unless the primary has a row with that name.
    `login`: through pgpool (Sql's login and password), else as postgres."""
    if name in names_known(primary):
        return step.note(remote, f"{name} is already in {TEST_DB}.employees: nothing to insert")
    login.setdefault("database", TEST_DB)
    return step.do(ops.Sql(remote, None if login.get("login") else "postgres", **login, statement=plan_secrets.text(
        f"INSERT INTO employees (name, department) VALUES ({sql_literal(name)}, {sql_literal(department)});"),
        summary=f"{name} inserted into {TEST_DB}.employees"))


def read_only_step(standbys, department: str) -> ops.Step:
    """Steps 16 and 37: an INSERT on each standby must fail. Not run by --check: it attempts a
    write, which a check must never do."""
    return ops.Step("read-only").verify("an INSERT on each standby fails with 25006", lambda: "\n".join(
        write_refused(s, department) for s in standbys), in_check=False)


def write_refused(standby, department: str) -> str:
    """An INSERT on a standby must fail with SQLSTATE 25006 (read_only_sql_transaction)."""
    sql = f"INSERT INTO employees (name, department) VALUES ('Hacker', {sql_literal(department)});"
    r = standby.psql("\\set VERBOSITY verbose\n" + sql, database=TEST_DB, check=False,
                     reads_only=True)       # it must fail: a standby that took it is what this reports
    error = next((l[l.index("ERROR:"):] for l in r.stderr.splitlines() if "ERROR:" in l), r.stderr.strip())
    expect(r.exit_code != 0 and "25006" in error,
           f"the INSERT on {standby.host.name} did not fail with SQLSTATE 25006 (exit {r.exit_code}: {error!r}).",
           "the host is not in recovery: standby.signal is missing (pg_is_in_recovery() = f); "
           "touch it in the data directory and restart (troubleshooting table).")
    return f"{prompt(standby, 'postgres')}psql -d {TEST_DB} -c \"{sql}\"\n{error}\n(psql exited {r.exit_code})"
