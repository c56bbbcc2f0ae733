"""Part 2 in its other shapes, each provisioned on the lab: the guide's own md5 way, and
other load-balancing weights. On the second lab (tests/data/lab-b.yaml), beside the other lab tests."""
import copy
import json
import os

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
