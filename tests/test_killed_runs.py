"""kill -9 of ci/provision at five points, on a fresh lab: each run after a kill passes the point
where the one before died, the last run completes, and the cluster then matches the guide.

The points are reached on purpose, with wrappers put on the hosts for the drill only:
- mid-write: a `cat` that, writing into the named file's temporary copy, keeps the first 200
  bytes and stops there (as a lost connection would end its input), then waits to be killed;
- mid-base-backup: a `pg_basebackup` held to 256 kB/s, so that the run dies while it copies.
After every kill: each configuration file is whole and keeps Debian's include_dir line, and no
row is lost.
"""
import os
import signal
import subprocess
import time

import pytest

from labtools import PARAMS_FILE, PROVISION, lab, on, sh

pytestmark = [pytest.mark.lab, pytest.mark.second_lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]

CONF = "/etc/postgresql/15/main/postgresql.conf"
HBA = "/etc/postgresql/15/main/pg_hba.conf"
POOL_CONF = "/etc/pgpool2/pgpool.conf"
DATA = "/var/lib/postgresql/15/main"
REACHED = "/run/pgguide-drill-reached"

CUT_WRITE = r"""#!/bin/bash
# drill only: a write into a temporary copy of the file named in /run/pgguide-drill-cut is cut short
out=$(readlink /proc/$$/fd/1)
if [ -f /run/pgguide-drill-cut ] && [[ "$out" == "$(/usr/bin/cat /run/pgguide-drill-cut)".* ]]; then
  /usr/bin/head -c 200; touch /run/pgguide-drill-reached; sleep 3; exit 0
fi
exec /usr/bin/cat "$@"
"""
SLOW_BACKUP = """#!/bin/bash
# drill only: a base backup slow enough to be killed half-way
exec /usr/bin/pg_basebackup --max-rate=256k "$@"
"""


def put(host, path, text):
    on(host, f"sudo tee {path} >/dev/null <<'EOF'\n{text}EOF\nsudo chmod 755 {path}")


def start_run():
    return subprocess.Popen([str(PROVISION), str(PARAMS_FILE)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_when(run, host, condition, what, timeout=120):
    deadline = time.monotonic() + timeout
    while on(host, f"{condition} && echo yes || echo no").strip() != "yes":
        assert run.poll() is None, f"the run ended before {what}:\n{run.stdout.read()}"
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.2)
    for pid in [run.pid, *descendants(run.pid)]:     # ci/provision and its notebook kernel, at once
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.wait()


def descendants(pid):
    children = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                ppid = int(open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(stat))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cut_write_of(host, path):
    put(host, "/usr/local/bin/cat", CUT_WRITE)
    on(host, f"echo {path} | sudo tee /run/pgguide-drill-cut >/dev/null; sudo rm -f {REACHED}")


def remove_wrappers():
    for host in ("vm1", "vm2", "vm3"):
        on(host, f"sudo rm -f /usr/local/bin/cat /usr/local/bin/pg_basebackup /run/pgguide-drill-cut {REACHED}")


def assert_whole():
    """Every configuration file parses as the server reads it, Debian's include_dir line is kept,
    and no row is lost."""
    for host in ("vm1", "vm2"):
        conf = on(host, f"sudo cat {CONF}")
        assert "include_dir = 'conf.d'" in conf, f"{host}: {CONF} lost its include_dir line"
        assert "#pgguide: end of text" not in conf
        on(host, f"sudo -u postgres /usr/lib/postgresql/15/bin/postgres -C data_directory "
                 f"-c config_file={CONF} >/dev/null")                  # parses, or exits non-zero
    if on("vm3", f"test -f {POOL_CONF} && echo yes || echo no").strip() == "yes":
        assert "backend_clustering_mode" in on("vm3", f"sudo cat {POOL_CONF}")
    rows = on("vm1", "sudo -u postgres psql -XAtc 'select count(*) from employees' testdb 2>/dev/null || echo 0")
    return int(rows.strip() or 0)


@pytest.fixture
def drill_wrappers():
    yield
    remove_wrappers()       # whatever happened: the lab's tools are its own again


def test_five_kills_then_a_run_that_converges(drill_wrappers):
    lab("up", PARAMS_FILE)
    rows = assert_whole()
    points = [
        ("mid-write of postgresql.conf (Step 2)", "vm1", lambda: cut_write_of("vm1", CONF), f"test -f {REACHED}"),
        ("mid-write of pg_hba.conf (Step 3)", "vm1", lambda: cut_write_of("vm1", HBA), f"test -f {REACHED}"),
        ("after the standby was stopped for cloning (Step 7)", "vm2", lambda: None,
         f"test -f {DATA}.cloning"),
        ("mid-pg_basebackup (Step 9)", "vm2", lambda: put("vm2", "/usr/local/bin/pg_basebackup", SLOW_BACKUP),
         f"sudo test -d {DATA}/base -a ! -f {DATA}/global/pg_control"),
        ("mid-write of pgpool.conf (Step 30)", "vm3", lambda: cut_write_of("vm3", POOL_CONF), f"test -f {REACHED}"),
    ]
    for what, host, arm, reached in points:
        arm()
        kill_when(start_run(), host, reached, what)
        # the host goes on after the kill: let the cut write end, and its script decide
        target = on(host, "cat /run/pgguide-drill-cut 2>/dev/null || true").strip()
        if target:
            deadline = time.monotonic() + 20
            while on(host, f"ls {target}.?????? 2>/dev/null || true").strip():
                assert time.monotonic() < deadline, f"the cut write into {target} never ended"
                time.sleep(0.3)
        remove_wrappers()
        after = assert_whole()
        assert after >= rows, f"rows lost after the kill {what}: {rows} -> {after}"
        rows = after
        if what.startswith("mid-pg_basebackup"):
            assert "pg_basebackup" in on("vm2", "pgrep -a pg_basebackup || true"), \
                "the killed run's base backup should still be running on vm2: the next run must stop it"
    # the last kill left pgpool.conf as it was: the next run passes every point and completes
    out = sh(PROVISION, PARAMS_FILE)
    assert "provision succeeded" in out
    assert "pg_basebackup" not in on("vm2", "pgrep -a pg_basebackup || true")
    assert assert_whole() >= rows
    check = sh(PROVISION, "--check", PARAMS_FILE, check=False)
    assert check.returncode == 0, check.stdout
    leftover = on("vm1", "sudo ls /etc/postgresql/15/main/ /var/lib/postgresql/15/") + on("vm3", "sudo ls /etc/pgpool2")
    assert ".cloning" not in leftover
