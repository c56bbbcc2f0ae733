"""The built-in lab, checked from outside as a user would: ci/lab, ssh, ip, mount.

Runs as root (ci/test). The last test leaves a fresh lab up for the notebooks."""
import copy
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from lib import REPO, facts, hosts
from lib import params as P
from lib.remote import Remote, StepFailed
from labtools import lab, on

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]
LAB_CMD = str(REPO / "ci" / "lab")
PARAMS = P.load()


def leftovers(name="pglab"):
    found = [l for l in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
             if name in l]
    found += [l for l in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
              if name in l]
    found += [l for l in Path("/proc/self/mounts").read_text().splitlines() if f"pgpool-guide-lab/labs/{name}/" in l]
    found += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{name}")] + \
             [str(p) for p in Path("/sys/fs/cgroup").glob(name)]
    found += subprocess.run(["pgrep", "-af", f"machine={name}-"], capture_output=True, text=True).stdout.splitlines()
    return found


@pytest.fixture(scope="module", autouse=True)
def fresh_lab():
    lab("up")


@pytest.mark.parametrize("host", PARAMS.all_hosts, ids=lambda h: h.name)
def test_each_host_is_a_booted_host_of_its_own(host):
    out = on(host.name, f"hostname; systemctl is-system-running; ip -4 -o addr show {PARAMS.options['interface']}")
    name, state, addr = out.splitlines()
    assert name == host.name and state == "running"
    assert f"inet {host.address}/24" in addr


def test_hosts_have_their_own_identity():
    ids = {on(h.name, "cat /etc/machine-id") for h in PARAMS.all_hosts}
    keys = {on(h.name, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] for h in PARAMS.all_hosts}
    assert len(ids) == len(keys) == 3


@pytest.mark.parametrize("host", PARAMS.database_hosts, ids=lambda h: h.name)
def test_database_hosts_start_with_postgresql_online(host):
    assert on(host.name, "sudo -i -u postgres psql -Atc 'select version()'").startswith("PostgreSQL 15.")


def test_pgpool_host_starts_bare():
    assert on("vm3", "dpkg-query -W -f='${Status}' pgpool2 postgresql-15 2>&1 || true").count("install ok") == 0


def test_hosts_have_no_way_out():
    for h in PARAMS.all_hosts:
        assert "default" not in on(h.name, "ip route")


def test_wrong_ssh_key_is_a_clear_error(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    data = copy.deepcopy(PARAMS.raw)
    data["ssh"]["key_file"] = str(tmp_path / "k")
    with pytest.raises(hosts.HostUnreachable, match="SSH as labadmin failed.*is a key that labadmin accepts"):
        hosts.connect(P.validate(data), PARAMS.primary)


def test_changed_host_key_is_refused(tmp_path):
    other = on("vm2", "cat /etc/ssh/ssh_host_ed25519_key.pub").split()
    (tmp_path / "kh").write_text(f"{PARAMS.primary.address} {other[0]} {other[1]}\n")
    data = copy.deepcopy(PARAMS.raw)
    data["ssh"]["known_hosts"] = str(tmp_path / "kh")
    with pytest.raises(hosts.HostUnreachable, match="does not match"):
        hosts.connect(P.validate(data), PARAMS.primary)


def test_unreachable_host_is_a_clear_error():
    data = copy.deepcopy(PARAMS.raw)
    data["hosts"]["pgpool"]["address"] = "10.213.93.200"     # in the lab's subnet, no host there
    prm = P.validate(data)
    start = time.monotonic()
    with pytest.raises(hosts.HostUnreachable, match=r"vm3 \(pgpool, 10.213.93.200\): cannot reach SSH port 22"):
        hosts.connect(prm, prm.pgpool_host)
    assert time.monotonic() - start < 10


def test_lab_addresses_are_refused_when_the_lab_is_not_behind_them():
    data = copy.deepcopy(PARAMS.raw)
    data["lab"]["name"] = "nolab"
    with pytest.raises(hosts.HostUnreachable, match="the lab is not up"):
        hosts.connect(P.validate(data), PARAMS.primary)


def test_steps_report_host_command_and_stderr():
    r = Remote(PARAMS, PARAMS.standbys[0])
    with pytest.raises(StepFailed, match=r"(?s)vm2 \(standby, 10.213.93.133\): `ls /nonexistent` as root exited 2"
                                         r"\nstderr: ls: cannot access '/nonexistent'"):
        r.sudo("ls /nonexistent")
    assert r.postgres("id -un").stdout.strip() == "postgres"
    assert r.psql("select 6 * 7").stdout.strip() == "42"
    r.close()


def test_the_queries_a_batch_asks_in_one_psql_session_answer_as_each_alone_would():
    """lib.facts runs the queries of one database in one psql session: each answer, failure and error is
    what the query alone gives, and the session cannot write."""
    r = Remote(PARAMS, PARAMS.primary)
    try:
        asked = [facts.SqlFact("SELECT 6 * 7"), facts.SqlFact("SELECT nope"), facts.SqlFact("SELECT 1 WHERE false"),
                 facts.SqlFact("SELECT 'a|b', 3"), facts.SqlFact("CREATE TABLE written ()"),
                 facts.SqlFact("SELECT 1", "nodb"), facts.SqlFact("SELECT current_database()")]
        assert len(facts._units(asked)) == 2                             # postgres, nodb
        r.facts.prefetch(asked)
        got = [r.facts.get(q) for q in asked]
        assert got[0] == facts.Rows(True, (("42",),)) and got[2] == facts.Rows(True, ())
        assert not got[1].ok and got[1].error == 'column "nope" does not exist'
        assert got[3] == facts.Rows(True, (("a", "b", "3"),))          # a | in a value splits, as psql -A prints it
        assert not got[4].ok and "read-only transaction" in got[4].error
        assert not got[5].ok and 'database "nodb" does not exist' in got[5].error
        assert got[6] == facts.Rows(True, (("postgres",),))
    finally:
        r.close()


def test_sudo_that_asks_for_a_password(monkeypatch):
    """As on the guide's Ubuntu VMs: sudo wants the user's password, taken from
    PGGUIDE_SUDO_PASSWORD; commands that read stdin (psql) still get theirs."""
    Remote(PARAMS, PARAMS.primary).sudo(
        "echo 'labadmin:pw-for-test' | chpasswd && echo 'labadmin ALL=(ALL:ALL) ALL' > /etc/sudoers.d/lab-admin")
    try:
        monkeypatch.delenv("PGGUIDE_SUDO_PASSWORD", raising=False)
        with pytest.raises(StepFailed, match="sudo asks labadmin for a password.*Set PGGUIDE_SUDO_PASSWORD"):
            Remote(PARAMS, PARAMS.primary).sudo("true")
        monkeypatch.setenv("PGGUIDE_SUDO_PASSWORD", "wrong-password")
        with pytest.raises(StepFailed, match="the sudo password in PGGUIDE_SUDO_PASSWORD is wrong"):
            Remote(PARAMS, PARAMS.primary).sudo("true")
        monkeypatch.setenv("PGGUIDE_SUDO_PASSWORD", "pw-for-test")
        r = Remote(PARAMS, PARAMS.primary)
        assert r.sudo("id -un").stdout.strip() == "root"
        assert r.psql("select 'stdin reached psql'").stdout.strip() == "stdin reached psql"
        # sudo that would not ask, for postgres only: the password must still not reach psql (it would run
        # it as SQL, and the server would log the syntax error with the password in it)
        Remote(PARAMS, PARAMS.primary).sudo("echo 'labadmin ALL=(postgres) NOPASSWD: ALL' >> /etc/sudoers.d/lab-admin")
        r = Remote(PARAMS, PARAMS.primary)
        assert r.psql("select 'only the SQL reached psql'").stdout.strip() == "only the SQL reached psql"
        log = r.sudo(f"cat {PARAMS.postgres['log_file']}").stdout
        assert "pw-for-test" not in log
    finally:
        monkeypatch.setenv("PGGUIDE_SUDO_PASSWORD", "pw-for-test")
        Remote(PARAMS, PARAMS.primary).sudo(
            "echo 'labadmin ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/lab-admin")
    assert on("vm1", "sudo -n true && echo restored").strip() == "restored"


def test_apt_installs_pgpool2_on_vm3():
    out = on("vm3", "sudo apt-get update -q >/dev/null && sudo apt-get install -y -q pgpool2 >/dev/null 2>&1;"
                    " /usr/sbin/pgpool --version 2>&1")
    assert out.startswith("pgpool-II version 4.3")


def test_down_twice_leaves_nothing():
    first, second = lab("down"), lab("down")
    assert "nothing of the lab is left" in first.stdout and "nothing of the lab is left" in second.stdout
    assert leftovers() == []


def test_a_second_lab_on_another_subnet_lives_beside_the_first(tmp_path):
    data = copy.deepcopy(PARAMS.raw)
    data["lab"].update(name="altlab", subnet="10.213.95.0/24", gateway="10.213.95.1")
    data["ssh"]["known_hosts"] = str(tmp_path / "alt_known_hosts")
    for h, last in zip([data["hosts"]["primary"], *data["hosts"]["standbys"], data["hosts"]["pgpool"]], (11, 12, 13)):
        h["address"] = f"10.213.95.{last}"
    alt = tmp_path / "alt.yaml"
    alt.write_text(yaml.safe_dump(data))
    lab("up")
    try:
        lab("up", str(alt))
        out = subprocess.run([LAB_CMD, "ssh", "--params", str(alt), "vm3", "ip -4 -o addr show ens33"],
                             capture_output=True, text=True).stdout
        assert "inet 10.213.95.13/24" in out
        assert lab("status").returncode == 0, "ci/lab up of altlab took the default lab down"
        lab("up")                                        # and the default lab's up leaves altlab alone
        assert lab("status", str(alt)).returncode == 0, "ci/lab up took altlab down"
    finally:
        lab("down", str(alt))
    assert lab("status").returncode == 0, "ci/lab down of altlab took the default lab down"
    assert lab("status", str(alt), check=False).returncode != 0
    assert leftovers("altlab") == []


def test_up_twice_and_after_a_killed_run():
    lab("up")
    again = lab("up")
    assert "3 hosts running" in again.stdout
    killed = subprocess.Popen([LAB_CMD, "up"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    time.sleep(4)                          # clearing the earlier lab, then half-way into booting
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    final = lab("up")                      # leaves a fresh lab for the notebooks
    assert "3 hosts running" in final.stdout
    assert lab("status").returncode == 0
