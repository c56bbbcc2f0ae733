"""Part 2 in its other shapes, each provisioned on the lab: the guide's own md5 way, and
other load-balancing weights. On the second lab (tests/data/lab-b.yaml), beside the other lab tests."""
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from lib import REPO, db
from lib import params as P
import labtools
from labtools import LAB, run_drills, sh, variant

pytestmark = [pytest.mark.lab, pytest.mark.second_lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]



def provisioned(params) -> Path:
    """ci/provision on the lab of `params`: the record of a run whose summary says it succeeded."""
    out = sh(REPO / "ci" / "provision", params)
    assert "provision succeeded" in out
    record = REPO / out.strip().splitlines()[-1].split("Record: ")[1]
    assert json.loads((record / "summary.json").read_text())["result"] == "succeeded"
    return record


def md5_at_weights(weights):
    def change(d):
        d["postgres"].update(auth_method="md5")
        d["hosts"]["primary"]["weight"], d["hosts"]["standbys"][0]["weight"] = weights
    return change


def assert_step_38_finds_the_share(record, weights):
    text = (record / "02-pgpool.ipynb").read_text()
    share = weights[1] / sum(weights)
    assert f"vm2: a share of {share:.3f}" in text and "within" in text and "OUTSIDE" not in text


@pytest.fixture(scope="module")
def md5_lab(tmp_path_factory):
    """The guide's own md5 way, with the standby weighted 1:3: one fresh lab shows both shapes."""
    params = variant(tmp_path_factory.mktemp("md5"), "lab-md5", md5_at_weights((1, 3)))
    sh(LAB, "up", params)
    return params, provisioned(params)


def test_md5_mode_does_what_the_guide_does(md5_lab):
    params, _ = md5_lab
    on = partial(labtools.on, params=params)
    # the check builds every step's plan: all empty, so a second run would change nothing
    assert "check passed" in sh(REPO / "ci" / "provision", "--check", params)
    hba = on("vm1", "sudo grep -v '^#' /etc/postgresql/15/main/pg_hba.conf")
    assert "scram-sha-256" not in hba and f"{P.load(params).pgpool_host.address}/32         md5" in hba
    assert on("vm1", "sudo -u postgres psql -XAtc \"select count(*) from pg_authid "
                     "where rolname in ('postgres','pgpool') and rolpassword like 'md5%'\"").strip() == "2"
    entries = on("vm3", "sudo cat /etc/pgpool2/pool_passwd").split()
    assert sorted(e.split(":")[0] for e in entries) == ["app", "pgpool", "postgres"]
    assert all(e.split(":")[1].startswith("md5") for e in entries)
    login = on("vm3", f"PGPASSWORD=postgres123 psql -XAt -h {P.load(params).pgpool_host.address} -p 9999 -U postgres "
                      "-c 'select current_user'")
    assert login.strip() == "postgres"


def test_load_balancing_check_passes_at_other_weights(md5_lab, tmp_path):
    params, record = md5_lab
    assert_step_38_finds_the_share(record, (1, 3))
    again = variant(tmp_path, "lab-w11", md5_at_weights((1, 1)))        # the same lab, reconfigured
    assert_step_38_finds_the_share(provisioned(again), (1, 1))


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """One lab provisioned in the careful shape: postgres.tls and postgres.synchronous."""
    params = variant(tmp_path_factory.mktemp("hardened"), "lab-hardened",
                     lambda d: d["postgres"].update(tls=True, synchronous=True))
    sh(LAB, "up", params)
    out = sh(REPO / "ci" / "provision", params)
    assert "provision succeeded" in out
    assert "check passed" in sh(REPO / "ci" / "provision", "--check", params)
    return params, out


def test_tls_everywhere_with_postgres_tls(hardened):
    """postgres.tls: hostssl lines, the standby's stream, pgpool to the servers and clients to
    pgpool all over TLS; a client without TLS is turned away."""
    params, out = hardened
    prm = P.load(params)

    on = partial(labtools.on, params=params)
    pool = prm.pgpool_host.address
    hba = [l.split() for l in on("vm1", "sudo grep -v '^#' /etc/postgresql/15/main/pg_hba.conf").splitlines() if l.strip()]
    assert ["hostssl", "replication", "replicator", f"{prm.standbys[0].address}/32", "scram-sha-256"] in hba
    assert ["hostssl", "all", "pgpool", f"{pool}/32", "scram-sha-256"] in hba
    assert not [l for l in hba if l[0] == "host" and l[3] in (f"{pool}/32", f"{prm.standbys[0].address}/32")], hba
    record = REPO / out.strip().splitlines()[-1].split("Record: ")[1]
    assert "client (this notebook)" in (record / "02-pgpool.ipynb").read_text()     # Step 34's TLS evidence
    sessions = "sudo -u postgres psql -XAtc \"SELECT replace(backend_type, ' ', '_') || ':' || ssl::text FROM " \
               "pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE client_addr IS NOT NULL\""
    # from the pgpool host: the superuser through pgpool only from there and pgpool.admin_clients (Step 31)
    with subprocess.Popen([*labtools.ssh_argv("vm3", params),          # a session through pgpool, held
                           f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=require' "
                           "-c 'select pg_sleep(3)'"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as held:
        time.sleep(1.5)
        primary, standby = on("vm1", sessions).split(), on("vm2", sessions).split()
        held.wait()
    assert "walsender:true" in primary and "client_backend:true" in primary, primary
    assert set(primary) == {"walsender:true", "client_backend:true"}, primary
    assert standby and set(standby) == {"client_backend:true"}, standby          # pgpool's connections
    tls = on("vm3", f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=require' -c '\\conninfo'")
    assert "SSL connection (protocol: TLSv1.3" in tls
    plain = subprocess.run([*labtools.ssh_argv("vm3", params),
                            f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=disable' "
                            "-c 'select 1'"], capture_output=True, text=True)
    assert plain.returncode != 0 and "pool_hba.conf" in plain.stderr, plain.stderr


@contextlib.contextmanager
def impostor(prm, host, cert: Path, key: Path, received: Path, port: int = 5433):
    """tests/impostor.py in `host`'s network namespace, on its address: a lab address, as an attacker who
    took it over would listen."""
    proc = subprocess.Popen(["ip", "netns", "exec", f"{prm.lab['name']}-{host.name}", sys.executable,
                             str(REPO / "tests" / "impostor.py"), str(cert), str(key), host.address, str(port),
                             str(received)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "listening"
        yield
    finally:
        proc.kill()
        proc.wait()


def test_pgpools_health_check_does_not_time_out_a_read_inside_tls(hardened):
    """With ssl = on, pgpool (4.3; 4.6 too, measured by hand) does not apply health_check_timeout to a read
    inside TLS: it retries the read its timer interrupted. A standby that stalls for 6 s after its login is
    neither tried again nor detached, and the check waits in a read meanwhile (where 4.3's plaintext one
    has timed out and retried: test_idempotence.py). So a silence that begins during a check goes
    unnoticed until the network returns, unless the guard of Step 33 (paused here) ends the check. If this
    fails, pgpool 4.3 has changed; 4.6 holds a plain read too (test_debian13.py)."""
    params, _ = hardened
    seen = labtools.stalled_health_check(params)
    n = seen["node"]
    assert seen["in a read"], seen
    assert f"retrying on DB node: {n}" not in seen["log before the end"], seen
    assert f"retrying on DB node: {n}" not in seen["log"] and f"degenerate backend request for node_id: {n}" not in seen["log"], seen



def test_the_guard_ends_a_health_check_held_in_a_tls_read(hardened):
    """Step 33 runs a guard beside pgpool (lib.health_check_guard): a health check held in a TLS read past
    health_check_timeout + 1 s is ended, logged in the failover log, and pgpool starts another."""
    params, _ = hardened
    seen = labtools.stalled_health_check(params, stall_s=9, guard=True)
    assert "held in a read for 5 s, beyond health_check_timeout: ended" in seen["failover log"], seen
    assert f"health check failed on node {seen['node']}" not in seen["log"], seen     # ended, not failed: no verdict

def test_an_impostor_on_the_primarys_address_gets_no_password(hardened, tmp_path):
    """With postgres.tls the standby's own primary_conninfo, and the notebook's connections, check who
    answers: a server at the primary's address with a certificate of its own (naming that address), or
    with another host's certificate from the trusted set, gets no password, and the connection fails
    naming the certificate. With the sslmode=require this project used before, the same server received it."""
    params, _ = hardened
    prm = P.load(params)
    primary, marker = prm.primary, "Marker-impostor-7c1"
    received = tmp_path / "received"

    def from_standby(conninfo: str) -> str:
        script = (f"export PGPASSWORD={marker}\n"
                  f"sudo -u postgres --preserve-env=PGPASSWORD psql -XAt \"{conninfo}\" -c 'select 1' 2>&1 || true\n")
        return labtools.on("vm2", "bash -s", params=params, input=script)

    standbys_own = labtools.on("vm2", "sudo -u postgres psql -XAtc 'SHOW primary_conninfo'", params=params).strip()
    assert "sslmode='verify-full'" in standbys_own and "channel_binding=require" in standbys_own, standbys_own
    to_impostor = standbys_own.replace(f"port={prm.postgres['port']}", "port=5433") + " dbname=postgres"
    own_cert, own_key = tmp_path / "impostor.crt", tmp_path / "impostor.key"
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
       "-subj", f"/CN={primary.name}", "-addext", f"subjectAltName=IP:{primary.address},DNS:{primary.name}",
       "-keyout", own_key, "-out", own_cert)
    standby_cert, standby_key = tmp_path / "vm2.crt", tmp_path / "vm2.key"      # trusted, but names vm2's address
    standby_cert.write_text(labtools.on("vm2", "sudo cat /etc/ssl/pgguide/server.crt", params=params))
    standby_key.write_text(labtools.on("vm2", "sudo cat /etc/ssl/pgguide/server.key", params=params))
    with impostor(prm, primary, own_cert, own_key, received):
        refused = from_standby(to_impostor)
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            db.connect(prm, primary, user="postgres", password=marker, port=5433)
        assert not received.exists(), received.read_text()
        assert "certificate verify failed" in refused, refused
        before = from_standby(f"host={primary.address} port=5433 user=replicator dbname=postgres sslmode=require")
        assert received.read_text() == marker + "\n", before     # what sslmode=require gave away
    received.unlink()
    with impostor(prm, primary, standby_cert, standby_key, received):
        refused = from_standby(to_impostor)
        assert "does not match host name" in refused, refused
        assert not received.exists()


def test_synchronous_mode_loses_no_acknowledged_row_in_any_drill(hardened, tmp_path):
    """postgres.synchronous: commits wait for the standby (Step 44); the drills notebook, run with
    papermill on that lab, must lose 0 acknowledged rows in every drill, the crash included, and
    end where it started, synchronous again."""
    params, _ = hardened

    on = partial(labtools.on, params=params)
    show = "sudo -u postgres psql -XAtc 'SHOW synchronous_standby_names'"
    assert on("vm1", show).strip() == 'ANY 1 ("vm1", "vm2")'
    assert on("vm1", "sudo -u postgres psql -XAtc 'SELECT sync_state FROM pg_stat_replication'").split() == ["quorum"]
    text = run_drills(params, tmp_path / "drills.ipynb")
    assert "commits are acknowledged once a standby has it too (synchronous)" in text
    assert len(re.findall(r"acknowledged rows lost \(counted on the primary, vm\d\): 0$", text, re.M)) == 6, text
    assert "only rows in flight" not in text
    assert text.count("promoted, with synchronous commit suspended") == 4     # each of the four promotions
    for host in ("vm1", "vm2"):                                        # resumed everywhere: nothing left in auto.conf
        assert on(host, show).strip() == 'ANY 1 ("vm1", "vm2")'
    assert "check passed" in sh(REPO / "ci" / "provision", "--check", params)


def test_provisioning_after_a_failover_heals_with_the_same_parameter_file(hardened):
    """The primary stops; failover.sh waits for its hand-over, promotes the standby and fences the old
    primary. --check says so and changes nothing. Provisioning with the unchanged file keeps the new
    primary and what it wrote, rejoins the old primary as its standby (the look first: after a clean
    hand-over it held nothing the new one lacks), and ends with every node up, synchronous again.
    --check then passes with the roles as they are, and a second run changes nothing."""
    params, _ = hardened

    on = partial(labtools.on, params=params)

    def psql(host, sql):
        return on(host, f"sudo -u postgres psql -XAtc \"{sql}\"").strip()
    if sh(REPO / "ci" / "provision", "--check", params, check=False).returncode != 0:
        sh(REPO / "ci" / "provision", params)        # a test before it stopped half way: start from the built lab
    try:
        on("vm1", "sudo systemctl stop postgresql")
        for _ in range(100):
            if psql("vm2", "SELECT pg_is_in_recovery()") == "f":
                break
            time.sleep(0.2)
        assert psql("vm2", "SELECT pg_is_in_recovery()") == "f", "pgpool did not promote vm2"
        psql("vm2", "CREATE TABLE written_after_failover AS SELECT 42 AS answer")
        identity = psql("vm2", "SELECT system_identifier FROM pg_control_system()")

        checked = sh(REPO / "ci" / "provision", "--check", params, check=False)
        assert checked.returncode != 0 and "vm2 runs as the primary: a failover promoted it" in checked.stdout \
            and "fenced by failover.sh" in checked.stdout, checked.stdout
        assert "down" in on("vm1", "pg_lsclusters --no-header 15 main")           # nothing was changed

        out = sh(REPO / "ci" / "provision", params)
        assert "heal: vm2 runs as the primary (a failover promoted it); the parameters prefer vm1. Keeping vm2, " \
               "rejoining vm1 as its standby:" in out, out
        assert "vm1: no commit past the switch point that vm2 lacks" in out and "provision succeeded" in out, out
        assert psql("vm2", "SELECT answer FROM written_after_failover") == "42"      # the new primary kept its writes
        assert psql("vm2", "SELECT system_identifier FROM pg_control_system()") == identity
        assert psql("vm1", "SELECT pg_is_in_recovery()") == "t"
        assert psql("vm2", "SELECT application_name || ':' || sync_state FROM pg_stat_replication") == "vm1:quorum"
        assert on("vm1", "test -e /var/lib/postgresql/15/main.fenced && echo fenced || echo free").strip() == "free"
        nodes = on("vm3", "sudo -u postgres pcp_node_info -h localhost -p 9898 -U pgpool -w")
        assert [line.split()[4] for line in nodes.splitlines()] in (["up", "up"], ["up", "waiting"],
                                                                   ["waiting", "up"], ["waiting", "waiting"]), nodes
        checked = sh(REPO / "ci" / "provision", "--check", params)
        assert "checking the roles as they are" in checked and "check passed" in checked, checked
        again = sh(REPO / "ci" / "provision", params)
        assert ": 0 steps changed," in again.splitlines()[-1], again[-3000:]
    finally:
        sh(LAB, "up", params)        # the next module starts from a fresh lab, not from swapped roles

