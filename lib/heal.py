"""After a failover, provisioning with the same parameter file heals the cluster.

The parameter file names the cluster's members and its *preferred* primary; which server is the
primary is a fact of the cluster. When a failover has promoted a standby, provisioning keeps it as
the primary, rejoins the former primary as its standby (lib.rejoin: it counts and keeps aside
what the former primary alone held, or refuses with options.refuse_diverged), and then runs the
notebooks with the roles as they are. pgpool keeps its node numbers (lib.pgpool_host.backend_hosts).
"""
from __future__ import annotations

import copy
import io
import shlex
from contextlib import redirect_stdout
from types import SimpleNamespace

from lib import clone_guard, cluster, rejoin


def former_primaries(env, primary, states: dict) -> list:
    """The other servers that were the primary before a failover promoted past them. A running standby
    is one only when failover.sh fenced it (read only then: most runs have nothing to heal)."""
    suspects = [r for r, state in states.items()
                if r is not primary and (state != "online,recovery" or clone_guard.fenced(r))]
    if not suspects:
        return []
    now = clone_guard.read(primary)
    return [r for r in suspects if clone_guard.former_primary(now, clone_guard.read(r))]


def effective(data: dict, primary: str) -> dict:
    """The parameters with `primary` (a standby's name) as the primary and the preferred primary
    among the standbys, in its place; everything else as it was."""
    out = copy.deepcopy(data)
    hosts = out["hosts"]
    standbys = hosts["standbys"]
    i = next(n for n, s in enumerate(standbys) if s["name"] == primary)
    hosts["primary"], standbys[i] = standbys[i], hosts["primary"]
    return out


def heal(env, parameters: dict, say) -> dict | None:
    """Rejoin each former primary when a failover promoted another server; the `parameters` to go on
    with (the roles as they are), or None when there is nothing to heal. The rejoin's transcript is
    said line by line; a refusal raises before anything changes."""
    try:
        states = cluster.states(env)
        primary = cluster.running_primary(env, states)
        former = former_primaries(env, primary, states) if primary else []
    except Exception:                           # a host that does not answer: notebook 00's preflight says why
        return None
    if primary is None:
        return None                             # none, or two: Part 1's guard says what it finds
    if primary is env.primary and not former:
        return None
    name = primary.host.name
    preferred = "" if primary is env.primary else f"; the parameters prefer {env.primary.host.name}"
    say(f"heal: {name} runs as the primary (a failover promoted it){preferred}. Keeping {name}"
        + (f", rejoining {', '.join(r.host.name for r in former)} as its standby:" if former else "."))
    for old in former:
        transcript, counted = io.StringIO(), SimpleNamespace(measured={}, lost=None)
        try:
            with redirect_stdout(transcript):
                rejoin.former_primary(env, old, counted).apply()
        finally:
            for line in transcript.getvalue().rstrip().splitlines():
                say(f"  {line}")
        held = counted.measured.get(rejoin.COUNTED, 0)
        if held:
            pattern = shlex.quote(env.params.postgres["data_dir"].rstrip("/") + rejoin.DIVERGED) + "*"
            kept = old.run(f"ls -d {pattern} | tail -n 1", user="root").stdout.strip()
            say(f"heal: {old.host.name} held {held} commits that {name} never received: the rewind discarded them; "
                f"their WAL is kept on {old.host.name} in {kept} (pg_waldump reads it)")
    if primary is env.primary:
        return parameters
    say(f"heal: provisioning goes on with {name} as the primary (to make {env.primary.host.name} the primary "
        "again: a planned switchover, notebook 04)")
    return effective(parameters, name)


def roles_as_they_are(env) -> dict | None:
    """For --check: the parameters with the roles as they are once the preferred primary streams
    from the promoted one (healed), else None."""
    primary = cluster.running_primary(env)
    if primary is None or primary is env.primary or \
            clone_guard.streaming_from_primary(env.primary, primary) != "streaming":
        return None
    return effective(env.params.raw, primary.host.name)
