"""A guard beside pgpool: it ends a health check held in a read beyond health_check_timeout, and pgpool
starts a new one at once.

Why: health_check_timeout is an alarm, and pgpool does not always let it end a read. Its TLS read
(pool_ssl_read; pgpool 4.3 and 4.6 measured) retries the read the alarm interrupted, and so does 4.6's plain
read (4.6.1, Debian 13, measured); only 4.3 without TLS (Debian 12) was seen to end it. A check that is
reading when its server's host dies waits until TCP gives up, which it never does when nothing of ours is
unacknowledged: that server is never detached (book/failover.md; tests pin pgpool's behaviour in
test_guide_variants.py and test_debian13.py). The guard runs on every pgpool host, since where pgpool's
alarm ends the read it never acts, and a pgpool upgrade then needs nothing of ours. It looks once a second
at each health check process's kernel wait channel; one seen in a read for longer than the timeout has met
that retry, since the alarm would have ended any other read. It is ended with SIGTERM (pgpool's health
check exits on it, and the main process starts another), and the new check's connect is bounded again.
The verdict then comes at most the guard's limit later than the settings' 'silent' bound
(pgpool_host.detection_bounds)."""
from __future__ import annotations

from lib import facts, ops, postgres
from lib.failover_scripts import FAILOVER_LOG
from lib.pgpool_host import HEALTH_CHECK, IN_A_READ
from lib.show import expect, prompt

UNIT = "pgguide-health-check-guard"
SCRIPT_PATH = "/usr/local/lib/pgguide/pgpool-health-check-guard"
UNIT_PATH = f"/etc/systemd/system/{UNIT}.service"


def limit_s(settings: dict = HEALTH_CHECK) -> int:
    """Seconds a check may be seen in one read: past pgpool's own timeout, by one sample."""
    return settings["health_check_timeout"] + 1


def added_s() -> int:
    """What the guard adds, at worst, to the 'silent' detection bound: a check held from the silence's
    start is ended after limit_s() and one more sample; then the bound runs from there."""
    return limit_s() + 1


SCRIPT = f"""\
#!/bin/bash
# Written by pgguide (lib/health_check_guard.py). pgpool's health check can wait in a read beyond
# health_check_timeout (with TLS; on 4.6 without it too); this ends such a check, and pgpool starts another.
# Usage: pgpool-health-check-guard SECONDS LOG   (a check seen in a read for more than SECONDS is ended)
set -u
limit=${{1:?seconds}} log=${{2:?log file}}
proc=${{GUARD_PROC:-/proc}} every=${{GUARD_EVERY:-1}} rounds=${{GUARD_ROUNDS:-0}}
declare -A held=()
round=0
while [ "$rounds" -eq 0 ] || [ "$round" -lt "$rounds" ]; do
  round=$((round + 1))
  sleep "$every"
  declare -A now=()
  for pid in $(pgrep -f '^pgpool: health check process'); do
    [ "$(cat "$proc/$pid/wchan" 2>/dev/null)" = {IN_A_READ} ] || continue
    now[$pid]=$(( ${{held[$pid]:-0}} + 1 ))
    if [ "${{now[$pid]}}" -gt "$limit" ]; then
      printf '%s health check process %s held in a read for %s s, beyond health_check_timeout: ended\\n' \\
        "$(date +%s.%N)" "$pid" "${{now[$pid]}}" >> "$log"
      kill -TERM "$pid" 2>/dev/null
      unset "now[$pid]"
    fi
  done
  held=()
  for pid in "${{!now[@]}}"; do held[$pid]=${{now[$pid]}}; done
  unset now
done
"""


def unit(params) -> str:
    service = params.pgpool["service"]
    return f"""\
# Written by pgguide (lib/health_check_guard.py)
[Unit]
Description=End a pgpool health check held in a read beyond its timeout
After={service}.service
PartOf={service}.service

[Service]
User=postgres
ExecStart={SCRIPT_PATH} {limit_s()} {FAILOVER_LOG}
Restart=always

[Install]
WantedBy={service}.service
"""


#: whether the guard runs and starts with pgpool: what Step 33 plans from, and shows as its evidence
STATE = facts.unit_state(UNIT)


def plan(step: ops.Step, env) -> bool:
    """The guard's script and unit on the pgpool host, enabled and running. True when a unit file changed
    (systemd must read it again)."""
    vm3 = env.pgpool
    wrote = postgres.ensure_file(step, vm3, SCRIPT_PATH, SCRIPT, owner="root:root", mode="755", make_dir=True)
    unit_changed = postgres.ensure_file(step, vm3, UNIT_PATH, unit(env.params), owner="root:root", mode="644")
    state = vm3.facts.get(STATE).lines
    if wrote or unit_changed or state != ["active", "enabled"]:
        step.notify(ops.Command(vm3, "root", f"systemctl enable {UNIT} 2>&1 | grep -v '^Created symlink' || true; "
                                             f"systemctl restart {UNIT}", shown=f"systemctl enable {UNIT}; systemctl restart {UNIT}",
                                summary=f"{UNIT} runs beside pgpool"))
    else:
        step.note(vm3, f"{UNIT} runs beside pgpool")
    return unit_changed


def evidence(env) -> list[str]:
    """The guard's state under Step 33, as a reader sees it; fails unless it runs and starts with pgpool."""
    state = env.pgpool.facts.read(STATE).lines
    expect(state == ["active", "enabled"], f"{UNIT} on {env.pgpool.host.name} is {' '.join(state)}: a health check "
           "held in a read would not be ended.", f"read `journalctl -u {UNIT}` there, and provision again")
    return [f"{prompt(env.pgpool, 'root')}{STATE.command()}", *state]
