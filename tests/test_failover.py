"""Failover without a lab: the detection arithmetic that the prose states, which detached nodes
Part 2 attaches again, the scripts pgpool runs, and how the drills measure and print."""
import re
import subprocess

import nbformat
import pytest

from lib import REPO, drills, failover, part2
from lib import params as P

PARAMS = P.load()


def test_detection_and_reattach_bounds_follow_from_the_settings():
    assert part2.detection_bounds() == {"refused": 2 + 2 * 1, "silent": 2 + 3 * 3 + 2 * 1}
    assert part2.detection_bounds({"health_check_period": 10, "health_check_timeout": 20,
                                   "health_check_max_retries": 3, "health_check_retry_delay": 1}) == \
        {"refused": 13, "silent": 10 + 4 * 20 + 3}
    assert part2.reattach_bound() == 5 + 10


def test_pgpool_conf_carries_the_healing_settings():
    settings = part2.pgpool_settings(PARAMS)
    assert {**part2.HEALTH_CHECK, **part2.HEALING}.items() <= settings.items()
    assert settings["auto_failback"] is True and settings["search_primary_node_timeout"] < 300


def test_the_prose_states_the_bounds_the_settings_give():
    nb = nbformat.read(REPO / "notebooks" / "02-pgpool.ipynb", as_version=4)
    step30 = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("### Step 30 "))
    bounds = part2.detection_bounds()
    assert f"**{bounds['refused']} s**" in step30 and f"**{bounds['silent']} s**" in step30
    assert f"**{part2.HEALING['sr_check_period']} s**" in step30 and f"up to {part2.reattach_bound()} s" in step30
    for name, value in {**part2.HEALTH_CHECK, **part2.HEALING}.items():
        if not isinstance(value, bool):
            assert re.search(rf"`{name}`[^\n]*\| {value} \|", step30), name


def node(node_id, status, pg_status, pg_role, replication_state="", hostname="10.213.93.133"):
    return {"node_id": str(node_id), "hostname": hostname, "status": status, "pg_status": pg_status,
            "pg_role": pg_role, "replication_state": replication_state}


class Env:
    params = PARAMS


@pytest.mark.parametrize("nodes, attached", [
    ([node(0, "up", "up", "primary", hostname="10.213.93.132"), node(1, "down", "up", "standby", "streaming")], [1]),
    ([node(0, "up", "up", "primary", hostname="10.213.93.132"), node(1, "down", "up", "standby", "")], []),
    ([node(0, "up", "up", "primary", hostname="10.213.93.132"), node(1, "down", "down", "unknown")], []),
    ([node(0, "down", "up", "primary", hostname="10.213.93.132"), node(1, "up", "up", "standby", "streaming")], [0]),
    # a second primary beside one that pgpool uses is a split brain, never attached
    ([node(0, "up", "up", "primary", hostname="10.213.93.132"), node(1, "down", "up", "primary")], []),
    ([node(0, "up", "up", "primary", hostname="10.213.93.132"), node(1, "waiting", "up", "standby", "streaming")], []),
])
def test_only_a_healthy_node_in_its_role_is_attached_again(nodes, attached):
    assert [n for n, _ in part2.healthy_but_detached(Env, nodes)] == attached


@pytest.mark.parametrize("make", [failover.failover_script, failover.follow_script, failover.failback_script])
def test_the_scripts_are_bash_for_debian_paths(make, tmp_path):
    script = make(PARAMS)
    path = tmp_path / "s.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "/usr/pgsql" not in script and "pg_ctl -D" not in script
    assert "StrictHostKeyChecking=yes" in script
    if make is not failover.failback_script:         # it runs SQL only
        assert re.search(r"pg_(ctl|ls)clusters? (--no-header )?15 main", script)


def test_follow_primary_names_each_standby_as_pgpool_matches_it():
    script = failover.follow_script(PARAMS)
    for h in PARAMS.database_hosts:
        assert f"{h.address}) name={h.name} ;;" in script
    assert "passfile=" in script and "password=" not in script


def test_standby_conninfo_holds_no_password():
    info = failover.standby_conninfo(PARAMS, "10.0.0.1", "vm2")
    assert info == ("host=10.0.0.1 port=5432 user=replicator application_name=vm2 "
                    "passfile=/var/lib/postgresql/.pgpass sslmode=prefer")


def test_pg_rewind_output_keeps_its_own_lines_with_positions_named():
    out = drills.rewind_output(
        'pg_rewind: executing "/usr/lib/postgresql/15/bin/postgres" for target server to complete crash recovery\n'
        "2026-11-27 16:15:50.729 UTC [5810] LOG:  database system was interrupted\n"
        "backend> 2026-11-27 16:15:50.737 UTC [5810] LOG:  checkpoint starting\n"
        "pg_rewind: servers diverged at WAL location 0/518BF78 on timeline 12\n"
        "pg_rewind: Done!")
    assert out == ("pg_rewind: executing /usr/lib/postgresql/15/bin/postgres for target server to complete crash "
                   "recovery\npg_rewind: servers diverged at WAL location <lsn> on timeline <n>\npg_rewind: Done!")


def test_pg_rewind_copying_or_not_reads_the_same_since_it_is_a_race():
    rewound = drills.rewind_output("pg_rewind: servers diverged at WAL location 0/5000 on timeline 3\n"
                                   "pg_rewind: rewinding from last common checkpoint at 0/4F00 on timeline 2\n"
                                   "pg_rewind: Done!")
    nothing = drills.rewind_output("pg_rewind: servers diverged at WAL location 0/5000 on timeline 3\n"
                                   "pg_rewind: no rewind required")
    assert rewound == nothing and rewound.endswith("in step with the new primary (rewound from the last common "
                                                   "checkpoint, or nothing to rewind)")


def test_a_client_record_gives_gaps_and_failures():
    c = drills.Client("writer", ok=[1.0, 1.1, 3.6, 3.7], failed=[1.5, 2.0, 9.0])
    assert c.longest_gap(1.05, 4.0) == pytest.approx(2.5)
    assert c.longest_gap(0.0, 10.0) == pytest.approx(6.3)
    assert c.failures_between(1.05, 4.0) == 2
    assert c.first_ok_after(1.1) == 3.6


def test_lost_rows_fail_a_drill_unless_it_may_lose_them_and_are_then_counted():
    with pytest.raises(Exception, match="(?s)2 acknowledged rows are gone.*Likely fix: check sync"):
        drills.judge_lost(drills.Outcome("x"), [7, 8], "check sync")
    crash = drills.Outcome("x", may_lose=True)
    drills.judge_lost(crash, [7, 8], "check sync")
    assert crash.measured["rows lost"] == 2 and "counted" in crash.report()
    clean = drills.Outcome("x")
    drills.judge_lost(clean, [], "check sync")
    assert clean.report().splitlines()[-1] == "acknowledged rows lost: 0"
    assert drills.Outcome("x").report() == "x"               # no writer ran: nothing said about rows


@pytest.mark.parametrize("synchronous, names", [(False, ""), (True, 'ANY 1 ("vm1", "vm2")')])
def test_every_server_names_the_same_standbys_to_wait_for(synchronous, names):
    data = P.read_file(REPO / "params" / "lab.yaml")
    data["postgres"]["synchronous"] = synchronous
    assert failover.synchronous_settings(P.load(data)) == {"synchronous_standby_names": names,
                                                           "synchronous_commit": "on"}


@pytest.mark.parametrize("synchronous", [False, True])
def test_only_synchronous_mode_runs_sql_in_the_scripts_and_suspends_before_promoting(synchronous):
    data = P.read_file(REPO / "params" / "lab.yaml")
    data["postgres"]["synchronous"] = synchronous
    prm = P.load(data)
    over, back = failover.failover_script(prm), failover.failback_script(prm)
    # every SSH round trip is time in which pgpool takes no new session: none that the mode does not need
    assert ("psql" in over) is synchronous and ("psql" in back) is synchronous and ('on "' in back) is synchronous
    if synchronous:
        assert over.index(failover.SUSPEND_SQL) < over.index("main promote")     # in the same SSH call, first
        assert "host(client_addr) <> '$failed_host'" in over                      # the failed standby does not count
        assert failover.SUSPENDED_SQL in back and failover.RESUME_SQL in back


def test_pgpool_keeps_its_node_order_when_the_roles_are_swapped_in_the_parameters():
    conf = "backend_hostname0 = '10.213.93.132'\nbackend_hostname1 = '10.213.93.133'\n"
    data = P.read_file(REPO / "params" / "lab.yaml")
    data["hosts"]["primary"], data["hosts"]["standbys"] = data["hosts"]["standbys"][0], [data["hosts"]["primary"]]
    swapped = P.load(data)
    assert [h.name for h in swapped.database_hosts] == ["vm2", "vm1"]
    assert [h.name for h in part2.backend_hosts(swapped, conf)] == ["vm1", "vm2"]
    settings = part2.pgpool_settings(swapped, part2.backend_hosts(swapped, conf))
    assert settings["backend_hostname0"] == "10.213.93.132" and settings["backend_weight0"] == 2   # now a standby
    assert [h.name for h in part2.backend_hosts(swapped, "")] == ["vm2", "vm1"]       # a new pgpool.conf: primary first
    other = "backend_hostname0 = '10.0.0.9'\nbackend_hostname1 = '10.213.93.133'\n"
    assert [h.name for h in part2.backend_hosts(swapped, other)] == ["vm2", "vm1"]


def test_pgpool_nodes_are_matched_to_the_parameters_by_address():
    nodes = [{"node_id": "0", "hostname": "10.213.93.132", "status": "up", "pg_status": "up", "role": "primary",
              "lb_weight": "0.333333", "replication_state": ""},
             {"node_id": "1", "hostname": "10.213.93.133", "status": "up", "pg_status": "up", "role": "standby",
              "lb_weight": "0.666667", "replication_state": "streaming"}]
    part2.check_nodes(nodes, PARAMS)
    nodes[0]["role"], nodes[1]["role"] = "standby", "primary"
    with pytest.raises(Exception, match="has role standby, expected primary"):
        part2.check_nodes(nodes, PARAMS)
