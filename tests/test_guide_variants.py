"""Part 2 in its other shapes, each provisioned on the lab: the guide's own md5 way, and
other load-balancing weights. On the second lab (tests/data/lab-b.yaml), beside the other lab tests."""
import copy
import json
import os
import subprocess
import time

import pytest
import yaml

from lib import REPO
from lib import params as P
from labtools import LAB, PARAMS_FILE, sh

pytestmark = [pytest.mark.lab, pytest.mark.second_lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]



def variant(tmp_path, name, change):
    data = copy.deepcopy(P.read_file(PARAMS_FILE))
    data["environment"] = name
    change(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_md5_mode_does_what_the_guide_does(tmp_path):
    params = variant(tmp_path, "lab-md5", lambda d: d["postgres"].update(auth_method="md5"))
    sh(LAB, "up", params)
    sh(REPO / "ci" / "provision", params)
    # the check builds every step's plan: all empty, so a second run would change nothing
    assert "check passed" in sh(REPO / "ci" / "provision", "--check", params)
    hba = sh(LAB, "ssh", "--params", params, "vm1", "sudo grep -v '^#' /etc/postgresql/15/main/pg_hba.conf")
    assert "scram-sha-256" not in hba and f"{P.load(params).pgpool_host.address}/32         md5" in hba
    assert sh(LAB, "ssh", "--params", params, "vm1", "sudo -u postgres psql -XAtc \"select count(*) from pg_authid "
                                 "where rolname in ('postgres','pgpool') and rolpassword like 'md5%'\"").strip() == "2"
    entries = sh(LAB, "ssh", "--params", params, "vm3", "sudo cat /etc/pgpool2/pool_passwd").split()
    assert sorted(e.split(":")[0] for e in entries) == ["pgpool", "postgres"]
    assert all(e.split(":")[1].startswith("md5") for e in entries)
    login = sh(LAB, "ssh", "--params", params, "vm1", f"PGPASSWORD=postgres123 psql -XAt -h {P.load(params).pgpool_host.address} -p 9999 -U postgres "
                                  "-c 'select current_user'")
    assert login.strip() == "postgres"


@pytest.mark.parametrize("weights", [(1, 3), (1, 1)], ids=["1to3", "1to1"])
def test_load_balancing_check_passes_at_other_weights(tmp_path, weights):
    def set_weights(d):
        d["hosts"]["primary"]["weight"], d["hosts"]["standbys"][0]["weight"] = weights
    params = variant(tmp_path, f"lab-w{weights[0]}{weights[1]}", set_weights)
    if weights == (1, 3):
        sh(LAB, "up", params)                      # fresh; 1:1 then reconfigures the same lab
    out = sh(REPO / "ci" / "provision", params)
    assert "provision succeeded" in out
    record = REPO / out.strip().splitlines()[-1].split("Record: ")[1]
    assert json.loads((record / "summary.json").read_text())["result"] == "succeeded"
    text = (record / "02-pgpool.ipynb").read_text()
    share = weights[1] / sum(weights)
    assert f"vm2: expected share {share:.3f}" in text and "within" in text


def test_tls_everywhere_with_postgres_tls(tmp_path):
    """postgres.tls: hostssl lines, the standby's stream, pgpool to the servers and clients to
    pgpool all over TLS; a client without TLS is turned away."""
    params = variant(tmp_path, "lab-tls", lambda d: d["postgres"].update(tls=True))
    prm = P.load(params)
    sh(LAB, "up", params)
    out = sh(REPO / "ci" / "provision", params)
    assert "provision succeeded" in out
    assert "check passed" in sh(REPO / "ci" / "provision", "--check", params)

    def on(host, command):
        return sh(LAB, "ssh", "--params", params, host, command)
    pool = prm.pgpool_host.address
    hba = [l.split() for l in on("vm1", "sudo grep -v '^#' /etc/postgresql/15/main/pg_hba.conf").splitlines() if l.strip()]
    assert ["hostssl", "replication", "replicator", f"{prm.standbys[0].address}/32", "scram-sha-256"] in hba
    assert ["hostssl", "all", "pgpool", f"{pool}/32", "scram-sha-256"] in hba
    assert not [l for l in hba if l[0] == "host" and l[3] in (f"{pool}/32", f"{prm.standbys[0].address}/32")], hba
    record = REPO / out.strip().splitlines()[-1].split("Record: ")[1]
    assert "client (this notebook)" in (record / "02-pgpool.ipynb").read_text()     # Step 34's TLS evidence
    sessions = "sudo -u postgres psql -XAtc \"SELECT replace(backend_type, ' ', '_') || ':' || ssl::text FROM " \
               "pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE client_addr IS NOT NULL\""
    with subprocess.Popen([str(LAB), "ssh", "--params", str(params), "vm1",       # a session through pgpool, held
                           f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=require' "
                           "-c 'select pg_sleep(3)'"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as held:
        time.sleep(1.5)
        primary, standby = on("vm1", sessions).split(), on("vm2", sessions).split()
        held.wait()
    assert "walsender:true" in primary and "client_backend:true" in primary, primary
    assert set(primary) == {"walsender:true", "client_backend:true"}, primary
    assert standby and set(standby) == {"client_backend:true"}, standby          # pgpool's connections
    tls = on("vm1", f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=require' -c '\\conninfo'")
    assert "SSL connection (protocol: TLSv1.3" in tls
    plain = subprocess.run([str(LAB), "ssh", "--params", str(params), "vm1",
                            f"PGPASSWORD=postgres123 psql -X 'host={pool} port=9999 user=postgres sslmode=disable' "
                            "-c 'select 1'"], capture_output=True, text=True)
    assert plain.returncode != 0 and "pool_hba.conf" in plain.stderr, plain.stderr
