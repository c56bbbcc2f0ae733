"""Failover without a lab: the detection arithmetic that the prose states, which detached nodes
Part 2 attaches again, the scripts pgpool runs, and how the drills measure and print."""
import contextlib
import os
import re
import signal
import subprocess
import time

import nbformat
import pytest

from lib import REPO, drills, failover, failover_scripts, pgpool_client, pgpool_host, rejoin
from lib import params as P
from lib.wait import wait_until

PARAMS = P.load()


def test_detection_and_reattach_bounds_follow_from_the_settings():
    assert pgpool_host.detection_bounds() == {"refused": 2 + 2 * 1, "silent": 2 + 3 * 3 + 2 * 1}
    assert pgpool_host.detection_bounds({"health_check_period": 10, "health_check_timeout": 20,
                                   "health_check_max_retries": 3, "health_check_retry_delay": 1}) == \
        {"refused": 13, "silent": 10 + 4 * 20 + 3}
    assert pgpool_host.reattach_bound() == 5 + 10


def test_pgpool_conf_carries_the_healing_settings():
    settings = pgpool_host.pgpool_settings(PARAMS)
    assert {**pgpool_host.HEALTH_CHECK, **pgpool_host.HEALING}.items() <= settings.items()
    assert settings["auto_failback"] is True and settings["search_primary_node_timeout"] < 300


def test_the_prose_states_the_bounds_the_settings_give():
    nb = nbformat.read(REPO / "notebooks" / "02-pgpool.ipynb", as_version=4)
    step30 = next(c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("### Step 30 "))
    bounds = pgpool_host.detection_bounds()
    assert f"**{bounds['refused']} s**" in step30 and f"**{bounds['silent']} s**" in step30
    assert f"**{pgpool_host.HEALING['sr_check_period']} s**" in step30 and f"up to {pgpool_host.reattach_bound()} s" in step30
    for name, value in {**pgpool_host.HEALTH_CHECK, **pgpool_host.HEALING}.items():
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
    assert [n for n, _ in pgpool_host.healthy_but_detached(Env, nodes)] == attached


@pytest.mark.parametrize("make", [failover_scripts.failover_script, failover_scripts.follow_script, failover_scripts.failback_script])
def test_the_scripts_are_bash_for_debian_paths(make, tmp_path):
    script = make(PARAMS)
    path = tmp_path / "s.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "/usr/pgsql" not in script and "pg_ctl -D" not in script
    assert "StrictHostKeyChecking=yes" in script
    if make is not failover_scripts.failback_script:         # it runs SQL only
        assert re.search(r"pg_(ctl|ls)clusters? (--no-header )?15 main", script)


def test_follow_primary_names_each_standby_as_pgpool_matches_it():
    script = failover_scripts.follow_script(PARAMS)
    for h in PARAMS.database_hosts:
        assert f"{h.address}) name={h.name} ;;" in script
    assert "passfile=" in script and "password=" not in script


def test_standby_conninfo_holds_no_password():
    info = failover_scripts.standby_conninfo(PARAMS, "10.0.0.1", "vm2")
    assert info == ("host=10.0.0.1 port=5432 user=replicator application_name=vm2 "
                    "passfile=/var/lib/postgresql/.pgpass sslmode=prefer")


def test_pg_rewind_output_keeps_its_own_lines_with_positions_named():
    out = rejoin.rewind_output(
        'pg_rewind: executing "/usr/lib/postgresql/15/bin/postgres" for target server to complete crash recovery\n'
        "2026-11-27 16:15:50.729 UTC [5810] LOG:  database system was interrupted\n"
        "backend> 2026-11-27 16:15:50.737 UTC [5810] LOG:  checkpoint starting\n"
        "pg_rewind: servers diverged at WAL location 0/518BF78 on timeline 12\n"
        "pg_rewind: Done!")
    assert out == ("pg_rewind: executing /usr/lib/postgresql/15/bin/postgres for target server to complete crash "
                   "recovery\npg_rewind: servers diverged at WAL location <lsn> on timeline <n>\npg_rewind: Done!")


def test_pg_rewind_copying_or_not_reads_the_same_since_it_is_a_race():
    rewound = rejoin.rewind_output("pg_rewind: servers diverged at WAL location 0/5000 on timeline 3\n"
                                   "pg_rewind: rewinding from last common checkpoint at 0/4F00 on timeline 2\n"
                                   "pg_rewind: Done!")
    nothing = rejoin.rewind_output("pg_rewind: servers diverged at WAL location 0/5000 on timeline 3\n"
                                   "pg_rewind: no rewind required")
    assert rewound == nothing and rewound.endswith("in step with the new primary (rewound from the last common "
                                                   "checkpoint, or nothing to rewind)")


def test_a_client_record_gives_gaps_and_failures():
    c = drills.Client("writer", ok=[1.0, 1.1, 3.6, 3.7], failed=[1.5, 2.0, 9.0])
    assert c.longest_gap(1.05, 4.0) == pytest.approx(2.5)
    assert c.longest_gap(0.0, 10.0) == pytest.approx(6.3)
    assert c.failures_between(1.05, 4.0) == 2
    assert c.first_ok_after(1.1) == 3.6


OLD, NEW = "10.213.93.132", "10.213.93.133"


def acked_by(server, ids, first_lsn=0x5000000):
    return {i: (server, f"0/{first_lsn + 0x100 * n:X}") for n, i in enumerate(ids)}


def test_a_tail_the_failed_server_acknowledged_is_in_flight_and_anything_else_a_defect():
    evidence = {**acked_by(OLD, range(1, 11)), **acked_by(NEW, range(11, 16))}
    # asynchronous crash: the old primary's last three commits never reached the standby
    assert drills.classify(evidence, set(range(1, 8)) | set(range(11, 16))) == ([8, 9, 10], [])
    # a hole: 5 is gone though 6 and 7, acknowledged later by the same server, survived
    assert drills.classify(evidence, (set(range(1, 11)) - {5}) | set(range(11, 16))) == ([], [5])
    # the old server acknowledged 12 after the new one had taken 11: two primaries at once
    evidence[12] = (OLD, "0/6000000")
    assert drills.classify(evidence, set(range(1, 12)) | set(range(13, 16))) == ([], [12])
    assert drills.classify(evidence, set(evidence)) == ([], [])


def losses(in_flight=(), defects=()):
    ids = [*in_flight, *defects]
    return drills.Losses("vm2", "0/5000200", list(in_flight), list(defects), acked_by(OLD, ids))


def test_lost_rows_fail_a_drill_unless_it_may_lose_them_and_a_defect_fails_every_drill():
    with pytest.raises(Exception, match="(?s)2 acknowledged rows are gone from vm2: 7 \\(by 10.213.93.132 at "
                                        "0/5000000\\), 8 .*began at 0/5000200.*Likely fix: check sync"):
        drills.judge_lost(drills.Outcome("x"), losses(in_flight=[7, 8]), "check sync")
    crash = drills.Outcome("x", may_lose=True)
    drills.judge_lost(crash, losses(in_flight=[7, 8]), "check sync")
    assert crash.measured["rows lost"].startswith("2 (in flight past the switch point 0/5000200: 7 (by 10.213.93.132")
    assert "only rows in flight when the primary failed" in crash.report()
    with pytest.raises(Exception, match="1 acknowledged rows are gone from vm2 although later rows"):
        drills.judge_lost(drills.Outcome("x", may_lose=True), losses(defects=[3]), "check sync")
    clean = drills.Outcome("x")
    drills.judge_lost(clean, losses(), "check sync")
    assert clean.report().splitlines()[-1] == "acknowledged rows lost (counted on the primary, vm2): 0"
    assert drills.Outcome("x").report() == "x"               # no writer ran: nothing said about rows


def test_rows_a_standby_lacks_are_reported_as_lag_never_as_lost():
    lagging = drills.Outcome("x")
    drills.judge_lost(lagging, drills.Losses("vm1", "", behind={"vm2": 3, "vm4": 0}), "check sync")
    assert lagging.measured["rows lost"] == 0 and lagging.measured["rows not yet on a standby (lag)"] == "vm2 3, vm4 0"
    assert lagging.report().splitlines()[-1] == "acknowledged rows lost (counted on the primary, vm1): 0"


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
    over, back = failover_scripts.failover_script(prm), failover_scripts.failback_script(prm)
    # every SSH round trip is time in which pgpool takes no new session: none that the mode does not need
    # (failover.sh reads each standby's WAL position, failback.sh whether the primary sees the standby caught up)
    assert (failover_scripts.SUSPEND_SQL in over) is synchronous and (failover_scripts.RESUME_SQL in back) is synchronous
    if synchronous:
        assert over.index(failover_scripts.SUSPEND_SQL) < over.index("main promote")     # in the same SSH call, first
        assert "host(client_addr) <> '$failed_host'" in over                      # the failed standby does not count
        assert failover_scripts.SUSPENDED_SQL in back and failover_scripts.RESUME_SQL in back


def test_pgpool_keeps_its_node_order_when_the_roles_are_swapped_in_the_parameters():
    conf = "backend_hostname0 = '10.213.93.132'\nbackend_hostname1 = '10.213.93.133'\n"
    data = P.read_file(REPO / "params" / "lab.yaml")
    data["hosts"]["primary"], data["hosts"]["standbys"] = data["hosts"]["standbys"][0], [data["hosts"]["primary"]]
    swapped = P.load(data)
    assert [h.name for h in swapped.database_hosts] == ["vm2", "vm1"]
    assert [h.name for h in pgpool_host.backend_hosts(swapped, conf)] == ["vm1", "vm2"]
    settings = pgpool_host.pgpool_settings(swapped, pgpool_host.backend_hosts(swapped, conf))
    assert settings["backend_hostname0"] == "10.213.93.132" and settings["backend_weight0"] == 2   # now a standby
    assert [h.name for h in pgpool_host.backend_hosts(swapped, "")] == ["vm2", "vm1"]       # a new pgpool.conf: primary first
    other = "backend_hostname0 = '10.0.0.9'\nbackend_hostname1 = '10.213.93.133'\n"
    assert [h.name for h in pgpool_host.backend_hosts(swapped, other)] == ["vm2", "vm1"]


def test_pgpool_nodes_are_matched_to_the_parameters_by_address():
    nodes = [{"node_id": "0", "hostname": "10.213.93.132", "status": "up", "pg_status": "up", "role": "primary",
              "lb_weight": "0.333333", "replication_state": ""},
             {"node_id": "1", "hostname": "10.213.93.133", "status": "up", "pg_status": "up", "role": "standby",
              "lb_weight": "0.666667", "replication_state": "streaming"}]
    pgpool_client.check_nodes(nodes, PARAMS)
    nodes[0]["role"], nodes[1]["role"] = "standby", "primary"
    with pytest.raises(Exception, match="has role standby, expected primary"):
        pgpool_client.check_nodes(nodes, PARAMS)


# --- failover.sh run for real in bash, with ssh and pcp_node_info standing in for the hosts ----------------
FAKE_SSH = r"""#!/bin/bash
for last; do :; done                      # the remote command is the last argument, the host the one before
host=${@: -2:1}; host=${host#postgres@}
echo "$host $last" >> "$T/calls"
case $last in
  true) [ -f "$T/back.$host" ] || exit 255 ;;     # the host answers again once the test says so
  *pg_walfile_name*) cat "$T/timeline.$host" 2>/dev/null ;;
  *pg_controldata*) [ -f "$T/ended.$host" ] || exit 255; cat "$T/ended.$host" ;;
  *pg_stat_replication*) cat "$T/caught_up.$host" 2>/dev/null ;;
  *pg_is_in_recovery*) n=$(cat "$T/asked.$host" 2>/dev/null || echo 0); echo $((n + 1)) > "$T/asked.$host"
                       f="$T/position.$host.$n"; [ -f "$f" ] || f="$T/position.$host"; cat "$f" ;;
esac
"""

#: pgpool's answer about one node (-n), or about every node; each question is noted in $T/pcp-asked
FAKE_NODE_INFO = r"""#!/bin/bash
id=all
while [ $# -gt 0 ]; do [ "$1" = -n ] && id=$2; shift; done
echo "$id" >> "$T/pcp-asked"
if [ "$id" = all ]; then cat "$T/nodes"; else sed -n "$((id + 1))p" "$T/nodes"; fi
"""
FAKE_NODE_COUNT = '#!/bin/sh\nwc -l < "$T/nodes"\n'


def run_failover(tmp_path, nodes, ended=None, positions=None, failed=0, synchronous=False, wanted=None, back=None):
    """failover.sh as pgpool runs it when node `failed` (the primary) fails. `nodes`: pcp_node_info's
    lines; `ended`: what the failed host's watch prints (None: the host does not answer);
    `positions`: host -> 'recovery|lsn|bytes', or a list of them, one per time it is asked. `back`: when
    the host does not answer pg_controldata, it answers the watcher failover.sh leaves behind, each host telling 'in recovery|timeline' as given
    (host -> row); the run then waits for what the watcher left behind logs."""
    data = P.read_file(REPO / "params" / "lab.yaml")
    data["postgres"]["synchronous"] = synchronous
    log = tmp_path / "failover.log"
    script = failover_scripts.failover_script(P.load(data)).replace(failover_scripts.FAILOVER_LOG, str(log)) \
        .replace(failover_scripts.SWITCHOVER_TO, str(tmp_path / "switchover-to"))
    if wanted:
        (tmp_path / "switchover-to").write_text(f"{wanted[0]} {int(time.time()) + wanted[1]}\n")
    (tmp_path / "bin").mkdir()
    for name, text in {"ssh": FAKE_SSH, "pcp_node_info": FAKE_NODE_INFO, "pcp_node_count": FAKE_NODE_COUNT}.items():
        (tmp_path / "bin" / name).write_text(text)
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "nodes").write_text("".join(f"{host} 5432 2 0.5 {status} up standby standby 0 none none x\n"
                                            for host, status in nodes))
    if ended is not None:
        (tmp_path / f"ended.{nodes[failed][0]}").write_text(ended + "\n")
    for host, told in (positions or {}).items():
        for n, row in enumerate([told] if isinstance(told, str) else told):
            (tmp_path / f"position.{host}.{n}").write_text(row + "\n")
        (tmp_path / f"position.{host}").write_text((told if isinstance(told, str) else told[-1]) + "\n")
    for host, row in (back or {}).items():
        (tmp_path / f"timeline.{host}").write_text(row + "\n" if row else "")
        (tmp_path / f"back.{host}").touch()
    (tmp_path / "failover.sh").write_text(script)
    run = subprocess.Popen(["bash", str(tmp_path / "failover.sh"), str(failed), nodes[failed][0], str(failed), "1",
                            nodes[1][0], nodes[failed][0]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True, env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "T": str(tmp_path)})
    try:
        returncode = run.wait(timeout=60)
        if back:
            wait_until(lambda: "answers again" in log.read_text(), timeout=10, interval=0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):     # the watcher failover.sh leaves behind
            os.killpg(run.pid, signal.SIGKILL)
    lines = [l.split(" ", 1)[1] for l in log.read_text().splitlines()] if log.exists() else []
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return returncode, lines, calls


A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
THREE = [(A, "down"), (B, "up"), (C, "up")]


def test_failover_promotes_the_most_advanced_standby_not_the_lowest_node(tmp_path):
    rc, log, calls = run_failover(tmp_path, THREE, ended="crashed",
                                  positions={B: "t|0/5000000|83886080", C: "t|0/5000100|83886336"})
    assert rc == 0, log
    assert log == [f"primary node 0 ({A}) failed",
                   f"node 0 ({A}) stopped without a clean shutdown: no hand-over",
                   "every standby has read all that reached it of node 0's WAL",
                   f"standbys: node 1 ({B}) 0/5000000, node 2 ({C}) 0/5000100",
                   f"promoting node 2 ({C}): the most advanced standby",
                   f"node 0 ({A}) fenced: it can start only as a standby that follows nobody, until it is rejoined",
                   f"node 2 ({C}) promoted"]
    assert [c for c in calls if "promote" in c] == [f"{C} pg_ctlcluster 15 main promote"]
    fence = next(c for c in calls if "standby.signal" in c)
    assert fence.startswith(f"{A} touch /var/lib/postgresql/15/main/standby.signal") and f"new_primary={C}" in fence
    assert calls.index(fence) < calls.index(f"{C} pg_ctlcluster 15 main promote")      # fenced first


@pytest.mark.parametrize("nodes, positions, chosen", [
    (THREE, {B: "t|0/5000000|83886080", C: "t|0/5000000|83886080"}, 1),                # equal: the lower node
    ([(A, "down"), (B, "up"), (C, "down")], {B: "t|0/5000000|83886080", C: "t|0/9000000|150994944"}, 1),  # detached
    ([(A, "down"), (B, "waiting"), (C, "up")], {B: "t|0/5000000|83886080", C: "t|0/4000000|67108864"}, 1),
])
def test_equal_standbys_promote_the_lower_node_and_a_detached_one_is_never_chosen(tmp_path, nodes, positions, chosen):
    rc, log, _ = run_failover(tmp_path, nodes, ended="crashed", positions=positions)
    assert rc == 0 and f"promoting node {chosen} ({nodes[chosen][0]}): the most advanced standby" in log, log


def test_with_no_standby_answering_nothing_is_promoted(tmp_path):
    rc, log, calls = run_failover(tmp_path, THREE, ended="crashed")
    assert rc == 1 and log[-1] == "no standby is left to promote" and not any("promote" in c for c in calls)


def test_a_clean_stop_is_handed_over_before_the_promotion(tmp_path):
    rc, log, calls = run_failover(tmp_path, THREE, ended="shutdown 0/5000028",
                                  positions={B: ["t|0/5000000|83886080", "t|0/5000000|83886080", "t|0/50000A0|83886240"],
                                             C: "t|0/5000000|83886080"})
    assert rc == 0, log
    assert log[1:5] == [f"node 0 ({A}) shut down cleanly: its last checkpoint is 0/5000028",
                        f"hand-over complete: node 1 ({B}) has received the shutdown checkpoint",
                        "every standby has read all that reached it of node 0's WAL",
                        f"standbys: node 1 ({B}) 0/50000A0, node 2 ({C}) 0/5000000"]
    assert sum(1 for c in calls if c.startswith(B) and "pg_is_in_recovery" in c) == 3    # asked until it had it


def test_wal_still_in_a_standbys_socket_is_read_before_the_choice(tmp_path):
    """bravo's WAL receiver was stalled when the primary crashed: the WAL sent to it still waits in its
    socket. Chosen at once, charlie (ahead at that moment) would be promoted and bravo, ahead once it
    reads the rest, forked off (seen on the Debian 13 lab). The script waits until no receiver streams."""
    rc, log, calls = run_failover(tmp_path, THREE, ended="crashed", positions={
        B: ["t|0/5000000|83886080|streaming", "t|0/5000000|83886080|streaming", "t|0/5000200|83886592|waiting"],
        C: "t|0/5000100|83886336|none"})
    assert rc == 0 and f"promoting node 1 ({B}): the most advanced standby" in log, log
    assert "every standby has read all that reached it of node 0's WAL" in log
    assert sum(1 for c in calls if c.startswith(B) and "pg_is_in_recovery" in c) == 3


def test_a_host_that_does_not_answer_is_neither_waited_for_nor_fenced(tmp_path):
    rc, log, calls = run_failover(tmp_path, THREE, ended=None, positions={B: "t|0/5000000|83886080",
                                                                          C: "t|0/5000000|83886080"})
    assert rc == 0 and log[1] == f"node 0 ({A}): its host does not answer: promoting at once"
    assert not any("standby.signal" in c for c in calls) and f"node 1 ({B}) promoted" in log
    assert log[-1] == f"node 0 ({A}) not fenced: its host does not answer; fenced when it does (within 900 s)"


@pytest.mark.parametrize("failed", [0, 1])
def test_pgpool_is_never_asked_about_the_failed_node(tmp_path, failed):
    """For each node pcp_node_info is asked about, pgpool asks that server too; a host that does not answer
    holds the answer for connect_timeout (10 s each time, measured on the lab), and failover.sh asks twice
    for a silent primary: so it asks one node at a time, and never about the failed one."""
    nodes = [(A, "up"), (B, "up"), (C, "up")]
    nodes[failed] = (nodes[failed][0], "down")
    rc, log, _ = run_failover(tmp_path, nodes, ended=None, failed=failed,
                              positions={h: "t|0/5000000|83886080" for h, _ in nodes})
    asked = (tmp_path / "pcp-asked").read_text().split()
    assert rc == 0 and asked and "all" not in asked and str(failed) not in asked, (asked, log)
    assert f"standbys: {', '.join(f'node {i} ({h}) 0/5000000' for i, (h, _) in enumerate(nodes) if i != failed)}" in log


SILENT = {B: "t|0/5000000|83886080", C: "t|0/5000000|83886080"}


@pytest.mark.parametrize("ended", [None, "running"])
def test_standbys_stop_receiving_from_a_primary_that_did_not_stop_before_one_is_promoted(tmp_path, ended):
    """A silent host's connections outlive a short outage, and a running one goes on sending: a standby that
    received its WAL after the promotion would have forked off (seen on the Debian 13 lab: stuck in startup).
    The positions are read again after that, and C, which had more by then, is promoted."""
    rc, log, calls = run_failover(tmp_path, THREE, ended=ended,
                                  positions={B: "t|0/5000100|83886336", C: ["t|0/5000000|83886080", "t|0/5000200|83886592"]})
    unfollow = [i for i, c in enumerate(calls) if failover_scripts.UNFOLLOW_SQL in c]
    promote = next(i for i, c in enumerate(calls) if c.endswith("pg_ctlcluster 15 main promote"))
    assert len(unfollow) == 2 and max(unfollow) < promote, calls
    assert f"node 1 ({B}) stopped receiving from node 0" in log and f"node 2 ({C}) stopped receiving from node 0" in log
    assert calls[promote] == f"{C} pg_ctlcluster 15 main promote", log


def test_after_a_crash_standbys_keep_their_connection_settings(tmp_path):
    rc, log, calls = run_failover(tmp_path, THREE, ended="crashed", positions=SILENT)
    assert rc == 0 and not any(failover_scripts.UNFOLLOW_SQL in c for c in calls)


@pytest.mark.parametrize("old, new, said, stopped", [
    ("f|1", "f|2", f"node 0 ({A}) answers again, a primary on timeline 1 beside node 1 ({B}) on timeline 2: "
                   "stopped and fenced", True),
    # no proof that the promoted server leads: its timeline is not later, or it does not answer
    ("f|2", "f|2", f"node 0 ({A}) answers again, a primary (timeline 2); node 1 ({B}) answers 'f|2': left running, "
                   "for a person to decide", False),
    ("f|1", "", f"node 0 ({A}) answers again, a primary (timeline 1); node 1 ({B}) answers '': left running, "
                "for a person to decide", False),
    ("", "f|2", f"node 0 ({A}) answers again, its server down: fenced", False),
    ("t|0", "f|2", f"node 0 ({A}) answers again, in recovery: left as it is", False),
])
def test_a_silent_primary_is_stopped_and_fenced_when_it_answers_again_only_with_proof(tmp_path, old, new, said, stopped):
    rc, log, calls = run_failover(tmp_path, THREE, ended=None, positions=SILENT, back={A: old, B: new})
    assert rc == 0 and log[-1] == said, log
    assert any(c.startswith(f"{A} pg_ctlcluster 15 main stop -m fast && touch") for c in calls) == stopped
    assert any("standby.signal" in c for c in calls) == (stopped or not old)


def test_a_server_that_is_no_longer_in_recovery_is_not_a_candidate(tmp_path):
    rc, log, _ = run_failover(tmp_path, THREE, ended="crashed",
                              positions={B: "f|0/9000000|150994944", C: "t|0/5000000|83886080"})
    assert rc == 0 and f"promoting node 2 ({C}): the most advanced standby" in log


@pytest.mark.parametrize("attached, caught_up, detached", [
    ("10.213.93.133", "t", False),          # the primary sees it replicating (streaming or catching up): it stays
    ("10.213.93.133", "f", True),           # no WAL sender streams to it (forked off: stuck in startup)
    ("10.213.93.133", "", True),            # not connected to the primary (not yet re-pointed)
    ("10.213.93.132", "", False),           # the primary itself is never detached
])
def test_failback_keeps_a_standby_attached_only_when_the_primary_sees_it_replicating(tmp_path, attached, caught_up,
                                                                                     detached):
    log = tmp_path / "failover.log"
    script = failover_scripts.failback_script(PARAMS).replace(failover_scripts.FAILOVER_LOG, str(log))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ssh").write_text(FAKE_SSH)
    (tmp_path / "bin" / "pcp_detach_node").write_text(f"#!/bin/sh\necho \"detach $*\" >> {tmp_path}/calls\n")
    for name in ("ssh", "pcp_detach_node"):
        (tmp_path / "bin" / name).chmod(0o755)
    (tmp_path / "caught_up.10.213.93.132").write_text(caught_up + "\n" if caught_up else "")
    (tmp_path / "failback.sh").write_text(script)
    node = PARAMS.database_hosts.index(next(h for h in PARAMS.database_hosts if h.address == attached))
    done = subprocess.run(["bash", str(tmp_path / "failback.sh"), str(node), attached, "10.213.93.132"],
                          env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "T": str(tmp_path)}, timeout=30)
    assert done.returncode == 0
    time.sleep(1.5)                                  # the detach waits for the attachment to be over
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    assert (f"detach -h localhost -p 9898 -U pgpool -w -n {node}" in calls) is detached, calls
    if attached != "10.213.93.132":
        assert "application_name = 'vm2'" in calls                  # asked about this standby, by its name


def test_what_a_former_primary_alone_held_is_said_in_stable_words_and_its_copy_named():
    none = rejoin.Diverged("vm1", "vm2", 1, "0/5000200", 0, "000000010000000000000005")
    some = rejoin.Diverged("vm1", "vm2", 1, "0/5000200", 47, "000000010000000000000005")
    assert none.said() == "no commit past the switch point that vm2 lacks: the rewind discards nothing"
    assert "never received: the rewind discards them, so they are counted" in some.said()
    assert not re.search(r"\d", (some.said() + none.said()).replace("vm2", ""))   # no count or timeline: the same every run

    class Remote:
        params = PARAMS
        host = type("Host", (), {"name": "vm1"})
    keep = rejoin.keep_diverged(Remote, some)
    assert "awk -v f=000000010000000000000005" in keep.command and "cp -p -t" in keep.command
    assert keep.normalize("kept in /var/lib/postgresql/15/main.diverged-20261206T164500Z: 3 WAL files") == \
        "kept in /var/lib/postgresql/15/main.diverged-<time>: its WAL files"
    assert PARAMS.options["refuse_diverged"] is False


def test_the_wal_kept_aside_is_the_former_timeline_from_the_switch_point_on(tmp_path):
    """Segment names compared as strings: as numbers (awk's default for digits) they lose precision."""
    wal = tmp_path / "main" / "pg_wal"
    wal.mkdir(parents=True)
    for name in ("000000010000000000000003", "000000010000000000000004", "000000010000000000000005",
                 "000000020000000000000005", "00000002.history", "archive_status"):
        (wal / name).touch()

    class Remote:
        params = PARAMS
        host = type("Host", (), {"name": "vm1"})
    keep = rejoin.keep_diverged(Remote, rejoin.Diverged("vm1", "vm2", 1, "0/4000100", 3, "000000010000000000000004"))
    command = keep.command.replace("/var/lib/postgresql/15/main", str(tmp_path / "main"))
    assert subprocess.run(["bash", "-c", command], capture_output=True, text=True).returncode == 0
    aside = next(tmp_path.glob("main.diverged-*"))
    assert sorted(p.name for p in aside.iterdir()) == ["000000010000000000000004", "000000010000000000000005"]


@pytest.mark.parametrize("wanted, positions, chosen", [
    ((C, 60), {B: "t|0/5000000|83886080", C: "t|0/5000000|83886080"}, 2),     # a switchover's target, on a tie
    ((C, 60), {B: "t|0/5000100|83886336", C: "t|0/5000000|83886080"}, 1),     # never when it holds less
    ((C, -1), {B: "t|0/5000000|83886080", C: "t|0/5000000|83886080"}, 1),     # nor once the request expired
])
def test_a_planned_switchover_promotes_its_target_only_when_it_holds_as_much_wal(tmp_path, wanted, positions, chosen):
    rc, log, _ = run_failover(tmp_path, THREE, ended="shutdown 0/4000028", positions=positions, wanted=wanted)
    assert rc == 0 and f"promoting node {chosen} ({THREE[chosen][0]}): the most advanced standby" in log, log
    assert not (tmp_path / "switchover-to").exists() or wanted[1] < 0          # a request is used once



def test_drill_3c_holds_pgpool_to_the_silent_bound_plus_what_the_guard_adds():
    """The settings' 'silent' bound (13 s), plus the guard's: a check held in a read from the silence's start
    is ended by the guard (lib.health_check_guard) after its limit and one sample, and the bound runs from there."""
    from lib import health_check_guard
    assert pgpool_host.detection_bounds()["silent"] == 13
    assert health_check_guard.limit_s() == 4 and health_check_guard.added_s() == 5
