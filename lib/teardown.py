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

from lib import pgpool as pool
from lib import replication
from lib.show import expect
from lib.steps import Hosts, Remote
from lib.wait import wait_until


def stop_pgpool(vm3: Remote) -> str:
    service = vm3.params.pgpool["service"]
    state = pool.service_state(vm3)
    if state[:1] != ["active"] and state[1:] != ["enabled"]:
        return f"{vm3.host.name}: {service} already stopped and not enabled ({' / '.join(state) or 'not installed'})"
    vm3.sudo(f"systemctl disable --now {service} 2>&1 | grep -v '^Synchronizing\\|^Executing\\|^Removed' || true")
    vm3.changed(f"{service} stopped and disabled")
    after = vm3.run(f"systemctl is-active {service}", check=False).stdout.strip()
    expect(after != "active", f"{service} on {vm3.host.name} is still {after}.",
           f"stop it by hand: sudo systemctl stop {service}")
    return f"{vm3.host.name}: {service} stopped and disabled at boot"


def make_standalone(standby: Remote) -> str:
    p = standby.params.postgres
    if not replication.cluster_state(standby).startswith("online"):
        return (f"{standby.host.name}: cluster {p['version']}/{p['cluster']} is "
                f"{replication.cluster_state(standby)}; left as it is (start it to promote it)")
    if standby.psql("SELECT pg_is_in_recovery()").stdout.strip() != "t":
        return f"{standby.host.name}: already a standalone server (not in recovery)"
    standby.sudo(f"pg_ctlcluster {p['version']} {p['cluster']} promote")
    promoted, _ = wait_until(lambda: standby.psql("SELECT pg_is_in_recovery()").stdout.strip() == "f", timeout=30)
    expect(promoted, f"{standby.host.name} is still in recovery after promote.", f"read {p['log_file']}.")
    standby.psql("ALTER SYSTEM RESET primary_conninfo;\nSELECT pg_reload_conf();")
    standby.changed("promoted to a standalone server; primary_conninfo removed")
    return f"{standby.host.name}: promoted; now a standalone, writable server (replication ended)"


def main(params, say: Callable[[str], None]) -> int:
    env = Hosts(params)
    say(f"teardown {params.environment}: stop pgpool, make the standbys standalone")
    try:
        say("  " + stop_pgpool(env.pgpool))
        for s in env.standbys:
            say("  " + make_standalone(s))
    finally:
        env.close()
    say(f"teardown done. Left in place on purpose: {env.primary.host.name} as it is (replicator role, pg_hba "
        f"lines, {replication.TEST_DB}); the {params.pgpool['package']} package and its configuration on "
        f"{env.pgpool.host.name}. Provisioning again clones the standbys afresh.")
    return 0
