"""A standby's drills (stopped, silent) and pgpool's own restart, measured the same way."""
from __future__ import annotations

import contextlib
import re
import shlex
import time
from dataclasses import dataclass

from lib import clone_guard, health_check_guard, pgpool_host, postgres
from lib.cluster import all_up, node_id, node_status, the_primary
from lib.drills.clients import Traffic
from lib.drills.measure import (Outcome, PGPOOL_BOUND_S, SCRIPT_SLACK_S, Silence, SILENT_BOUND_S, SILENT_FOR_S,
                                a_standby, failover_log_since, observe, run_during, within)
from lib.show import expect, prompt
from lib.wait import wait_until


#: what observing pgpool adds to its own detection time: pcp_node_info over SSH, every 0.2 s
POLL_SLACK_S = 1.5


def back_bound() -> float:
    """How soon a standby that answers again must be back in pgpool by itself: pgpool's re-attach
    bound (Step 30) plus the time its WAL receiver takes to reconnect."""
    return pgpool_host.reattach_bound() + clone_guard.RECONNECT_S


def standby_stops(env, down_for: float = 8, clients: bool = True) -> Outcome:
    """Stop a standby for longer than pgpool takes to detach it, start it again, and time how long
    until pgpool uses it again by itself (auto_failback). With clients=False nobody uses pgpool, so
    only its health check can notice: that measures the detection the settings promise."""
    standby = a_standby(env)
    service, name, n = shlex.quote(env.params.postgres["service"]), standby.host.name, node_id(env, standby)
    outcome = Outcome(f"{prompt(name, 'root')}systemctl stop {service}; sleep {down_for:.0f}; systemctl start {service}    "
                      + ("# a standby, while a writer and a reader use pgpool" if clients else
                         "# a standby, with no client connected"))
    traffic = Traffic(env) if clients else None
    with traffic or contextlib.nullcontext():
        time.sleep(1)
        outcome.start = time.monotonic()
        standby.run(f"systemctl stop {service}", user="root")
        detached, _ = wait_until(lambda: node_status(env, standby, n) == "down", timeout=down_for, interval=0.2)
        outcome.measured["detached after"] = time.monotonic() - outcome.start
        time.sleep(max(0.0, down_for - (time.monotonic() - outcome.start)))
        started = time.monotonic()
        standby.run(f"systemctl start {service}", user="root")
        back, _ = wait_until(lambda: node_status(env, standby, n) in ("up", "waiting"), timeout=60, interval=0.2)
        outcome.measured["back in pgpool after start"] = time.monotonic() - started
        time.sleep(2)
        outcome.end = time.monotonic()
    if traffic:
        observe(env, traffic, outcome, "the primary kept running: a row it acknowledged must still be there.")
    expect(detached, f"pgpool did not detach {name} within {down_for:.0f} s.", "check health_check_period (Step 30)")
    bound = back_bound()
    expect(back and outcome.measured["back in pgpool after start"] <= bound,
           f"{name} was not back in pgpool {bound} s after it started.",
           "check auto_failback and sr_check_period (Step 30), and backend_application_nameN.")
    if clients:
        first = f"pgpool detached {name}: yes"
        last = ["writes and reads went on; the sessions that were using it were cut (counted below)"]
    else:
        promised = pgpool_host.detection_bounds()["refused"]
        expect(outcome.measured["detached after"] <= promised + POLL_SLACK_S,
               f"pgpool's health check took {outcome.measured['detached after']:.1f} s to detach {name}; the "
               f"settings promise {promised} s.", "compare health_check_* in pgpool.conf with Step 30.")
        first = (f"pgpool's health check detached {name} within {promised} s (+ {POLL_SLACK_S} s for this "
                 "notebook's polling): yes")
        last = []
    outcome.events = [first, f"back in load balancing by itself within {bound} s of its start: yes", *last]
    return outcome


def standby_goes_silent(env, silent_for: float = SILENT_FOR_S) -> Outcome:
    """Take a standby's network interface down for `silent_for` seconds, from the standby itself
    (a transient systemd unit brings it back even though our SSH session stalls), with nobody
    connected. Packets to it now get no answer at all, so each health-check try waits out its
    timeout: this measures the 'silent' bound of Step 30, with what the health-check guard adds
    (lib.health_check_guard), and that the standby comes back by itself. The times are pgpool's own, from
    the failover log (its scripts log each detach and attach): polling pcp while pgpool handles a failover
    would add delays of its own."""
    standby = a_standby(env)
    name, n = standby.host.name, node_id(env, standby)
    added, promised, bound = health_check_guard.added_s(), SILENT_BOUND_S, back_bound()
    outcome = Outcome(f"{prompt(name, 'root')}{Silence(standby, silent_for).command}    # a standby's network, "
                      "with no client connected")
    silent = silence_once(env, standby, n, silent_for, promised + SCRIPT_SLACK_S)
    if not silent.detached:
        held = (f"pgpool's health check of node {n} was still waiting in a read on its session to {name} "
                f"{promised + SCRIPT_SLACK_S:.0f} s into the silence, which the guard beside pgpool should have "
                "ended. " if silent.read_held else "")
        expect(False, f"pgpool did not detach {name} within {silent_for:.0f} s of its network going silent; pgpool "
                      f"has it {node_status(env, standby, n)} now. {held}The failover log from 30 s before the drill "
                      f"(times from the silence):\n{silent.log or '  (nothing)'}",
               "check health_check_timeout and health_check_max_retries (Step 30), pgpool's own log for the health "
               f"check of node {n}, and that {health_check_guard.UNIT} runs (Step 33).")
    answering = silent.down_at + silent_for
    attached, _ = wait_until(lambda: logged(env, standby, n, "attached", answering), timeout=bound + 5, interval=0.5)
    outcome.measured["detached after"] = silent.detached - silent.down_at
    if attached:
        outcome.measured["back in pgpool after its network"] = attached - answering
    expect(outcome.measured["detached after"] <= promised + SCRIPT_SLACK_S,
           f"pgpool's health check took {outcome.measured['detached after']:.1f} s to detach {name}, whose host "
           f"did not answer; the settings promise {promised} s.", "compare health_check_* in pgpool.conf with Step 30.")
    expect(attached and attached - answering <= bound, f"{name} was not back in pgpool {bound} s after its network "
           "came back.", "check that it still streams (pg_stat_replication on the primary), auto_failback and "
           "sr_check_period (Step 30).")
    # back in pgpool is not enough: its replication connection may still be stuck, while pg_stat_replication
    # says 'streaming' and pgpool sends it reads. A new WAL record must reach it.
    within_s = replay_bound(standby)
    replaying = replays_again_within(env, standby, within_s)
    outcome.measured["replaying new WAL after its network"] = time.time() - answering
    expect(replaying, f"{name} is back in pgpool but has not replayed a new WAL record of the primary "
                      f"{within_s:.0f} s later: its reads are stale.",
           "its WAL receiver neither streams nor gave up on the silent connection: read its log and "
           "pg_stat_wal_receiver.")
    outcome.events = [f"pgpool's health check detached {name} within {promised} s of the silence (+ {SCRIPT_SLACK_S:g} s "
                      f"for pgpool to start failover.sh, whose log line gives the time, and the guard's {added} s): yes",
                      f"back in load balancing by itself within {bound} s of its network's return: yes",
                      f"and replaying the primary's new WAL within {within_s:.0f} s after that (its WAL receiver's "
                      "timeout and retry interval): yes"]
    return outcome


@dataclass
class Silent:
    """One silence of a standby, as pgpool saw it (epoch seconds)."""
    down_at: float                 # when its interface went down
    detached: float | None         # when failover.sh logged the detach, if it did before the network returned
    read_held: bool                # no detach in time, and the health check was waiting in a read
    log: str                       # the failover log from 30 s before, times from the silence


def logged(env, standby, n: int, event: str, after: float) -> float | None:
    """When failover.sh logged node `n` (`standby`) `event` ('detached' or 'attached') after `after`."""
    pattern = re.compile(rf"node {n} \({re.escape(standby.host.address)}\) (detached|attached)")
    return next((t for t, line in failover_log_since(env, after)
                 if (m := pattern.match(line)) and m.group(1) == event), None)


def silence_once(env, standby, n: int, silent_for: float, promised: float) -> Silent:
    """Cut `standby`'s network for `silent_for` seconds once everything is up, and wait for pgpool to
    detach it; if it has not when the settings say it must have, look at its health check while the
    silence lasts (a held read ends when the network returns)."""
    silence = Silence(standby, silent_for)
    # a node pgpool has detached already is not health-checked: the drill before may still be attaching it again
    settled_at = time.time()
    all_up(env, timeout=back_bound())
    time.sleep(1)
    cut_at = time.time()
    standby.run(silence.command, user="root")
    detached, _ = wait_until(lambda: logged(env, standby, n, "detached", cut_at), timeout=promised + 0.5, interval=0.5)
    read_held = not detached and pgpool_host.health_check_in_a_read(env, n)
    if not detached:
        detached, _ = wait_until(lambda: logged(env, standby, n, "detached", cut_at),
                                 timeout=max(0.0, cut_at + silence.ends_at_after + 1 - time.time()), interval=0.5)
    time.sleep(max(0.0, cut_at + silence.ends_at_after - time.time()))
    # from the moment the interface went down, not from when we asked: SSH and systemd-run take their time
    down_at = silence.began(cut_at)
    log = "" if detached else "\n".join(f"  {t - down_at:+.1f} s  {line}" for t, line in failover_log_since(env, settled_at - 30))
    return Silent(down_at, detached, read_held, log)


def replay_bound(standby) -> float:
    """Seconds within which a standby back from a silence replays the primary's new WAL, at worst: its
    replication connection resumes, or its WAL receiver gives up on it (wal_receiver_timeout) and
    connects again (wal_retrieve_retry_interval). Measured: 4-6 s, once more than 15 s (TCP's
    retransmission back-off after the silence, most likely)."""
    ms = postgres.value(standby, "SELECT sum(setting::int) FROM pg_settings "
                                 "WHERE name IN ('wal_receiver_timeout', 'wal_retrieve_retry_interval')")
    return int(ms) / 1000


def replays_again_within(env, standby, seconds: float) -> bool:
    """Whether the primary sees `standby` replay a WAL record written now (a logical message: no table
    needed) within `seconds`."""
    primary, name = the_primary(env), standby.host.name
    lsn = postgres.value(primary, "SELECT pg_logical_emit_message(false, 'pgguide-drill', 'are you there')")
    replayed = (f"SELECT count(*) > 0 FROM pg_stat_replication WHERE application_name = '{name}' "
                f"AND replay_lsn >= '{lsn}'")
    done, _ = wait_until(lambda: postgres.value(primary, replayed) == "t", timeout=seconds, interval=0.3)
    return bool(done)


def pgpool_restarts(env) -> Outcome:
    service = shlex.quote(env.params.pgpool["service"])
    outcome = Outcome(f"{prompt(env.pgpool, 'root')}systemctl restart {service}    # while a writer and a reader use it")
    with Traffic(env) as traffic:
        run_during(traffic, env.pgpool, f"systemctl restart {service}", "root", outcome,
             lambda: traffic.writer.first_ok_after(outcome.start + 0.5) and traffic.reader.first_ok_after(outcome.start + 0.5))
    observe(env, traffic, outcome, "the servers kept running: a row they acknowledged must still be there.")
    within(outcome, "writes stopped for", PGPOOL_BOUND_S, "writes stopped")
    within(outcome, "reads stopped for", PGPOOL_BOUND_S, "reads stopped")
    return outcome
