"""What a drill measures and the bounds it is held to: the outcome as the clients saw it, the rows lost,
the failover log's times, a host taken silent, and the roles before and after."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from lib import clone_guard, failover, failover_scripts, health_check_guard, pgpool_host, postgres, switchover
from lib.cluster import roles_now, the_primary
from lib.drills.clients import Losses, Traffic, losses
from lib.remote import StepFailed
from lib.show import expect, prompt
from lib.wait import wait_until


def commit_mode(env) -> str:
    """How the primary acknowledges commits (Step 44), read from it; it must be what the
    parameters say, or the drills would judge lost rows by the wrong rule."""
    primary = the_primary(env)
    names = postgres.value(primary, "SHOW synchronous_standby_names")
    wanted = failover.synchronous_settings(env.params)["synchronous_standby_names"]
    expect(names == wanted, f"{primary.host.name} runs with synchronous_standby_names = '{names}', the parameters "
                            f"want '{wanted}'.", "provision again (notebook 03, Step 44), then run the drills.")
    mode = ("once a standby has it too (synchronous)" if names else "by the primary alone (asynchronous, as the guide)")
    return (f"{prompt(primary, 'postgres')}psql -c \"SHOW synchronous_standby_names\"  →  '{names}'\n"
            f"commits are acknowledged {mode}")


def failover_log_since(env, since_epoch: float) -> list[tuple[float, str]]:
    out = env.pgpool.run(f"cat {failover_scripts.FAILOVER_LOG}", user="root").stdout
    lines = []
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        try:
            if float(stamp) >= since_epoch:
                lines.append((float(stamp), text))
        except ValueError:
            continue
    return lines


#: the goal book/failover.md states for a stopped primary: writes resume, and reads are never locked out longer
PRIMARY_BOUND_S = 15


#: a pgpool restart: clients get in again within this: a stop, bounded by Step 33's drop-in, then a start
PGPOOL_BOUND_S = pgpool_host.STOP_TIMEOUT_S + 5


@dataclass
class Outcome:
    """What a drill did (the command, as shown) and what the clients saw."""
    shown: str
    start: float = 0.0                       # monotonic, when the command was sent
    end: float = 0.0
    events: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)
    lost: Losses | None = None               # None: no writer ran
    may_lose: bool = False                   # a crash with asynchronous replication: rows in flight are counted, not failed
    stopped: Any = field(default=None, repr=False)   # the server the drill stopped (a Remote), to rejoin it

    def report(self) -> str:
        """The stable part: what ran, what happened, each bound held (asserted before)."""
        return "\n".join([self.shown, *self.events, *self.lost_line()])

    def lost_line(self) -> list[str]:
        if self.lost is None:
            return []
        where = f" (counted on the primary, {self.lost.primary})"
        if self.may_lose:
            return [f"acknowledged rows lost{where}: only rows in flight when the primary failed, none before; "
                    "their count is with the figures below (asynchronous replication)"]
        return [f"acknowledged rows lost{where}: 0"]

    def figures(self) -> str:
        """The measured part: differs on every run."""
        def shown(name, v):
            return f"{name} {v:.1f} ms" if name == "median commit" else f"{name} {v:.1f} s" if isinstance(v, float) \
                else f"{name} {v}"
        return ", ".join(shown(k, v) for k, v in self.measured.items())


def observe(env, traffic: Traffic, outcome: Outcome, why_none_lost: str) -> None:
    """What the clients saw, and which acknowledged rows the primary lacks now. Unless the drill
    may lose rows in flight (outcome.may_lose), a lost row fails it, with `why_none_lost` as the hint."""
    w, r = traffic.writer, traffic.reader
    outcome.measured.update({
        "writes stopped for": w.longest_gap(outcome.start, outcome.end),
        "reads stopped for": r.longest_gap(outcome.start, outcome.end),
        "failed writes": w.failures_between(outcome.start, outcome.end),
        "failed reads": r.failures_between(outcome.start, outcome.end),
        "rows acknowledged": len(w.acked),
        "median commit": sorted(w.latency)[len(w.latency) // 2] * 1000 if w.latency else 0.0,
    })
    judge_lost(outcome, losses(env, w), why_none_lost)


def judge_lost(outcome: Outcome, found: Losses, why_none_lost: str) -> None:
    """A defect always fails the drill; rows in flight fail it unless it may lose them."""
    outcome.lost = found
    outcome.measured["rows lost"] = len(found.lost)
    outcome.measured["rows not yet on a standby (lag)"] = ", ".join(f"{n} {k}" for n, k in found.behind.items()) \
        or "none (no standby running)"
    if found.in_flight:
        outcome.measured["rows lost"] = (f"{len(found.lost)} (in flight past the switch point "
                                         f"{found.switch_point or '?'}: {found.described(found.in_flight)})")
    expect(not found.defects, f"{len(found.defects)} acknowledged rows are gone from {found.primary} although later "
                              f"rows of the same server survived, or another server had already taken over: "
                              f"{found.described(found.defects)}; the timeline began at {found.switch_point or '?'}.",
           "this is no replication lag: read the failover log and both servers' logs around those WAL positions.")
    expect(outcome.may_lose or not found.in_flight,
           f"{len(found.in_flight)} acknowledged rows are gone from {found.primary}: "
           f"{found.described(found.in_flight)}; its timeline began at {found.switch_point or '?'}.", why_none_lost)


#: a drill's own command (a stop, a restart) ends within this, or the drill fails showing what runs
COMMAND_TIMEOUT_S = 30


WHAT_RUNS = ("systemctl list-jobs --no-pager; "
             "ps -eo pid,ppid,stat,wchan:24,etime,args --forest | grep -v -e ' \\[' -e 'ps -eo' -e 'wait for connection request' | tail -n 40; "
             "journalctl --no-pager -n 30 -o short-precise")


def what_runs(remote) -> str:
    """The host's jobs, processes and last log lines: why a command there did not finish."""
    try:
        out = remote.run(WHAT_RUNS, user="root", check=False, timeout=15).stdout
    except StepFailed as e:
        return f"(and {remote.host.name} did not answer what runs there either: {e})"
    return f"what runs on {remote.host.name} now ($ {WHAT_RUNS}):\n{out}"


def run_during(traffic: Traffic, remote, command: str, user: str, outcome: Outcome, until, timeout: float = 60,
         before=None) -> None:
    """Send the command while the clients run; wait until `until()` holds, then 2 s more. `before()`,
    when given, runs a second before the command (a standby made to lag)."""
    time.sleep(1)                                     # a second of normal traffic before
    if before:
        before()
        time.sleep(1)
    outcome.start = time.monotonic()
    try:
        remote.run(command, user=user, timeout=COMMAND_TIMEOUT_S)
    except StepFailed as e:
        raise StepFailed(f"{e}\n{what_runs(remote)}") from None
    done, _ = wait_until(until, timeout=timeout, interval=0.1)
    if not done:
        log = traffic.env.pgpool.run(f"tail -n 15 {failover_scripts.FAILOVER_LOG}", user="root", check=False).stdout
        expect(False, f"after `{command}` on {remote.host.name} the cluster did not recover within {timeout:.0f} s. "
                      f"The writer's last error: {traffic.writer.last_error or 'none'}; the reader's: "
                      f"{traffic.reader.last_error or 'none'}. The failover log ends:\n{log}",
               f"read {failover_scripts.FAILOVER_LOG} and pgpool's log on the pgpool host.")
    time.sleep(2)                                     # and two seconds after
    outcome.end = time.monotonic()


def within(outcome: Outcome, figure: str, bound: float, said: str) -> None:
    value = outcome.measured[figure]
    expect(value <= bound, f"{said} for {value:.1f} s (the bound is {bound} s).",
           "compare the health-check settings (Step 30) with the detection time above; read pgpool's log.")
    outcome.events.append(f"{said} for less than {bound} s: yes")


def a_standby(env):
    """The standby a drill takes away: the first server that is not the primary now."""
    primary = the_primary(env)
    return next(r for r in failover.database_remotes(env) if r is not primary)


#: pgpool's verdict on a host that answers nothing: the settings' 'silent' bound (13 s), plus what the guard
#: adds when a health check was reading as the silence began (5 s; lib.health_check_guard)
SILENT_BOUND_S = pgpool_host.detection_bounds()["silent"] + health_check_guard.added_s()


#: a silent primary: pgpool's verdict, failover.sh's try to reach the host, then up to 8 s for the rest:
#: reading the standbys and telling them to stop listening to it (1.6 s measured), the promotion, and
#: pgpool's search for the new primary before it takes sessions again (about 2 s)
SILENT_PRIMARY_BOUND_S = SILENT_BOUND_S + failover_scripts.ANSWER_S + 8


#: how long drill 2b keeps the primary's host silent: past its bound, so that clients are back on a new
#: primary while the old one still answers nothing, as when a host is gone for good (30 s). A failover that
#: waited for something of the silent host would end with its return, and fail the bound.
SILENT_PRIMARY_FOR_S = SILENT_PRIMARY_BOUND_S + 2


#: from the promotion to follow_primary.sh's word on the failed node: pgpool's search for the new primary,
#: then one SSH try (its ConnectTimeout is 5 s)
FOLLOWED_WITHIN_S = 15


#: from its network's return to the watcher's fence: one SSH try a WATCH_EVERY_S, two questions, a clean stop
FENCED_WITHIN_S = failover_scripts.WATCH_EVERY_S + 10


#: from pgpool's verdict to the line failover.sh logs, which is where drill 3c reads the time (once
#: 13.2 s against the 13 s bound, with three test queues loading the machine)
SCRIPT_SLACK_S = 1


#: how long drill 3c keeps a standby's network down: past pgpool's verdict and its script's line by 2 s, so
#: that the verdict comes while nothing answers (21 s)
SILENT_FOR_S = SILENT_BOUND_S + SCRIPT_SLACK_S + 2


@dataclass
class Silence:
    """A host's network interface taken down for `seconds` from the host itself, through a transient
    systemd unit that brings it back though our SSH session to it stalls meanwhile. The unit waits a
    moment first (DELAY_S), so that the SSH command that starts it returns."""
    remote: Any
    seconds: float
    DELAY_S = 0.5
    failed = "/run/pgguide-drill-silence.failed"     # what the cut said, if it could not cut
    went_down = "/run/pgguide-drill-silence.at"      # when it cut, by the host's clock (this machine's, in the lab)

    @property
    def command(self) -> str:
        iface = shlex.quote(self.remote.params.options["interface"])
        cut = (f"sleep {self.DELAY_S}; ip link set {iface} down 2>{self.failed} || exit 1; date +%s.%N > {self.went_down}; "
               f"rm -f {self.failed}; sleep {self.seconds:.0f}; ip link set {iface} up")
        return f"systemd-run --quiet --collect --unit=pgguide-drill-silence sh -c {shlex.quote(cut)}"

    def began(self, asked_at: float) -> float:
        """When the interface went down (epoch seconds), once the host answers again; fails if it could not."""
        out = self.remote.run(f"cat {self.failed} 2>/dev/null; echo @@; cat {self.went_down} 2>/dev/null; "
                              f"rm -f {self.failed} {self.went_down}", user="root").stdout
        said, _, at = out.partition("@@")
        expect(not said.strip(), f"{self.remote.host.name} could not take its interface down: {said.strip()}",
               "the drill needs CAP_NET_ADMIN on the host (a container without it cannot change its own interfaces).")
        return float(at.strip() or asked_at)

    @property
    def ends_at_after(self) -> float:
        """Seconds from the command to the network's return."""
        return self.DELAY_S + self.seconds


def back_to_preferred(env) -> str:
    """When a drill left another server the primary (a silent primary's failover promotes the most
    advanced standby, which with two standbys is chance), a planned switchover back to the parameters'
    primary (lib.switchover): its transcript, or '' when nothing was needed."""
    preferred = env.params.primary.name
    if roles_now(env).get(preferred) == "primary":
        return ""
    return f"a planned switchover back to {preferred}:\n" + switchover.run(env, preferred)


def roles_line(env) -> str:
    """The roles as the parameters give them, or a failure naming what to do."""
    now = roles_now(env)
    wanted = {h.name: h.role for h in env.params.database_hosts}
    expect(now == wanted, f"the servers' roles are {now}, not {wanted}.",
           "a drill stopped half way: provision again (ci/provision rejoins a former primary) and switch back "
           "(ci/provision --switchover NAME), or provision a fresh lab; then run again.")
    return "roles: " + ", ".join(f"{n} {r}" for n, r in now.items())


def what_provisioning_says(env) -> str:
    """What --check and a provisioning run say while the roles are swapped (lib.clone_guard)."""
    swapped = clone_guard.roles_swapped(env)
    expect(swapped is not None, "the roles look as the parameters say, though a failover just swapped them.",
           "lib.clone_guard.roles_swapped must see the promoted standby.")
    return f"what `ci/provision --check` prints now:\ncheck FAILED: {swapped[0]}\n  Likely fix: {swapped[1]}"
