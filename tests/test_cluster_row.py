"""pg_lsclusters' line for our cluster, read in one place (lib.postgres.ClusterRow): the provisioning,
the clone guard's refusals and the diagnosis all take the state and the data directory from it."""
from lib.postgres import ClusterRow


def test_a_standby_a_primary_a_stopped_cluster_and_none():
    standby = ClusterRow.parse("15  main    5432 online,recovery postgres /var/lib/postgresql/15/main "
                               "/var/log/postgresql/postgresql-15-main.log\n")
    assert (standby.state, standby.data_dir) == ("online,recovery", "/var/lib/postgresql/15/main")
    assert standby.text.startswith("15 main 5432 online,recovery postgres ")
    assert ClusterRow.parse("17 main 5432 online postgres /var/lib/postgresql/17/main log").state == "online"
    assert ClusterRow.parse("15 main 5432 down,recovery postgres /srv/pg/15 log").data_dir == "/srv/pg/15"
    assert ClusterRow.parse("") == ClusterRow("absent", "", "")            # Error: specified cluster does not exist


def test_the_clone_guard_refuses_a_cluster_elsewhere():
    """Step 8 clears the standby's data directory only where the cluster's own row says it is."""
    from lib import params as P
    from lib import part1, postgres
    from lib.facts import Output
    from lib.remote import Remote

    def Host(host, row):
        remote = Remote(P.load(), host)
        remote.facts.given({part1.ADDRESSES: Output(True, host.address + "\n"),
                            postgres.cluster_fact(remote.params): Output(row != "", row)})
        return remote
    params = P.load()
    primary = Host(params.primary, "")
    here = Host(params.standbys[0], "15 main 5432 down postgres /var/lib/postgresql/15/main log")
    assert part1._refusals(here, primary) == []
    elsewhere = Host(params.standbys[0], "15 main 5432 down postgres /srv/other log")
    assert part1._refusals(elsewhere, primary) == [
        "cluster 15/main does not use /var/lib/postgresql/15/main (15 main 5432 down postgres /srv/other log)"]
    assert "no cluster" in part1._refusals(Host(params.standbys[0], ""), primary)[0]
