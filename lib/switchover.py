"""`ci/provision --switchover HOST`: a planned change of primary that loses nothing.

1. Before any change, the hosts must show that it can work: HOST is a standby that the primary
   sees streaming and caught up, and pgpool uses it.
2. failover.sh is told the target (lib.failover_scripts.SWITCHOVER_TO): it promotes it when it holds as
   much WAL as the most advanced standby, which after a clean hand-over every connected standby does.
3. The primary is stopped cleanly. Its shutdown hands every WAL record to the standbys; pgpool detaches
   it and runs failover.sh, which waits for that hand-over, promotes HOST and fences the old primary;
   follow_primary.sh points the other standbys at HOST.
4. The old primary rejoins as HOST's standby (lib.rejoin: the look, then pg_rewind), and every
   node is up.

It is also the way back to the preferred primary after a failover.
"""
from __future__ import annotations

import shlex
import time
from typing import Callable

from lib import cluster, failover_scripts, ops, postgres, rejoin
from lib.remote import Hosts, StepFailed
from lib.show import CheckFailed, expect

#: how long the old primary's stop, the hand-over and the promotion may take together
PROMOTED_WITHIN_S = 30


def target(env, name: str):
    remote = next((r for r in [env.primary, *env.standbys] if r.host.name == name), None)
    expect(remote is not None, f"{name} is not one of the database servers "
                               f"({', '.join(r.host.name for r in [env.primary, *env.standbys])}).",
           "name a standby of the parameter file. Nothing was changed.")
    return remote


def ready(env, new) -> tuple:
    """(the current primary, the proof) that `new` can take over, read from the hosts; raises otherwise."""
    old = cluster.running_primary(env)
    expect(old is not None, "there is not exactly one running primary: no switchover.",
           "provision first (it rejoins a former primary), or run --diagnose. Nothing was changed.")
    name = new.host.name
    expect(old is not new, f"{name} is already the primary. Nothing was changed.", "nothing to do.")
    caught_up = postgres.value(old, failover_scripts.caught_up_sql(name))
    expect(caught_up == "t", f"{old.host.name} does not see {name} streaming and replayed to within "
                             f"{failover_scripts.ATTACH_LAG_BYTES} bytes: a switchover now would wait for it or lose writes.",
           f"let {name} catch up (pg_stat_replication on {old.host.name}), or provision again. Nothing was changed.")
    status = cluster.node_status(env, new)
    expect(status in ("up", "waiting"), f"pgpool has {name} {status}: it would not promote it.",
           "provision again (Step 34 attaches a healthy node). Nothing was changed.")
    return old, f"{old.host.name} sees {name} streaming and caught up; pgpool uses it ({status})"


def plan(env, old, new, proof: str) -> ops.Step:
    """The switchover's actions, as one step (shown like the notebooks' steps)."""
    name, step = new.host.name, ops.Step("switchover")
    step.note(new, proof)
    until = f"$(( $(date +%s) + {PROMOTED_WITHIN_S} ))"
    step.do(ops.Command(env.pgpool, "postgres", f"echo {shlex.quote(new.host.address)} {until} > {failover_scripts.SWITCHOVER_TO}",
                        summary=f"failover.sh told to prefer {name}"))
    service = shlex.quote(env.params.postgres["service"])
    step.do(ops.Command(old, "root", f"systemctl stop {service}", summary=f"{old.host.name} stopped cleanly: "
                        "its shutdown hands every WAL record to the standbys"))
    promoted = ops.wait_for("[ \"$(psql -XAtc 'SELECT pg_is_in_recovery()')\" = f ]", PROMOTED_WITHIN_S,
                            f"{name} was not promoted")
    step.do(ops.Command(new, "postgres", promoted, shown="psql -XAtc 'SELECT pg_is_in_recovery()'    # until it says f",
                        show_output=False, summary=f"{name} promoted by failover.sh",
                        hint=f"read {failover_scripts.FAILOVER_LOG} on {env.pgpool.host.name}"))
    return step


def run(env, name: str) -> str:
    """Switch over to `name` and rejoin the old primary as its standby: the transcript."""
    import io
    from contextlib import redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out):
        new = target(env, name)
        old, proof = ready(env, new)
        plan(env, old, new, proof).apply()
        rejoin.former_primary(env, old).apply()
        print(cluster.roles_line_now(env))
    return out.getvalue()


def main(params, name: str, say: Callable[[str], None]) -> int:
    env = Hosts(params)
    say(f"switchover {params.environment}: make {name} the primary, losing nothing")
    started = time.monotonic()
    try:
        transcript = run(env, name)
    except (CheckFailed, StepFailed) as e:
        say(f"switchover FAILED: {e}")
        return 1
    finally:
        env.close()
    for line in transcript.rstrip().splitlines():
        say(f"  {line}")
    say(f"switchover succeeded in {time.monotonic() - started:.1f} s")
    return 0
