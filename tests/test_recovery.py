"""pgpool's online recovery without a lab: rejoin-standby, the one program a peer may run on a
database server, run with stand-ins for PostgreSQL's tools. It must refuse before changing anything
unless the server proves it may be rewound, and count and keep what only it held."""
import copy
import os
import stat
import subprocess

import pytest

from lib import params as P
from lib import recovery

PARAMS = P.load()
PRIMARY = PARAMS.database_hosts[1].address          # a member of the cluster, other than this server
BIN = f"/usr/lib/postgresql/{int(PARAMS.postgres['version'])}/bin"

TOOLS = {
    "ip": f'echo "1: lo    inet 127.0.0.1/8 scope host lo"; echo "2: eth0    inet {PARAMS.database_hosts[0].address}/24 brd '
          f'10.213.93.255 scope global eth0"',                                              # vm1's addresses
    # state file: online / down / online,recovery
    "pg_lsclusters": 'echo "15 main 5432 $(cat $FAKE/state) postgres /data /log"',
    "pg_ctlcluster": 'echo "$*" >> $FAKE/calls; echo down > $FAKE/state',
    "pg_controldata": 'printf "Database system identifier:           %s\\nLatest checkpoint\'s TimeLineID:       1\\n" '
                      '"$(cat $FAKE/my_id)"',
    "psql": '''case "$*" in
  *IDENTIFY_SYSTEM*) echo "$(cat $FAKE/their_id)|$(cat $FAKE/their_timeline)|0/9000000|" ;;
  *history*) printf '1\\t0/5000148\\tno recovery target specified\\n' ;;
  *pg_walfile_name*) echo 000000020000000000000005 ;;
  *pg_stat_wal_receiver*) echo streaming ;;
esac''',
    "pg_waldump": 'for i in $(seq "$(cat $FAKE/commits)"); do echo "rmgr: Transaction desc: COMMIT 2026"; done; exit 1',
    "pg_rewind": 'echo "pg_rewind $*" >> $FAKE/calls; [ -f $FAKE/rewind_fails ] && exit 1; '
                 'echo "pg_rewind: servers diverged at WAL location 0/5000148 on timeline 1"; echo "pg_rewind: Done!"',
    "pg_basebackup": 'echo "pg_basebackup $*" >> $FAKE/calls; while [ "$1" != -D ]; do shift; done; '
                     'cp -r $FAKE/../15/main.set-aside-*/postgresql.auto.conf "$2"/',
    "sudo": 'echo "sudo $*" >> $FAKE/calls',
}


@pytest.fixture
def host(tmp_path):
    """A server's files under tmp_path: its data directory with WAL, and stand-ins for its tools."""
    fake, bindir = tmp_path / "fake", tmp_path / "bin"
    fake.mkdir(), bindir.mkdir()
    data = tmp_path / "15" / "main"
    (data / "pg_wal").mkdir(parents=True)
    for name in ("000000010000000000000004", "000000010000000000000005", "000000010000000000000006",
                 "000000020000000000000005", "00000002.history"):
        (data / "pg_wal" / name).write_text("wal")
    (data / "postgresql.auto.conf").write_text("primary_conninfo = 'host=old'\n")
    for name, body in TOOLS.items():
        path = bindir / name
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    for name, value in {"state": "down", "my_id": "7000", "their_id": "7000", "their_timeline": "2", "commits": "3"}.items():
        (fake / name).write_text(value + "\n")
    (fake / "calls").write_text("")
    return tmp_path


def run(host, command: str, refuse_diverged: bool = False):
    params = copy.deepcopy(PARAMS)
    params.postgres["data_dir"] = str(host / "15" / "main")
    params.options["refuse_diverged"] = refuse_diverged
    text = recovery.rejoin_program(params).replace(BIN, str(host / "bin")) \
        .replace(recovery.REJOIN_LOG, str(host / "rejoin.log"))
    script = host / "rejoin-standby"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{host / 'bin'}:{os.environ['PATH']}", "FAKE": str(host / "fake"),
           "SSH_ORIGINAL_COMMAND": command}
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=30)
    return out, (host / "fake" / "calls").read_text()


def changed_nothing(host, calls):
    data = host / "15" / "main"
    return "pg_rewind" not in calls and "pg_basebackup" not in calls and "stop" not in calls and \
        not (data / "standby.signal").exists() and not any(p.name.startswith("main.") for p in data.parent.iterdir())


def test_a_server_that_proves_it_may_is_counted_kept_rewound_and_made_a_standby(host):
    out, calls = run(host, f"rejoin {PRIMARY}")
    assert out.returncode == 0, out.stdout + out.stderr
    data = host / "15" / "main"
    assert "holds 3 commits past it" in out.stdout
    kept = [p for p in data.parent.iterdir() if ".diverged-" in p.name]
    # the WAL of its own timeline from the segment holding the switch point on, not the new timeline's
    assert len(kept) == 1 and sorted(p.name for p in kept[0].iterdir()) == \
        ["000000010000000000000005", "000000010000000000000006"]
    assert f"pg_rewind -D {data}" in calls and "pg_basebackup" not in calls
    assert (data / "standby.signal").exists()
    auto = (data / "postgresql.auto.conf").read_text()
    assert f"host={PRIMARY} " in auto and "host=old" not in auto and "application_name=vm1" in auto
    assert "pg_rewind: Done!" in (host / "rejoin.log").read_text()


@pytest.mark.parametrize("setup, why", [
    ({"state": "online"}, "it runs as a primary"),
    ({"their_id": "8000"}, "another cluster"),
    ({"their_timeline": "1"}, "not promoted past it"),
])
def test_without_proof_nothing_is_changed(host, setup, why):
    for name, value in setup.items():
        (host / "fake" / name).write_text(value + "\n")
    out, calls = run(host, f"rejoin {PRIMARY}")
    assert out.returncode == 1 and why in out.stdout and "nothing was changed" in out.stdout
    assert changed_nothing(host, calls)


def test_a_host_that_is_none_of_the_servers_refuses(host):
    (host / "bin" / "ip").write_text("#!/bin/bash\necho '2: eth0    inet 192.0.2.7/24 scope global eth0'\n")
    out, calls = run(host, "ready")
    assert out.returncode == 2 and "none of this host's addresses" in out.stderr and changed_nothing(host, calls)


def test_only_the_clusters_servers_and_the_three_verbs_are_accepted(host):
    out, calls = run(host, "rejoin 192.0.2.99")
    assert out.returncode == 1 and "none of this cluster's servers" in out.stdout and changed_nothing(host, calls)
    out, calls = run(host, f"rejoin {PRIMARY}; rm -rf /")
    assert out.returncode == 1 and changed_nothing(host, calls)
    out, calls = run(host, "bash -i")
    assert out.returncode == 2 and changed_nothing(host, calls)


def test_refuse_diverged_refuses_when_it_holds_commits(host):
    out, calls = run(host, f"rejoin {PRIMARY}", refuse_diverged=True)
    assert out.returncode == 1 and "refuse_diverged" in out.stdout and changed_nothing(host, calls)
    (host / "fake" / "commits").write_text("0\n")
    out, calls = run(host, f"rejoin {PRIMARY}", refuse_diverged=True)
    assert out.returncode == 0 and "holds 0 commits" in out.stdout


def test_a_running_standby_is_stopped_first(host):
    (host / "fake" / "state").write_text("online,recovery\n")
    out, calls = run(host, f"rejoin {PRIMARY}")
    assert out.returncode == 0 and calls.index("stop -m fast") < calls.index("pg_rewind")


def test_when_pg_rewind_fails_the_old_data_directory_is_moved_aside_not_deleted(host):
    (host / "fake" / "rewind_fails").write_text("")
    out, calls = run(host, f"rejoin {PRIMARY}")
    assert out.returncode == 0, out.stdout + out.stderr
    aside = [p for p in (host / "15").iterdir() if ".set-aside-" in p.name]
    assert len(aside) == 1 and (aside[0] / "pg_wal" / "000000010000000000000006").exists()
    assert "pg_basebackup" in calls and "kept as" in out.stdout


def test_start_goes_through_the_one_sudo_command(host):
    out, calls = run(host, "start")
    assert out.returncode == 0 and "started" in out.stdout
    assert calls.strip() == f"sudo -n {recovery.start_command(PARAMS)}"
    assert recovery.start_command(PARAMS) in recovery.sudoers(PARAMS)


def test_pgpools_scripts_checkpoint_first_and_attach_only_a_caught_up_standby(tmp_path):
    first, start = recovery.first_stage_script(PARAMS), recovery.remote_start_script(PARAMS)
    for text in (first, start, recovery.rejoin_program(PARAMS)):
        (tmp_path / "s").write_text(text)
        assert subprocess.run(["bash", "-n", str(tmp_path / "s")]).returncode == 0
    assert first.index("CHECKPOINT") < first.index("ssh ")
    assert "state = 'streaming'" in start and start.rstrip().endswith("exit 1")
