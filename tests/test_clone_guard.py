import pytest
"""The proof that a standby may be cleared and cloned (lib.clone_guard.may_clone): each rule,
and the refusals that protect a real primary or another server from being wiped."""
from lib.clone_guard import Cluster, may_clone, primary_problem

SYSID = "7300000000000000001"
PRIMARY = Cluster("vm1", state="online", entries=24, control=True, system_id=SYSID, in_recovery=False,
                  lsn="0/5000100", timeline=1)


def standby(**facts) -> Cluster:
    base = dict(state="online,recovery", entries=24, control=True, system_id=SYSID, in_recovery=True,
                lsn="0/5000000", timeline=1)
    return Cluster("vm2", **{**base, **facts})


TORN_DOWN = standby(state="online", in_recovery=False, timeline=2, lsn="0/5000200",
                    databases=["testdb"], roles=["pgpool", "replicator"])


def test_a_standby_of_this_primary_behind_it_may_be_cloned():
    assert may_clone(PRIMARY, standby(), rebuild=False) == (
        True, "a standby of vm1 (same system identifier, in recovery, timeline 1 at 0/5000000)")


def test_a_standby_ahead_of_the_primary_is_refused():
    allowed, why = may_clone(PRIMARY, standby(lsn="0/6000000"), rebuild=False)
    assert not allowed and "it is at timeline 1 at 0/6000000, vm1 at timeline 1 at 0/5000100" in why


def test_an_empty_directory_and_a_fresh_cluster_may_be_cloned():
    assert may_clone(PRIMARY, standby(state="", entries=0, control=False, system_id=None), False)[0]
    fresh = standby(state="online", system_id="7399999999999999999", in_recovery=False, timeline=1, lsn="0/1A3F2B0")
    assert may_clone(PRIMARY, fresh, False) == (
        True, "a fresh cluster (no databases but postgres/template0/template1, no roles but postgres)")


@pytest.mark.parametrize("busy, found", [
    (dict(timeline=4), "timeline 4"),                    # promoted once or more: it had a life of its own
    (dict(tables=12), "12 tables in postgres"),          # keeps its data in postgres, as postgres
    (dict(lsn="2/9C000000"), "WAL up to 2/9C000000"),    # has written gigabytes since initdb
])
def test_a_busy_server_with_only_postgres_is_not_fresh(busy, found):
    """A mistyped standby address can reach an unrelated server that uses only the database and role postgres."""
    server = standby(state="online", system_id="7399999999999999999", in_recovery=False, timeline=1, lsn="0/1A3F2B0")
    for key, value in busy.items():
        setattr(server, key, value)
    allowed, why = may_clone(PRIMARY, server, False)
    assert not allowed and found in why, why


def test_a_torn_down_standby_keeps_its_writes_even_with_rebuild():
    for rebuild in (False, True):
        allowed, why = may_clone(PRIMARY, TORN_DOWN, rebuild)
        assert not allowed
        assert "it is a writable server, not a standby, holding databases testdb and roles pgpool, replicator" in why
        assert "vm1 is not ahead of it, so it may hold writes vm1 lacks" in why


def test_swapped_parameters_refuse_to_wipe_the_real_primary():
    # after a teardown, the file names the promoted standby as primary and the real primary as standby
    promoted = Cluster("vm2", state="online", control=True, entries=24, system_id=SYSID, in_recovery=False,
                       lsn="0/5000200", timeline=2)
    real_primary = standby(state="online", in_recovery=False, lsn="0/7000000", databases=["testdb"], roles=["replicator"])
    for rebuild in (False, True):
        allowed, why = may_clone(promoted, real_primary, rebuild)
        assert not allowed and "if the roles in the parameter file are swapped, fix them" in why


def test_another_server_is_refused_even_with_rebuild():
    other = standby(state="online", system_id="7311111111111111111", in_recovery=False, databases=["shop"], roles=[])
    allowed, why = may_clone(PRIMARY, other, rebuild=True)
    assert not allowed and "its system identifier is not that of vm1 (7311111111111111111 vs 7300000000000000001)" in why


def test_rebuild_replaces_a_standby_the_primary_is_ahead_of():
    stale = standby(state="online", in_recovery=False, lsn="0/4000000", databases=["testdb"])
    assert not may_clone(PRIMARY, stale, rebuild=False)[0]
    assert may_clone(PRIMARY, stale, rebuild=True)[0]


def test_a_run_killed_after_the_stop_resumes_only_if_nobody_started_the_cluster_since():
    marker = {"system_id": SYSID, "checkpoint": "0/4000028", "started": "2026-11-27T14:00:00Z"}
    stopped = standby(state="down", in_recovery=False, lsn="0/4000028", checkpoint="0/4000028", marker=marker,
                      system_id=SYSID, timeline=2)
    assert may_clone(PRIMARY, stopped, False)[0]
    restarted = standby(state="down", in_recovery=False, checkpoint="0/4000990", lsn="0/4000990", marker=marker, timeline=2)
    allowed, why = may_clone(PRIMARY, restarted, False)
    assert not allowed and "not in recovery, so it cannot be shown to be fresh (start it" in why


def test_a_former_primary_after_a_failover_is_named_as_such_and_rebuilt_only_when_asked():
    promoted = Cluster("vm2", state="online", entries=24, control=True, system_id=SYSID, in_recovery=False,
                       lsn="0/6000000", timeline=2)
    old = Cluster("vm1", state="down", entries=24, control=True, system_id=SYSID, in_recovery=False,
                  lsn="0/5000100", timeline=1)
    allowed, why = may_clone(promoted, old, rebuild=False)
    assert not allowed and "a former primary: vm2 was promoted past it" in why and "ci/provision rejoins it" in why
    assert "start it, and provisioning examines it" not in why            # that would make a second primary
    assert may_clone(promoted, old, rebuild=True)[0]


@pytest.mark.parametrize("state, in_recovery", [("down", False), ("online,recovery", True)])
def test_a_fenced_former_primary_is_never_taken_for_a_standby_that_may_be_cloned(state, in_recovery):
    """failover.sh's fence writes standby.signal: the old primary, down or started again in recovery,
    still holds a timeline that may run past the promotion, so it is a former primary, not a standby."""
    promoted = Cluster("vm2", state="online", entries=24, control=True, system_id=SYSID, in_recovery=False,
                       lsn="0/6000000", timeline=2)
    old = Cluster("vm1", state=state, entries=24, control=True, system_id=SYSID, in_recovery=in_recovery,
                  standby_signal=True, fenced=True, lsn="0/5000100", timeline=1)
    allowed, why = may_clone(promoted, old, rebuild=False)
    assert not allowed and "a former primary: vm2 was promoted past it" in why, why
    assert may_clone(promoted, Cluster(**{**old.__dict__, "fenced": False}), rebuild=False)[0] is in_recovery


def test_a_run_killed_while_clearing_or_copying_resumes_a_directory_without_pg_control():
    partial = standby(state="", entries=7, control=False, system_id=None, lsn=None, in_recovery=None,
                      marker={"system_id": SYSID, "checkpoint": "0/1", "started": "t"})
    assert may_clone(PRIMARY, partial, False)[0]
    strange = standby(state="", entries=7, control=False, system_id=None, lsn=None, in_recovery=None)
    allowed, why = may_clone(PRIMARY, strange, False)
    assert not allowed and "holds 7 entries but no global/pg_control" in why


def test_the_primary_must_be_a_running_primary():
    assert primary_problem(PRIMARY) is None
    assert "in recovery: it is a standby" in primary_problem(standby())
    assert "is not running (down)" in primary_problem(standby(state="down"))


def test_an_address_that_reaches_the_primarys_own_host_is_refused_whatever_it_holds():
    primary = Cluster(**{**PRIMARY.__dict__, "machine_id": "m1"})
    for facts in ({}, {"state": "", "entries": 0, "control": False}):
        allowed, why = may_clone(primary, standby(machine_id="m1", **facts), rebuild=True)
        assert not allowed and "it is the same machine as vm1 (/etc/machine-id m1)" in why
