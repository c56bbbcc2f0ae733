"""`ci/provision --check`: is the live cluster still what the guide builds? Changes nothing.

Each check belongs to the guide step that would fix it. Where a step edits a file, the
check runs that very step on a read-only host: the edit is computed from the file as it is
now and not written, so "what would change" is exactly the drift (as in pyinfra's dry
runs). The rest reads state: roles, running settings, replication, the pgpool service, and
pgpool's own view of its nodes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from lib import db, replication, secrets
from lib import pgpool as pool
from lib.show import CheckFailed
from lib.steps import Hosts, Remote


@dataclass
class Check:
    step: str                 # the step that fixes a drift here: "Step 26", "Steps 7-11"
    host: str
    subject: str
    drifts: list[str] = field(default_factory=list)


def planned(changes: list[str], path: str) -> list[str]:
    """A read-only step's changes (-old / +new lines), as drift: what the file has that the
    guide does not want, and what the guide wants that the file lacks."""
    name = path.rsplit("/", 1)[-1]
    tidy = lambda line: " ".join(line[1:].split("#")[0].split())
    return ([f"{name} has  `{tidy(c)}`" for c in changes if c.startswith("-")]
            + [f"{name} lacks `{tidy(c)}`" for c in changes if c.startswith("+")])


def role(remote: Remote, secret_name: str) -> list[str]:
    name, attributes = secrets.ROLES[secret_name]
    differences = replication.role_differences(remote, name, secrets.secret(secret_name, remote.params), attributes)
    if differences is None:
        return [f"role {name} does not exist"]
    hint = {"has another password": f" (not the secret {secrets.SECRETS[secret_name][0]}: correct the secret, "
                                    "or provision with options.reset_passwords: true to replace it)"}
    return [f"role {name} {d}{hint.get(d, '')}" for d in differences]


def running_settings(remote: Remote, wanted: dict) -> list[str]:
    differing = replication.settings_differing(remote, wanted)
    return [f"running with other values of {', '.join(differing)} (restart needed)"] if differing else []


def standby_streams(standby: Remote, primary: Remote) -> list[str]:
    state = replication.standby_state(standby, primary)
    return [] if state == "streaming" else [f"not a standby streaming from {primary.host.name}: {state}"]


def conninfo_password(standby: Remote) -> list[str]:
    fields = replication.conninfo_fields(replication.auto_conf(standby))
    if fields.get("password") == secrets.secret("replication", standby.params):
        return []
    return ["primary_conninfo does not hold PGGUIDE_REPLICATION_PASSWORD"]


def guide_rows(primary: Remote) -> list[str]:
    missing = [n for n, _ in replication.GUIDE_ROWS if n not in replication.employee_names(primary)]
    return [f"{replication.TEST_DB}.employees lacks {', '.join(missing)}"] if missing else []


def packages(remote: Remote, names: list[str]) -> list[str]:
    return [f"{p} is not installed" for p in pool.missing_packages(remote, names)]


def monitor_grant(primary: Remote) -> list[str]:
    member = primary.psql(f"SELECT pg_has_role('{pool.PGPOOL_ROLE}', 'pg_monitor', 'MEMBER')", check=False)
    return [] if member.stdout.strip() == "t" else [f"{pool.PGPOOL_ROLE} is not a member of pg_monitor"]


def pgpool_files(vm3: Remote) -> list[str]:
    drifts = []
    if replication.auth_method(vm3.params) != "md5" and not pool.key_in_place(
            vm3, secrets.secret("pgpool_key", vm3.params)):
        drifts.append(f"{pool.KEY_FILE} does not hold PGGUIDE_PGPOOL_KEY")
    if not pool.pcppass_in_place(vm3, secrets.secret("pgpool", vm3.params)):
        drifts.append(f"{pool.PCPPASS} is missing or holds another password")
    return drifts


def service(vm3: Remote) -> list[str]:
    state = pool.service_state(vm3)
    if state == ["active", "enabled"]:
        return []
    return [f"{vm3.params.pgpool['service']} is {' and '.join(state) or 'unknown'}"]


def nodes(vm3: Remote) -> list[str]:
    p = vm3.params
    via_pgpool = partial(db.connect, p, vm3.host, user="postgres", password=secrets.secret("postgres", p),
                         port=p.pgpool["port"])
    try:
        with via_pgpool() as conn:
            found = pool.pool_nodes(conn)
        pool.check_nodes(found, p)
    except ConnectionError as e:
        return [f"cannot log in through pgpool as postgres: {e}"]
    except CheckFailed as e:
        return [str(e).splitlines()[0]]
    return []


def checks(env: Hosts) -> list[tuple[str, Remote, str, Callable[[], list[str]]]]:
    """(fixing step, host, subject, what to run) in the guide's order."""
    p, primary, vm3 = env.params, env.primary, env.pgpool
    conf = lambda r, name: replication.conf_file(r, name)
    md5 = replication.auth_method(p) == "md5"
    primary_wants = {**replication.PRIMARY_SETTINGS, **pool.encryption_settings(p)}
    out = [
        ("Step 1", primary, "replication role", lambda: role(primary, "replication")),
        ("Step 2", primary, "postgresql.conf", lambda: planned(replication.configure_primary(primary),
                                                              conf(primary, "postgresql.conf"))),
        ("Step 3", primary, "pg_hba.conf replication lines", lambda: planned(
            replication.allow_replication(primary, env.standbys), conf(primary, "pg_hba.conf"))),
        ("Step 5", primary, "running settings", lambda: running_settings(primary, primary_wants)),
    ]
    for s in env.standbys:
        out.append(("Steps 7-11", s, "streaming from the primary", partial(standby_streams, s, primary)))
        out.append(("Step 10", s, "primary_conninfo password", partial(conninfo_password, s)))
    out += [
        ("Step 14", primary, "the guide's test rows", lambda: guide_rows(primary)),
        ("Steps 19-20", vm3, "packages", lambda: packages(vm3, ["postgresql-client", p.pgpool["package"]])),
        ("Step 21", primary, "postgres password", lambda: role(primary, "postgres")),
        ("Step 22", primary, "pgpool role", lambda: role(primary, "pgpool")
         + monitor_grant(primary)),
        ("Step 23", primary, "pg_hba.conf lines for pgpool", lambda: planned(
            pool.allow_pgpool(primary, vm3.host), conf(primary, "pg_hba.conf"))),
    ]
    if md5:
        out += [("Step 24", primary, "password_encryption", lambda: planned(
                    pool.configure_encryption(primary), conf(primary, "postgresql.conf"))),
                ("Step 25", primary, "pg_hba.conf methods", lambda: planned(
                    pool.switch_hba_methods(primary), conf(primary, "pg_hba.conf")))]
    for s in env.standbys:
        out.append(("Step 26", s, "pg_hba.conf lines for pgpool", partial(
            lambda s: planned(pool.allow_pgpool(s, vm3.host) + pool.switch_hba_methods(s),
                              conf(s, "pg_hba.conf")), s)))
        out.append(("Step 28", s, "postgresql.conf and running settings", partial(
            lambda s: planned(pool.configure_encryption(s) + pool.configure_standby(s), conf(s, "postgresql.conf"))
            + running_settings(s, {**pool.STANDBY_SETTINGS, **pool.encryption_settings(p)}), s)))
    out += [
        ("Step 30", vm3, "pgpool.conf", lambda: planned(pool.configure_pgpool(vm3), pool.conf(p, "pgpool.conf"))),
        ("Step 31", vm3, "pool_hba.conf", lambda: planned(pool.allow_clients(vm3), pool.conf(p, "pool_hba.conf"))),
        ("Step 32", vm3, "pgpool key and pcp password", lambda: pgpool_files(vm3)),
        ("Step 33", vm3, "pgpool service", lambda: service(vm3)),
        ("Step 34", vm3, "pgpool's nodes (SHOW pool_nodes)", lambda: nodes(vm3)),
    ]
    return out


def run(env: Hosts) -> list[Check]:
    results = []
    for step, remote, subject, check in checks(env):
        result = Check(step, remote.host.name, subject)
        try:
            result.drifts = check()
        except Exception as e:          # one failing check must not hide the others
            lines = str(e).strip().splitlines() or [type(e).__name__]
            why = next((l.removeprefix("stderr: ") for l in lines if l.startswith("stderr: ")), "")
            result.drifts = [f"could not check: {lines[0]}" + (f" ({why})" if why else "")]
        results.append(result)
    return results


def main(params, say: Callable[[str], None]) -> int:
    """Print one line per check; exit status 0 when the cluster matches the guide."""
    env = Hosts(params, read_only=True)
    say(f"check {params.environment}: does the live cluster still match the guide? (nothing is changed)")
    try:
        results = run(env)
    finally:
        env.close()
    for r in results:
        mark = "ok   " if not r.drifts else "DRIFT"
        say(f"  {mark} {r.step:<11} {r.host:<6} {r.subject}")
        for d in r.drifts:
            say(f"        {d}")
    drifted = [r for r in results if r.drifts]
    if not drifted:
        say(f"check passed: all {len(results)} checks match the guide.")
        return 0
    steps = ", ".join(dict.fromkeys(r.step for r in drifted))
    say(f"check FAILED: {len(drifted)} of {len(results)} checks differ from the guide. "
        f"The steps that fix them: {steps}; provisioning again runs them and changes only what differs.")
    return 1
