"""The guard that ends a pgpool health check held in a TLS read (lib/health_check_guard.py), run here against
processes of this machine: a fake pgrep names them, a fake /proc gives their wait channels."""
import os
import subprocess
import time

import pytest

from lib import health_check_guard as guard
from lib import params as P
from tests.labtools import REPO


def run_guard(tmp_path, waits: dict[str, list[str]], rounds: int, limit: int = 2):
    """The guard for `rounds` rounds over sleeping processes of this machine: a fake pgrep names them, and a
    fake cat gives each one's wait channel at each of the guard's samples from `waits` (name -> one value
    per sample, the last one kept). Which of them it ended, and its log."""
    procs = {name: subprocess.Popen(["sleep", "30"]) for name in waits}
    proc, bin_dir, log = tmp_path / "proc", tmp_path / "bin", tmp_path / "failover.log"
    bin_dir.mkdir()
    fakes = {"pgrep": "".join(f"echo {p.pid}\n" for p in procs.values()),
             "cat": 'seq="$1.seq"; head -1 "$seq"; [ "$(wc -l < "$seq")" -gt 1 ] && sed -i 1d "$seq"; true\n'}
    for name, body in fakes.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    for name, p in procs.items():
        (proc / str(p.pid)).mkdir(parents=True)
        (proc / str(p.pid) / "wchan.seq").write_text("\n".join(waits[name]) + "\n")
    script = tmp_path / "guard"
    script.write_text(guard.SCRIPT)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GUARD_PROC": str(proc), "GUARD_EVERY": "0.01",
           "GUARD_ROUNDS": str(rounds)}
    try:
        assert subprocess.run(["bash", str(script), str(limit), str(log)], env=env, timeout=30).returncode == 0
        time.sleep(0.1)
        ended = {name for name, p in procs.items() if p.poll() is not None}
    finally:
        for p in procs.values():
            p.kill()
    return ended, log.read_text() if log.exists() else ""


def test_a_check_held_in_a_read_beyond_the_limit_is_ended_and_logged(tmp_path):
    ended, log = run_guard(tmp_path, {"held": ["wait_woken"], "asleep": ["hrtimer_nanosleep"]}, rounds=5)
    assert ended == {"held"}
    assert "held in a read for 3 s, beyond health_check_timeout: ended" in log


def test_reads_that_end_within_the_limit_are_left_alone(tmp_path):
    """A read that a sleep interrupts starts its count again: pgpool's own timeout ended it."""
    ended, log = run_guard(tmp_path, {"short reads": ["wait_woken", "wait_woken", "hrtimer_nanosleep",
                                                      "wait_woken", "wait_woken", "hrtimer_nanosleep"]}, rounds=6)
    assert ended == set() and log == ""


@pytest.mark.parametrize("shape", ["params/lab.yaml", "params/lab-debian13.yaml"])
def test_the_unit_runs_the_guard_beside_pgpool_as_postgres(shape):
    params = P.load(REPO / shape)
    text = guard.unit(params)
    service = params.pgpool["service"]
    assert f"PartOf={service}.service" in text and f"WantedBy={service}.service" in text and "User=postgres" in text
    assert f"ExecStart={guard.SCRIPT_PATH} {guard.limit_s()} /var/log/pgpool2/failover.log" in text
    assert guard.limit_s() == 4          # health_check_timeout 3 s (Step 30), and one sample more
