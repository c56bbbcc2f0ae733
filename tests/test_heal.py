"""Healing after a failover, without a lab: the parameters with the roles as they are."""
from lib import REPO, heal
from lib import params as P


def test_the_promoted_standby_becomes_the_primary_and_the_preferred_one_takes_its_place():
    data = P.read_file(REPO / "params" / "lab-debian13.yaml")
    out = heal.effective(data, "charlie")
    assert out["hosts"]["primary"]["name"] == "charlie" and out["hosts"]["primary"]["weight"] == 1   # its own weight
    assert [s["name"] for s in out["hosts"]["standbys"]] == ["bravo", "alpha"]     # in charlie's place
    assert data["hosts"]["primary"]["name"] == "alpha"                             # the file's data untouched
    prm = P.load(out)
    assert prm.primary.name == "charlie" and [h.name for h in prm.database_hosts] == ["charlie", "bravo", "alpha"]
    assert heal.effective(out, "alpha")["hosts"]["primary"]["name"] == "alpha"      # and back
