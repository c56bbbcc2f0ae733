"""`ci/provision --teardown`: stop pgpool and make every standby a standalone server.

What it does, on purpose and no more:
- pgpool host: stops the pgpool service and disables it at boot. The package and its
  configuration stay, so the run records still describe what is on the host.
- standbys: promotes each (pg_ctlcluster ... promote), which ends recovery and replication:
  it becomes a standalone, writable server holding the primary's data as of that moment.
  primary_conninfo is then removed from postgresql.auto.conf.
- primary: nothing. Its replicator role, its pg_hba lines and the test database stay: they
  do no harm without a standby, and removing roles or data is not a teardown's business.

Safe to repeat: a stopped pgpool and a server that is not in recovery are left alone.
Provisioning again afterwards clones each standby afresh from the primary (steps 7-11).
In the lab, `ci/lab down` removes everything instead.
"""
from __future__ import annotations

from typing import Callable

import shlex

from lib import ops, postgres
from lib.lock import LockHeld
from lib.pgpool_host import service_state
from lib.remote import Hosts


def stop_pgpool(env) -> ops.Step:
    vm3, step = env.pgpool, ops.Step("stop pgpool")
    service = shlex.quote(vm3.params.pgpool["service"])
    state = service_state(vm3)
    if state[:1] != ["active"] and state[1:] != ["enabled"]:
        return step.note(vm3, f"{service} already stopped and not enabled ({' / '.join(state) or 'not installed'})")
    return step.do(ops.Command(
        vm3, "root", f"systemctl disable --now {service} 2>&1 | grep -v '^Synchronizing\\|^Executing\\|^Removed' || true; "
        f"! systemctl is-active -q {service}", shown=f"systemctl disable --now {service}",
        summary=f"{service} stopped and disabled"))


def make_standalone(env) -> ops.Step:
    step = ops.Step("promote the standbys")
    p = env.params.postgres
    for s in env.standbys:
        state = postgres.cluster_state(s)
        if not state.startswith("online"):
            step.note(s, f"cluster {p['version']}/{p['cluster']} is {state}; left as it is (start it to promote it)")
        elif postgres.value(s, "SELECT pg_is_in_recovery()") != "t":
            step.note(s, "already a standalone server (not in recovery)")
        else:
            promoted = ops.wait_for(f"[ \"$(runuser -u postgres -- psql -XAt -p {p['port']} -c 'SELECT pg_is_in_recovery()')\" = f ]",
                                    30, "still in recovery")
            step.do(ops.Command(s, "root", f"pg_ctlcluster {postgres.cluster_words(p)} promote && {promoted}",
                                shown=f"pg_ctlcluster {postgres.cluster_words(p)} promote",
                                summary="promoted to a standalone server"),
                    ops.Sql(s, "postgres", statement=("ALTER SYSTEM RESET primary_conninfo;\nSELECT pg_reload_conf();",),
                            summary="primary_conninfo removed"))
    return step


def main(params, say: Callable[[str], None]) -> int:
    import contextlib
    import io

    env = Hosts(params, purpose="ci/provision --teardown", whole_run=True)
    say(f"teardown {params.environment}: stop pgpool, make the standbys standalone")
    try:
        env.lock.hold()
        for build in (stop_pgpool, make_standalone):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                build(env).apply()
            for line in out.getvalue().splitlines():
                say("  " + line)
    except LockHeld as e:
        say(f"teardown refused: {e}")
        return 1
    finally:
        env.close()
    say(f"teardown done. Left in place on purpose: {env.primary.host.name} as it is (replicator role, pg_hba "
        f"lines, {postgres.TEST_DB}); the {params.pgpool['package']} package and its configuration on "
        f"{env.pgpool.host.name}. The standbys are standalone servers now: provisioning again will not clone "
        "over one that may hold writes of its own (book/operate.md: Before a standby is wiped).")
    return 0
