"""The other generation, with two standbys: params/lab-debian13.yaml (Debian 13, PostgreSQL 17,
pgpool2 4.6, host names unlike the guide's). Provisioned twice from a fresh lab, the second run
changing nothing; then checked from outside with plain psql on each host and through pgpool, and
every step that loops over the standbys is looked at with two of them; --teardown last.

ci/test runs these on their own lab, after the second lab's tests (marker debian13)."""
import json
import os
import re
import time
from functools import partial

import pytest

from lib import REPO, drills
from lib import params as P
from lib import secrets as S
from lib.remote import Hosts
import labtools
from labtools import lab, run_drills, sh, variant

pytestmark = [pytest.mark.lab, pytest.mark.debian13,
              pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]
PARAMS_FILE = REPO / "params" / "lab-debian13.yaml"
PARAMS = P.load(PARAMS_FILE)
PRIMARY, STANDBYS, POOL = PARAMS.primary, PARAMS.standbys, PARAMS.pgpool_host
VERSION = PARAMS.postgres["version"]
#: pgpool's lb_weight is each backend_weight over their sum
SHARES = {h.address: f"{h.lb_weight / sum(d.lb_weight for d in PARAMS.database_hosts):.6f}"
          for h in PARAMS.database_hosts}


on = partial(labtools.on, params=PARAMS_FILE)
psql = partial(labtools.psql, params=PARAMS_FILE)


def through_pgpool(sql, database="postgres"):
    """Plain psql against pgpool's port as the superuser, from the pgpool host (pool_hba lets postgres in from
    there and from pgpool.admin_clients only)."""
    password = S.secret("postgres", PARAMS)
    return on(POOL, f"PGPASSWORD={password} psql -XAt -h {POOL.address} -p {PARAMS.pgpool['port']} "
                       f"-U postgres -d {database} -c {json.dumps(sql)}").strip()


def provision(*args):
    return provision_file(PARAMS_FILE, *args)


def provision_file(params, *args, check=True):
    return sh(REPO / "ci" / "provision", *args, params, check=check)


def record_of(out):
    return REPO / out.strip().splitlines()[-1].split("Record: ")[1]


IDENTITY = "SELECT system_identifier FROM pg_control_system()"


def standbys_identity() -> dict[str, tuple[str, str]]:
    """Each standby's system identifier and start time: a clone or a restart changes them."""
    return {s.name: (psql(s, IDENTITY), psql(s, "SELECT pg_postmaster_start_time()")) for s in STANDBYS}


#: the standbys' identity on either side of the second run (standbys_identity)
AROUND_THE_SECOND_RUN = {}


@pytest.fixture(scope="module")
def provisioned_twice():
    lab("up", PARAMS_FILE)
    first = provision()
    AROUND_THE_SECOND_RUN["before"] = standbys_identity()
    second = provision()
    AROUND_THE_SECOND_RUN["after"] = standbys_identity()
    yield first, second
    lab("down", PARAMS_FILE)


def test_second_run_changes_nothing(provisioned_twice):
    first, second = provisioned_twice
    assert "provision succeeded" in first.splitlines()[-1]
    assert ": 0 steps changed," in second.splitlines()[-1], second[-3000:]


def test_check_finds_every_step_in_place(provisioned_twice):
    out = provision("--check")
    assert "check passed: all" in out, out[-3000:]


def test_runs_postgresql_17_and_pgpool_46(provisioned_twice):
    for host in PARAMS.database_hosts:
        assert psql(host, "SHOW server_version").startswith(f"{VERSION}."), host.name
    assert on(POOL, "/usr/sbin/pgpool --version 2>&1").startswith("pgpool-II version 4.6.")
    assert on(POOL, "systemctl is-active pgpool2").strip() == "active"


def test_both_standbys_stream_from_the_primary(provisioned_twice):
    rows = psql(PRIMARY, "SELECT application_name, client_addr, state FROM pg_stat_replication ORDER BY 1")
    assert rows.splitlines() == [f"{s.name}|{s.address}|streaming" for s in sorted(STANDBYS, key=lambda s: s.name)]
    for standby in STANDBYS:
        assert psql(standby, "SELECT pg_is_in_recovery()") == "t", standby.name
        assert psql(standby, "SELECT name FROM employees ORDER BY id", "testdb").split() == \
            psql(PRIMARY, "SELECT name FROM employees ORDER BY id", "testdb").split()


def test_pool_nodes_lists_three_nodes_up_with_the_weights_of_the_parameters(provisioned_twice):
    nodes = [line.split("|") for line in through_pgpool("SHOW pool_nodes").splitlines()]
    assert [(n[0], n[1], n[3], n[5], n[6]) for n in nodes] == [
        (str(i), h.address, "up", SHARES[h.address], h.role) for i, h in enumerate(PARAMS.database_hosts)]
    conf = on(POOL, "sudo grep -E '^backend_(hostname|weight|application_name)[0-9]' /etc/pgpool2/pgpool.conf")
    for i, host in enumerate(PARAMS.database_hosts):
        assert f"backend_hostname{i} = '{host.address}'" in conf
        assert f"backend_weight{i} = {host.lb_weight}" in conf
        assert f"backend_application_name{i} = '{host.name}'" in conf
    assert "backend_hostname3" not in conf


def test_reads_reach_every_server_and_writes_the_primary(provisioned_twice):
    assert through_pgpool("CREATE TEMP TABLE probe (x int); INSERT INTO probe VALUES (1); "
                          "SELECT inet_server_addr()").splitlines()[-1] == PRIMARY.address
    servers = {through_pgpool("SELECT inet_server_addr()") for _ in range(40)}
    assert servers == {h.address for h in PARAMS.database_hosts}


def test_every_standby_gets_its_own_pg_hba_lines(provisioned_twice):
    hba = on(PRIMARY, f"sudo grep -v '^#' /etc/postgresql/{VERSION}/main/pg_hba.conf")
    for standby in STANDBYS:
        assert f"replication     replicator      {standby.address}/32" in " ".join(hba.split("\t")), hba
    for host in PARAMS.database_hosts:
        mine = on(host, f"sudo grep -v '^#' /etc/postgresql/{VERSION}/main/pg_hba.conf")
        assert f"{POOL.address}/32" in mine, host.name
        for peer in PARAMS.database_hosts:     # Step 40: any of them may become the primary
            assert peer.name == host.name or f"{peer.address}/32" in mine, (host.name, peer.name)


def test_the_record_has_lines_for_each_standby(provisioned_twice):
    first, _ = provisioned_twice
    record = record_of(first)
    summary = json.loads((record / "summary.json").read_text())
    hosts_of = {s["step"]: s["hosts"] for s in summary["steps"] if s.get("step")}
    for step in (7, 11, 13, 26, 28):
        assert {s.name for s in STANDBYS} <= set(hosts_of[step]), (step, hosts_of[step])
    commands = (record / "commands.sh").read_text()
    for standby in STANDBYS:
        assert f"on {standby.name} " in commands
    nb = json.loads((record / "02-pgpool.ipynb").read_text())
    texts = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                    for o in c.get("outputs", []))
    for host in PARAMS.database_hosts:          # Step 38 judges each server's share on its own
        assert f"  {host.name}: a share of {float(SHARES[host.address]):.3f}; a correct setup lands within" in texts


def test_clone_guard_leaves_both_streaming_standbys_alone(provisioned_twice):
    """The second run, with rebuild off, clones nobody: each standby's system identifier and start time stay."""
    before, after = AROUND_THE_SECOND_RUN["before"], AROUND_THE_SECOND_RUN["after"]
    assert after == before
    assert len({v[0] for v in before.values()} | {psql(PRIMARY, IDENTITY)}) == 1   # clones of the one primary


def test_pgpool_46s_health_check_waits_out_a_stall_even_without_tls(provisioned_twice):
    """pgpool 4.6 retries a plain read its health_check_timeout interrupted, as 4.3 and 4.6 do inside TLS
    (test_guide_variants.py), where 4.3 without TLS tries again (test_idempotence.py): a standby that
    stalls for 6 s after its login is neither tried again nor detached, and the check waits in a read,
    with the guard of Step 33 paused. This is why the guard runs without TLS too; drill 3c met it once
    (a standby silent for 16 s, not detached). If this fails, 4.6 has changed."""
    seen = labtools.stalled_health_check(PARAMS_FILE)
    n = seen["node"]
    assert seen["in a read"], seen
    assert f"retrying on DB node: {n}" not in seen["log"] and f"degenerate backend request for node_id: {n}" not in seen["log"], seen


def test_the_guard_ends_pgpool_46s_health_check_held_in_a_plain_read(provisioned_twice):
    """The guard beside pgpool (lib.health_check_guard) ends the same held check after its limit, logs it,
    and pgpool starts another: no verdict on the node."""
    seen = labtools.stalled_health_check(PARAMS_FILE, stall_s=9, guard=True)
    assert "held in a read for 5 s, beyond health_check_timeout: ended" in seen["failover log"], seen
    assert f"health check failed on node {seen['node']}" not in seen["log"], seen


def test_failover_drills_pass_and_the_other_standby_follows_the_new_primary(provisioned_twice, tmp_path):
    """Notebook 04 unchanged on two standbys: when the primary stops, failover.sh promotes the most
    advanced standby and follow_primary.sh points the other at it (a path one standby never takes);
    when it crashes while bravo lags, charlie is the one promoted; the notebook ends with the roles
    it started from."""
    texts = run_drills(PARAMS_FILE, tmp_path / "04.ipynb")
    primary, first, second = PRIMARY.address, STANDBYS[0].address, STANDBYS[1].address
    assert f"primary node 0 ({primary}) failed" in texts, texts[-3000:]
    assert f"promoting node 1 ({first}): the most advanced standby" in texts       # drill 1: equal, the lower node
    assert f"node 2 ({second}): following the new primary {first}" in texts
    assert f"node 2 ({second}) streams from {first} and has replayed its WAL: attached" in texts
    assert f"node 2 ({second}): following the new primary {primary}" in texts     # and on the switch back
    crash = texts[texts.index(drills.KILL_ALL):]
    assert crash.index(f"promoting node 2 ({second}): the most advanced standby") < crash.index("roles now")
    assert f"node 1 ({first}): following the new primary {second}" in crash
    assert "roles: " + ", ".join(f"{h.name} {h.role}" for h in PARAMS.database_hosts) in texts
    rows = psql(PRIMARY, "SELECT application_name, state FROM pg_stat_replication ORDER BY 1")
    assert rows.splitlines() == [f"{s.name}|streaming" for s in sorted(STANDBYS, key=lambda s: s.name)]


def back_to_the_parameters_primary(params):
    """A drill that failed half way leaves another server the primary, which provisioning keeps: the
    tests after it start from the parameters' roles."""
    env = Hosts(P.load(params))
    try:
        print(drills.back_to_preferred(env))
    finally:
        env.close()


def test_switchover_there_and_back_loses_nothing(provisioned_twice, capsys):
    """ci/provision --switchover charlie, then alpha, while a writer commits through pgpool. charlie
    is not the lowest standby (on a tie failover.sh alone would promote bravo): the request makes the
    difference. Every acknowledged row is on the primary afterwards, counted there."""
    env = Hosts(PARAMS)
    try:
        drills.roles_line(env)                 # from the parameters' roles, or a failure that says so
        drills.prepare(env)
        with drills.Traffic(env) as traffic:
            started = time.monotonic()
            there = provision("--switchover", "charlie")
            back = provision("--switchover", "alpha")
            ended = time.monotonic()
        assert "roles now: alpha standby, bravo standby, charlie primary" in there, there
        assert "alpha: no commit past the switch point that charlie lacks" in there
        assert "roles now: alpha primary, bravo standby, charlie standby" in back, back
        lost = drills.losses(env, traffic.writer)
        assert lost.primary == "alpha" and not lost.lost, lost
        with capsys.disabled():     # the figures for book/failover.md
            print(f"\nswitchover there and back: {len(traffic.writer.acked)} rows acknowledged, 0 lost; "
                  f"longest write gap {traffic.writer.longest_gap(started, ended):.1f} s, failed writes "
                  f"{traffic.writer.failures_between(started, ended)}")
        refused = provision_file(PARAMS_FILE, "--switchover", "alpha", check=False)
        assert refused.returncode == 1 and "alpha is already the primary. Nothing was changed." in refused.stdout
    finally:
        drills.clean_up(env)
        env.close()


def test_after_a_crash_provisioning_counts_and_keeps_what_only_the_old_primary_held(provisioned_twice, tmp_path):
    """Both standbys lag (the primary's WAL senders paused) when the primary crashes, so alpha holds
    commits no standby received. With options.refuse_diverged provisioning refuses, naming the count and
    changing nothing. With the unchanged file it heals: alpha's WAL past the switch point kept aside,
    its commits counted (at least the acknowledged rows the writer lost), the new primary's rows all
    kept, every node up. A switchover then gives alpha its role back."""
    env = Hosts(PARAMS)
    try:
        drills.prepare(env)
        with drills.Traffic(env) as traffic:
            time.sleep(1)
            for standby in env.standbys:        # both fall behind: the last commits are sent to nobody
                env.primary.run(drills.stall_sender(env.primary, standby, 3), user="root")
            time.sleep(1)
            env.primary.run(drills.KILL_ALL, user="root")
            promoted = None
            for _ in range(100):
                promoted = next((s for s in STANDBYS if psql(s, "SELECT pg_is_in_recovery()") == "f"), None)
                if promoted and traffic.writer.first_ok_after(time.monotonic() - 0.5):
                    break
                time.sleep(0.2)
            assert promoted, "no standby was promoted"
        lost = drills.losses(env, traffic.writer)
        assert lost.in_flight and not lost.defects, lost            # asynchronous: a tail, in flight

        refusing = variant(tmp_path, PARAMS.environment, lambda d: d.setdefault("options", {}).update(
            refuse_diverged=True), base=PARAMS_FILE)
        refused = provision_file(refusing, check=False)
        assert refused.returncode == 1 and "options.refuse_diverged is set: not rejoined, nothing was changed" \
            in refused.stdout, refused.stdout
        assert on(PRIMARY, "pg_lsclusters --no-header 17 main").split()[3].startswith("down")

        healed = provision()
        held = int(re.search(r"heal: alpha held (\d+) commits that \w+ never received", healed).group(1))
        assert held >= len(lost.in_flight), (held, len(lost.in_flight))
        kept = re.search(r"their WAL is kept on alpha in (\S+) ", healed).group(1)
        assert on(PRIMARY, f"sudo ls {kept}").split(), kept
        assert psql(PRIMARY, "SELECT pg_is_in_recovery()") == "t" and "provision succeeded" in healed
        assert drills.losses(env, traffic.writer).lost == lost.lost       # nothing else went missing
        provision("--switchover", "alpha")
        assert "roles: alpha primary, bravo standby, charlie standby" == drills.roles_line(env)
    finally:
        drills.clean_up(env)
        env.close()


def test_synchronous_drills_lose_nothing_when_the_lower_standby_lags(provisioned_twice, tmp_path):
    """postgres.synchronous with two standbys (ANY 1): while bravo lags, charlie alone acknowledges
    commits; when the primary crashes then, promoting bravo (the lowest node id, pgpool's choice) would
    lose them. failover.sh promotes charlie, and not one acknowledged row is lost in any drill.
    The last test before --teardown, which takes the lab as it is: so it is not provisioned back."""
    params = variant(tmp_path, PARAMS.environment, lambda d: d["postgres"].update(synchronous=True), base=PARAMS_FILE)
    assert "provision succeeded" in provision_file(params)
    try:
        texts = run_drills(params, tmp_path / "04-sync.ipynb")
        assert "commits are acknowledged once a standby has it too (synchronous)" in texts
        assert len(re.findall(r"acknowledged rows lost \(counted on the primary, \w+\): 0$", texts, re.M)) == 6, texts
        crash = texts[texts.index(drills.KILL_ALL):]
        assert crash.index(f"promoting node 2 ({STANDBYS[1].address}): the most advanced standby") < \
            crash.index("roles now"), crash[:3000]
    finally:
        back_to_the_parameters_primary(params)


def test_teardown_leaves_every_standby_standalone(provisioned_twice):
    out = provision("--teardown")
    assert f"{POOL.name} (root) $ systemctl disable --now pgpool2" in out
    for standby in STANDBYS:
        assert f"{standby.name} (root) $ pg_ctlcluster {VERSION} main promote" in out
        assert psql(standby, "SELECT pg_is_in_recovery()") == "f", standby.name
    assert on(POOL, "systemctl is-active pgpool2 || true").strip() == "inactive"
    again = provision("--teardown")
    assert "pgpool2 already stopped" in again
    for standby in STANDBYS:
        assert f"{standby.name}: already a standalone server" in again
