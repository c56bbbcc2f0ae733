"""Provisioning on the lab, checked from outside: a second run changes nothing, the
result is what the guide promises (read with plain psql on the hosts), and a broken step
stops with a message that says why. Runs before test_lab.py, which leaves a fresh lab."""
import json
import os
import subprocess

import pytest

from lib import REPO, replication
from lib import params as P
from lib.steps import Hosts, StepFailed

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")
PARAMS = P.load()
WATCHED = ["/etc/postgresql/15/main/postgresql.conf", "/etc/postgresql/15/main/pg_hba.conf",
           "/var/lib/postgresql/15/main/postgresql.auto.conf"]


def sh(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def on(host, command):
    return sh(str(REPO / "ci" / "lab"), "ssh", host, command)


POOL_FILES = ["/etc/pgpool2/pgpool.conf", "/etc/pgpool2/pool_hba.conf", "/etc/pgpool2/pool_passwd",
              "/etc/pgpool2/pcp.conf", "/var/lib/postgresql/.pgpoolkey", "/var/lib/postgresql/.pcppass"]


def snapshot():
    """sha256 of every file Parts 1 and 2 touch, row counts, and when each server started."""
    state = {}
    for host in ("vm1", "vm2"):
        state[host] = on(host, f"sudo sha256sum {' '.join(WATCHED)}; "
                               "sudo -u postgres psql -XAtc 'select count(*) from employees' testdb; "
                               "sudo -u postgres psql -XAtc 'select pg_postmaster_start_time()'")
    state["vm3"] = on("vm3", f"sudo sha256sum {' '.join(POOL_FILES)}; systemctl show -p MainPID pgpool2")
    return state


def provision():
    out = sh(str(REPO / "ci" / "provision"))
    return REPO / out.strip().splitlines()[-1].split("Executed notebooks: ")[1]


@pytest.fixture(scope="module")
def provisioned_twice():
    sh(str(REPO / "ci" / "lab"), "up")
    first_run = provision()
    before = snapshot()
    second_run = provision()
    return first_run, second_run, before, snapshot()


def outputs(record, notebook="01-streaming-replication.ipynb"):
    nb = json.loads((record / notebook).read_text())
    return "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_second_run_changes_no_file_no_row_and_restarts_nothing(provisioned_twice):
    _, _, before, after = provisioned_twice
    assert before == after
    assert before["vm1"].splitlines()[3] == "6"          # Alice, Bob, Charlie, David; Frank, Grace


def test_second_run_reports_everything_in_place(provisioned_twice):
    first, second, _, _ = provisioned_twice
    assert first != second
    text = outputs(second)
    for phrase in ("role replicator already in place", "postgresql.conf already as the guide wants it",
                   "pg_hba.conf already as the guide wants it", "no restart needed",
                   "already a standby streaming from vm1; steps 7-11 are skipped", "0 of the guide's 3 rows inserted"):
        assert phrase in text
    part2 = outputs(second, "02-pgpool.ipynb")
    for phrase in ("pgpool2 already installed", "role postgres already in place", "role pgpool already in place",
                   "pgpool.conf: already as the guide wants it", "pool_hba.conf already as the guide wants it",
                   "pool_passwd unchanged", "pcp already set up", "pgpool2 already running with this configuration",
                   "Frank already there"):
        assert phrase in part2
    for word in ("changed:", "restarted", "reloaded", "written", "inserted through"):
        assert word not in part2 and word not in text.replace("3 rows inserted", ""), word


def test_independent_check_with_psql_on_the_hosts(provisioned_twice):
    rows = on("vm1", "sudo -u postgres psql -XAtc \"select client_addr, state from pg_stat_replication\"")
    assert rows.split() == ["10.213.93.133|streaming"]
    assert on("vm2", "sudo -u postgres psql -XAtc 'select pg_is_in_recovery()'").strip() == "t"
    refused = subprocess.run([str(REPO / "ci" / "lab"), "ssh", "vm2",
                              "sudo -u postgres psql -XAtc \"insert into employees (name) values ('x')\" testdb"],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr
    for host in ("vm1", "vm2"):
        assert on(host, "sudo -u postgres psql -XAtc 'select name from employees order by id' testdb").split() == \
            ["Alice", "Bob", "Charlie", "David", "Frank", "Grace"]


def through_pgpool(sql, database="postgres"):
    """Plain psql against pgpool's port, from vm1 (inside pool_hba's client network)."""
    return sh(str(REPO / "ci" / "lab"), "ssh", "vm1",
              f"PGPASSWORD=postgres123 psql -XAt -h 10.213.93.134 -p 9999 -U postgres -d {database} -c \"{sql}\"")


def test_independent_check_through_pgpool(provisioned_twice):
    nodes = [line.split("|") for line in through_pgpool("SHOW pool_nodes").splitlines()]
    assert [(n[1], n[3], n[5], n[6]) for n in nodes] == [("10.213.93.132", "up", "0.333333", "primary"),
                                                         ("10.213.93.133", "up", "0.666667", "standby")]
    # a write (into a temporary table, so no data changes) runs on the primary, with the read after it
    assert through_pgpool("CREATE TEMP TABLE probe (x int); INSERT INTO probe VALUES (1); "
                          "SELECT inet_server_addr()").strip().splitlines()[-1] == "10.213.93.132"
    # reads are spread over both servers
    servers = {through_pgpool("SELECT inet_server_addr()").strip() for _ in range(30)}
    assert servers == {"10.213.93.132", "10.213.93.133"}
    scram = on("vm3", "sudo grep -c 'scram-sha-256' /etc/pgpool2/pool_hba.conf").strip()
    assert int(scram) >= 1


def test_no_secret_in_the_run_records(provisioned_twice):
    for record in provisioned_twice[:2]:
        for nb in record.glob("*.ipynb"):
            text = nb.read_text()
            for value in ("replica123", "postgres123", "pgpool123", "pgpool-lab-key"):
                assert value not in text, f"{nb.name} shows {value}"


def test_wrong_pool_passwd_entry_stops_with_the_reason(provisioned_twice):
    from lib import db, pgpool as pool
    from functools import partial

    env = Hosts(PARAMS)
    vm3 = env.pgpool
    try:
        pool.ensure_pool_passwd(vm3, {"postgres": "not-the-password"})
        pool.start_pgpool(vm3, changed=True)
        via_pgpool = partial(db.connect, PARAMS, vm3.host, user="postgres", password="postgres123", port=9999)
        with pytest.raises(AssertionError, match=r"(?s)pgpool refused the login.*pool_passwd.*"
                                                 r"auth_method scram-sha-256 must hold AES entries"):
            pool.wait_for_nodes(via_pgpool, PARAMS, timeout=20)
    finally:
        pool.ensure_pool_passwd(vm3, {"postgres": "postgres123"})
        pool.start_pgpool(vm3, changed=True)
        env.close()


def test_wrong_replication_password_stops_the_base_backup_with_the_reason(provisioned_twice):
    env = Hosts(PARAMS)
    standby = env.standby
    replication.stop_server(standby)
    replication.clear_data_directory(standby, env.primary)
    with pytest.raises(StepFailed, match=r"(?s)password authentication failed for user \"replicator\".*"
                                         r"a wrong replication password \(PGGUIDE_REPLICATION_PASSWORD\)"):
        replication.base_backup(standby, env.primary, "not-the-password")
    env.close()


def test_clearing_refuses_the_primary(provisioned_twice):
    env = Hosts(PARAMS)
    with pytest.raises(AssertionError, match="Refusing to clear the data directory: vm1 is the primary"):
        replication.clear_data_directory(env.primary, env.primary)
    assert on("vm1", "sudo -u postgres psql -XAtc 'select count(*) from employees' testdb").strip() == "6"
    env.close()
