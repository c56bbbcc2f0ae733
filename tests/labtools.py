"""What the lab tests share: the commands a user runs (ci/lab, ci/provision, ssh to a host), each
failing with its output when it exits non-zero."""
import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib import REPO

LAB = REPO / "ci" / "lab"
PROVISION = REPO / "ci" / "provision"
#: the lab these tests use: params/lab.yaml, or (the drills, which ci/test runs beside the
#: other lab tests) the file in PGGUIDE_TEST_PARAMS
PARAMS_FILE = Path(os.environ.get("PGGUIDE_TEST_PARAMS") or REPO / "params" / "lab.yaml").resolve()


def netns(host: str) -> str:
    """The network namespace of a host of that lab (ci/labctl names it LAB-HOST)."""
    from lib import params as P
    return f"{P.load(PARAMS_FILE).lab['name']}-{host}"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")


def sh(*argv, check=True, env=None, timeout=900, input=None):
    """Run a command; its stdout when check (it must exit 0), else the CompletedProcess."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, input=input,
                          env={**os.environ, **(env or {})})
    assert not check or proc.returncode == 0, \
        f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout if check else proc


def lab(*args, check=True):
    """ci/lab ARGS, as a CompletedProcess."""
    proc = sh(LAB, *args, check=False, timeout=300)
    assert not check or proc.returncode == 0, \
        f"ci/lab {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@functools.lru_cache(maxsize=32)
def _loaded(params: str, mtime: float):
    from lib import params as P
    return P.load(params)


def ssh_argv(host, params=PARAMS_FILE) -> list[str]:
    """ssh to a host (its name or role, or a params Host) of the lab `params` names, as its admin user: what
    `ci/lab ssh` runs, without its start (bootstrap and a Python, about 0.4 s of CPU; the lab tests log in
    hundreds of times). Refused, as there, unless the lab's bridge routes the address."""
    from lib import hosts
    params = str(Path(params).resolve())
    prm = _loaded(params, os.stat(params).st_mtime)
    found = prm.host(getattr(host, "name", host))
    hosts.require_lab_route(prm, found)
    return hosts.openssh_argv(prm, found)


def on(host, command, *, params=PARAMS_FILE, check=True, input=None):
    """A command on a host (its name, or a params Host) of the lab `params` names, as its admin user:
    its stdout, or with check=False the CompletedProcess."""
    return sh(*ssh_argv(host, params), command, check=check, timeout=300, input=input)


def psql(host, sql, database="postgres", *, params=PARAMS_FILE):
    """A query as postgres over the host's local socket: its rows, unaligned."""
    return on(host, f"sudo -u postgres psql -XAtc {json.dumps(sql)} {database}", params=params).strip()


def variant(tmp_path, name, change, base=PARAMS_FILE):
    """A parameter file like `base`, named `name` (its environment), changed by `change(data)`."""
    from lib import params as P
    data = copy.deepcopy(P.read_file(base))
    data["environment"] = name
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_drills(params, out: Path) -> str:
    """Notebook 04 run with papermill on the lab of `params`: the text its cells printed."""
    sh(sys.executable, "-m", "papermill", REPO / "notebooks" / "04-failover-drills.ipynb", out,
       "-f", params, "--cwd", REPO / "notebooks", timeout=900)
    return "\n".join("".join(o.get("text", "")) for c in json.loads(out.read_text())["cells"]
                     if c["cell_type"] == "code" for o in c.get("outputs", []))


def stalled_health_check(params, stall_s: int = 6, guard: bool = False) -> dict:
    """pgpool's health check of a standby whose new sessions stall right after they log in
    (post_auth_delay, for `stall_s` seconds): whether that node's health check waits in a read a second
    before the stall ends (as drill 3c asks), pgpool's log lines until then and until 3 s after the
    stall, and the failover log's. The guard beside pgpool (lib.health_check_guard) is paused meanwhile
    unless `guard`."""
    import time
    from lib import health_check_guard, params as P, pgpool_host
    from lib.remote import Hosts
    prm = P.load(params)
    standbys = [h for h in prm.database_hosts if psql(h, "SELECT pg_is_in_recovery()", params=params) == "t"]
    assert standbys, f"no server of {params} is a standby: provision the lab first"
    standby, vm3 = standbys[0], prm.pgpool_host
    conf = on(vm3, "sudo cat /etc/pgpool2/pgpool.conf", params=params)
    node = next(int(line.split("=")[0].strip()[len("backend_hostname"):]) for line in conf.splitlines()
                if line.startswith("backend_hostname") and f"'{standby.address}'" in line)
    logs = {"log": "/var/log/pgpool2/pgpool.log", "failover log": "/var/log/pgpool2/failover.log"}
    sizes = {name: int(on(vm3, f"sudo stat -c %s {path}", params=params)) for name, path in logs.items()}

    def logged():
        return {name: on(vm3, f"sudo tail -c +{sizes[name] + 1} {path}", params=params) for name, path in logs.items()}
    paused = not guard
    if paused:
        on(vm3, f"sudo systemctl stop {health_check_guard.UNIT}", params=params)
    # One session sets the delay and ends it: a session opened meanwhile, ours too, would wait. The setting
    # lasts until the next reload, whose signal also wakes the sessions that wait (ending the stall).
    stall = " -c ".join(json.dumps(sql) for sql in (
        "ALTER SYSTEM SET post_auth_delay = 60", "SELECT pg_reload_conf()", "SELECT pg_sleep(1)",
        "ALTER SYSTEM RESET post_auth_delay", f"SELECT pg_sleep({stall_s - 1})", "SELECT pg_reload_conf()"))
    began = time.monotonic()
    try:
        with subprocess.Popen([*ssh_argv(standby, params), f"sudo -u postgres psql -XAtq -c {stall}"],
                              stdout=subprocess.DEVNULL) as session:
            time.sleep(stall_s - 1)              # a health check (every 2 s) began within the first second
            in_a_read = pgpool_host.health_check_in_a_read(Hosts(prm, read_only=True), node)
            before_the_end = logged()
            assert session.wait(timeout=60) == 0
    finally:
        if paused:
            on(vm3, f"sudo systemctl start {health_check_guard.UNIT}", params=params)
    time.sleep(max(0.0, began + stall_s + 3 - time.monotonic()))
    after = logged()
    return {"node": node, "standby": standby.name, "in a read": in_a_read, "log before the end": before_the_end["log"],
            "log": after["log"], "failover log": after["failover log"]}
