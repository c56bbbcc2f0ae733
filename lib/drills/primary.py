"""The primary's drills: stopped, crashed, silent, its WAL sender stalled; and the fence that keeps an old
primary from taking writes when it comes back."""
from __future__ import annotations

import re
import shlex
import time
from functools import partial

from lib import failover, failover_scripts, postgres
from lib.cluster import node_id, node_status, roles_line_now, roles_now, the_primary
from lib.drills.clients import Traffic
from lib.drills.measure import (FENCED_WITHIN_S, FOLLOWED_WITHIN_S, Outcome, PRIMARY_BOUND_S, Silence,
                                SILENT_PRIMARY_BOUND_S, SILENT_PRIMARY_FOR_S, a_standby, failover_log_since, observe,
                                run_during, within)
from lib.show import expect, positions_named, prompt
from lib.wait import wait_until


def stall_sender(primary, standby, seconds: float) -> str:
    """The command that pauses, on the primary, the WAL sender that serves `standby` (SIGSTOP) for
    `seconds` and resumes it, from the host itself through a transient unit: the primary commits on,
    and that standby falls behind, the WAL not yet sent. Fails unless such a sender runs."""
    title = f"walsender .* {standby.host.address}\\("
    found = primary.run(f"pgrep -f {shlex.quote(title)}", user="root", check=False).stdout.strip()
    expect(found, f"no WAL sender on {primary.host.name} serves {standby.host.name}: it cannot be made to lag.",
           "every node must be up and streaming before a drill (notebook 02, Step 34).")
    pause = f"p=$(pgrep -f '{title}'); kill -STOP $p; sleep {seconds:g}; kill -CONT $p"
    return f"systemd-run --quiet --collect --unit=pgguide-drill-stall-{standby.host.name} sh -c {shlex.quote(pause)}"


#: a crash of the whole server: every process of the postgres user killed at once, so that no WAL sender
#: sends another byte (kill -9 of the postmaster alone leaves its children to notice, and send, a moment later)
KILL_ALL = "pkill -KILL -u postgres -x postgres"


def primary_stops(env, how: str, lagging_s: float = 0, session_each: bool = False) -> Outcome:
    """Stop the primary (`how`: 'stop' with systemctl, 'kill' with SIGKILL to every process of the
    server at once, as a power cut would, 'silent' with its host's network down for SILENT_PRIMARY_FOR_S),
    with clients running; pgpool runs failover.sh, which promotes the most advanced standby (and,
    for a silent host, fences it once it answers again). With `lagging_s` the primary's WAL sender to the first
    standby is paused that long, a second before the stop, so that this standby lags behind the
    primary (and behind any other standby). With `session_each` the clients open a new session for
    each statement (see Traffic). Returns what the clients saw."""
    old, epoch = the_primary(env), time.time()
    p = env.params.postgres
    silence = Silence(old, SILENT_PRIMARY_FOR_S) if how == "silent" else None
    command = {"stop": f"systemctl stop {shlex.quote(p['service'])}", "kill": KILL_ALL,
               "silent": silence and silence.command}[how]
    clients = "a writer and a reader use pgpool, a new session for each statement" if session_each \
        else "a writer and a reader use pgpool"
    shown = f"{prompt(old, 'root')}{command}    # the primary, while {clients}"
    before = None
    if lagging_s:
        lagging = a_standby(env)
        stall = stall_sender(old, lagging, lagging_s)
        shown = (f"{prompt(old, 'root')}{stall}    # {lagging.host.name} falls behind: the WAL sender serving "
                 f"it paused for {lagging_s:g} s\n{shown}")
        before = partial(old.run, stall, user="root")
    outcome = Outcome(shown, stopped=old)

    def promoted_elsewhere():       # never asks the old primary: a silent host would hang the question
        return any(postgres.cluster_state(r) == "online" for r in failover.database_remotes(env) if r is not old)
    with Traffic(env, session_each) as traffic:
        run_during(traffic, old, command, "root", outcome,
             lambda: traffic.writer.first_ok_after(outcome.start + 0.001) and promoted_elsewhere(), before=before)
    lag = time.time() - time.monotonic()                 # the log's clock against ours (the same host clock in the lab)
    failed_at = outcome.start + lag
    if silence:
        failed_at = fenced_when_back(env, old, silence, failed_at)
    # pgpool runs follow_primary.sh for the failed node too, after failover.sh: its word comes last (for a
    # silent host, once its network is back, whenever that is)
    n = node_id(env, old)
    wait_until(lambda: any(re.match(rf"node {n} \(\S+\) is not a running standby", line)
                           for _, line in failover_log_since(env, epoch)), timeout=FOLLOWED_WITHIN_S, interval=0.3)
    log = failover_log_since(env, epoch)
    detected = next((t for t, line in log if re.match(r"primary node \d+ \(\S+\) failed", line)), None)
    promoted = next((t for t, line in log if re.match(r"node \d+ \(\S+\) promoted", line)), None)
    expect(detected is not None and promoted is not None, f"failover.sh did not promote: {[l for _, l in log]}.",
           f"read {failover_scripts.FAILOVER_LOG} and pgpool's log on {env.pgpool.host.name}; check Steps 41-43.")
    outcome.measured = {"failure detected after": detected - failed_at, "promoted after": promoted - failed_at,
                        **outcome.measured}
    outcome.may_lose = how in ("kill", "silent") and not env.params.postgres["synchronous"]
    observe(env, traffic, outcome,
             "a clean shutdown hands the standbys every WAL record, and failover.sh waits for that hand-over: "
             "read the failover log and the new primary's log."
             if how == "stop" else "with postgres.synchronous every acknowledged commit is on a standby, and "
             "failover.sh promotes the most advanced one: check synchronous_standby_names and "
             "pg_stat_replication's sync_state on the primary (Step 44), and the failover log.")
    # the watcher's verdict on a silent host comes when the host answers, before or after follow_primary.sh's
    later = [line for _, line in log if " answers again" in line]
    outcome.events = [f"{env.pgpool.host.name}: {failover_scripts.FAILOVER_LOG}:",
                      *(f"  {positions_named(line)}" for _, line in log if line not in later),
                      *(f"once {old.host.name}'s network was back:\n  {positions_named(line)}" for line in later)]
    outcome.events.append(roles_line_now(env))
    bound = SILENT_PRIMARY_BOUND_S if silence else PRIMARY_BOUND_S
    within(outcome, "writes stopped for", bound, "writes through pgpool stopped")
    within(outcome, "reads stopped for", bound, "reads through pgpool stopped")
    return outcome


def fenced_when_back(env, old, silence: Silence, asked_at: float) -> float:
    """After a silent primary's failover: wait until its network is back and the watcher failover.sh left
    behind has stopped and fenced it; returns when its interface went down (epoch seconds)."""
    back_at = asked_at + silence.ends_at_after

    def said():
        return time.time() > back_at and next((line for _, line in failover_log_since(env, asked_at)
                                               if " answers again" in line), None)
    line, _ = wait_until(said, timeout=silence.seconds + FENCED_WITHIN_S, interval=0.5)
    expect(line and line.endswith("stopped and fenced"),
           f"{old.host.name} answered again, and failover.sh's watcher says: {line or 'nothing'}.",
           f"read {failover_scripts.FAILOVER_LOG}; until it is fenced, {old.host.name} may run as a second primary: "
           "stop it (systemctl stop) and rejoin it.")
    return silence.began(asked_at)


def started_again(env, old) -> str:
    """Start the failed primary again, as a reboot or a person might, and show the fence hold: it
    comes up as a standby following nobody, it refuses writes, pgpool keeps it detached, and the
    cluster still has exactly one primary."""
    service = shlex.quote(env.params.postgres["service"])
    name, n = old.host.name, node_id(env, old)
    old.run(f"systemctl start {service}", user="root")
    roles = roles_now(env)
    expect(roles[name] == "standby" and list(roles.values()).count("primary") == 1,
           f"after its start the roles are {roles}: the fence did not hold.",
           f"failover.sh writes standby.signal into {name}'s data directory when its host answers: read the failover log.")
    sql = "CREATE TABLE written_on_the_old_primary (x int)"
    refused = old.psql(sql, check=False)
    expect(not refused.ok and "read-only transaction" in refused.stderr,
           f"{name} accepted a write: {refused.stderr.strip() or refused.stdout.strip()}", "stop it now: it runs as a primary.")
    upstream = postgres.value(old, "SHOW primary_conninfo")
    expect(upstream == "", f"{name} follows {upstream!r}.", "the fence removes primary_conninfo: read the failover log.")
    expect(node_status(env, old) == "down", f"pgpool uses {name} (node {n}) again.",
           "a former primary must be rejoined before pgpool uses it: check auto_failback and detach_false_primary.")
    error = next(l for l in refused.stderr.splitlines() if "ERROR" in l).split(":  ", 1)[-1]
    return "\n".join([f"{prompt(name, 'root')}systemctl start {service}    # the old primary, fenced, started again",
                       roles_line_now(env, roles),
                       f"{prompt(name, 'postgres')}psql -c \"{sql}\"", f"ERROR:  {error}",
                       f"{prompt(name, 'postgres')}psql -c \"SHOW primary_conninfo\"  →  '' (it follows nobody)",
                       f"pgpool keeps node {n} ({name}) detached: yes"])
