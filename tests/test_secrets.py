import pytest

from lib import params as P
from lib import secrets as S


def test_lab_falls_back_to_demo_values(monkeypatch):
    monkeypatch.delenv("PGGUIDE_REPLICATION_PASSWORD", raising=False)
    assert S.secret("replication", P.load()) == "replica123"


def test_real_environment_needs_the_variable(monkeypatch):
    monkeypatch.delenv("PGGUIDE_REPLICATION_PASSWORD", raising=False)
    vm = P.load(P.REPO / "params" / "vmware.yaml")
    with pytest.raises(S.MissingSecret, match="PGGUIDE_REPLICATION_PASSWORD"):
        S.secret("replication", vm)
    monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", "s3cret-from-env")
    assert S.secret("replication", vm) == "s3cret-from-env"


def test_sudo_has_no_demo_value(monkeypatch):
    monkeypatch.delenv("PGGUIDE_SUDO_PASSWORD", raising=False)
    assert S.secret("sudo", P.load(), required=False) is None


def test_mask_hides_every_known_value(monkeypatch):
    monkeypatch.setenv("PGGUIDE_PGPOOL_PASSWORD", "pool-pass")
    values = S.known_values(P.load())
    assert "pool-pass" in values and "replica123" in values
    assert S.mask("password=pool-pass user=replicator password=replica123", values) == \
        "password=******** user=replicator password=********"
