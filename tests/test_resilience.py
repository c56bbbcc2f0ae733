"""One run at a time, bounded waits, and files that hold secrets kept private: on a provisioned
lab, each broken on purpose (issue "Nothing lost, nothing injected")."""
import os
import re
import shlex
import subprocess
import time

import pytest
import yaml

from lib import pgpool_host
from lib import params as P
from lib.lock import LOCK_DIR
from lib.remote import Remote, StepFailed
from lib.secrets import secret
from labtools import PARAMS_FILE, PROVISION, lab, netns, on, sh

pytestmark = [pytest.mark.lab, pytest.mark.second_lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]
KEY_FILE = "/var/lib/postgresql/.pgpoolkey"
PARAMS = P.load(PARAMS_FILE)
VM3 = PARAMS.pgpool_host.label          # "vm3 (pgpool, ADDRESS)"


def check():
    return sh(PROVISION, "--check", PARAMS_FILE, check=False)


@pytest.fixture(scope="module")
def provisioned():
    """The cluster the killed-runs drill converged (it runs first), else one provisioned here."""
    if lab("status", PARAMS_FILE, check=False).returncode != 0:
        lab("up", PARAMS_FILE)
    if check().returncode != 0:
        sh(PROVISION, PARAMS_FILE)


def test_a_secret_file_left_readable_is_reported_then_put_right_by_a_run_that_excludes_a_second(provisioned):
    on("vm3", f"sudo chmod 644 {KEY_FILE}")
    result = check()
    assert result.returncode == 1, result.stdout
    assert f"vm3 (root) $ chown postgres:postgres {KEY_FILE} && chmod 600 {KEY_FILE}" in result.stdout

    first = subprocess.Popen([str(PROVISION), str(PARAMS_FILE)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while "pid=" not in on("vm1", f"sudo cat {LOCK_DIR}/holder 2>/dev/null || true"):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lock"
            time.sleep(0.2)
        second = sh(PROVISION, PARAMS_FILE, check=False)
        out = second.stdout + second.stderr
        assert second.returncode == 1, out
        assert f"another run is changing this cluster: ci/provision_{PARAMS.environment} (machine " in out and f"holds {LOCK_DIR} on vm1" in out
        assert "[ 1/" not in out                            # refused before its first step
    finally:
        first_out, _ = first.communicate(timeout=600)
    assert first.returncode == 0 and "provision succeeded" in first_out, first_out
    assert on("vm3", f"sudo stat -c '%U:%G %a' {KEY_FILE}").strip() == "postgres:postgres 600"
    assert on("vm1", f"test -e {LOCK_DIR} && echo held || echo free").strip() == "free"
    assert check().returncode == 0


def frozen_params(tmp_path, command_timeout):
    data = P.read_file(PARAMS_FILE)
    data["ssh"]["command_timeout"] = command_timeout
    path = tmp_path / "bounded.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sshd_signal(host, signal):
    """SIGSTOP/SIGCONT every sshd of a lab host (from outside: its own sshd is what freezes)."""
    pids = sh("ip", "netns", "pids", netns(host)).split()
    sshd = [p for p in pids if open(f"/proc/{p}/comm").read().strip() == "sshd"]
    assert sshd, f"no sshd in {host}'s namespace"
    sh("kill", f"-{signal}", *sshd)


def test_a_frozen_host_fails_a_command_in_the_stated_bound_naming_it(provisioned, tmp_path):
    params = P.load(frozen_params(tmp_path, 3))
    vm3 = Remote(params, params.pgpool_host)
    vm3.run("true")                                  # connected before the freeze
    sshd_signal("vm3", "STOP")
    try:
        started = time.monotonic()
        with pytest.raises(StepFailed, match=re.escape(VM3) + r".*(stopped answering|did not finish).* 3 s"):
            vm3.run("true")
        assert time.monotonic() - started < 3 + 2
        check_run, check_took = timed(PROVISION, "--check", frozen_params(tmp_path, 3))
        run, took = timed(PROVISION, frozen_params(tmp_path, 3))
    finally:
        sshd_signal("vm3", "CONT")
        vm3.close()
    assert check_run.returncode == 1 and VM3 in check_run.stdout, check_run.stdout
    assert check_took < 30, f"--check took {check_took:.0f} s with vm3 frozen"
    out = run.stdout + run.stderr
    assert run.returncode == 1 and "provision FAILED in 00-environment" in out and VM3 in out, out
    assert took < 30, f"provisioning took {took:.0f} s to give up on frozen vm3"


def timed(*argv):
    started = time.monotonic()
    result = sh(*argv, check=False)
    return result, time.monotonic() - started


def test_a_host_whose_interface_is_down_stops_provisioning_before_any_change(provisioned, tmp_path):
    sh("ip", "-n", netns("vm3"), "link", "set", "ens33", "down")
    try:
        result, took = timed(PROVISION, frozen_params(tmp_path, 3))
        check_run, check_took = timed(PROVISION, "--check", frozen_params(tmp_path, 3))
    finally:
        sh("ip", "-n", netns("vm3"), "link", "set", "ens33", "up")
        # cut off from its backends, pgpool marked them down and remembers it (pgpool_status): what
        # Part 2 leaves, and the failover issue makes heal by itself. Here, by hand, as Step 34's hint says.
        on("vm3", "sudo systemctl stop pgpool2 && sudo rm -f /var/log/postgresql/pgpool_status && "
                  "sudo systemctl start pgpool2")
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "provision FAILED in 00-environment" in out, out
    assert f"{VM3}: cannot reach SSH port 22" in out, out
    assert took < 30, f"provisioning took {took:.0f} s to give up on vm3"
    assert check_run.returncode == 1 and f"{VM3}: cannot reach SSH port 22" in check_run.stdout, check_run.stdout
    assert check_took < 30, f"--check took {check_took:.0f} s to give up on vm3"


#: on the pgpool host, as root: N restarts of pgpool, each with four sessions in flight; prints
#: each restart that took over 5 s (or failed) and a last line "slow: K of N"
RESTARTS = r"""
n=$1; slow=0
for i in $(seq $n); do
  for j in 1 2 3 4; do (runuser -u postgres -- psql -X -p 9999 -d postgres -Atc 'select pg_sleep(0.3)' >/dev/null 2>&1 &); done
  sleep 0.2
  systemctl reset-failed pgpool2 2>/dev/null; s=$(date +%s%N)
  timeout 40 systemctl restart pgpool2; rc=$?; ms=$(( ($(date +%s%N) - s) / 1000000 ))
  if [ $rc -ne 0 ] || [ $ms -gt 5000 ]; then
    slow=$((slow + 1)); echo "restart $i: $ms ms, exit $rc"
    ps -eo pid,stat,wchan:20,cmd --forest | grep pgpoo[l] | grep -v 'wait for connection'
    systemctl reset-failed pgpool2; systemctl start pgpool2
  fi
  for k in $(seq 50); do runuser -u postgres -- psql -X -p 9999 -d postgres -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
done
echo "slow: $slow of $n"
"""


def test_pgpool_restarts_a_hundred_times_under_sessions_each_within_the_stop_bound(provisioned):
    """With the packaged unit (every process signalled at once) about 1 in 80 restarts hung for the
    whole 90 s stop timeout; Step 33's drop-in has the main process stop its children, which leaves
    about 1 in 800 (measured), and bounds the stop at 10 s. A restart that is not done within that
    bound plus 5 s, or fails, or leaves pgpool not serving, fails this; at the packaged unit's rate,
    100 restarts catch it 4 times in 5."""
    assert sorted(on("vm3", "systemctl show -p KillMode -p TimeoutStopUSec pgpool2").split()) == \
        ["KillMode=mixed", f"TimeoutStopUSec={pgpool_host.STOP_TIMEOUT_S}s"]
    # pgpool's local socket asks for a password like any other line (Step 31): on stdin, not in argv
    password = shlex.quote(secret("postgres", P.load(PARAMS_FILE)))
    out = on("vm3", "sudo bash -s 100",
             input=f"export PGPASSWORD={password}\n" + RESTARTS)
    slow = re.findall(r"^restart \d+: (\d+) ms, exit (\d+)$", out, re.M)
    assert all(int(ms) <= (pgpool_host.STOP_TIMEOUT_S + 5) * 1000 and rc == "0" for ms, rc in slow), out
    assert out.strip().splitlines()[-1].startswith("slow: "), out
