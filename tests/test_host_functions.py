"""The shell functions the steps call on the hosts (lib.host_functions), run here with bash."""
import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from lib import by_hand, host_functions


def bash(script: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", host_functions.defined(script)], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_every_function_parses_and_a_script_gets_only_what_it_calls():
    for name, body in host_functions.FUNCTIONS.items():
        assert subprocess.run(["bash", "-n", "-c", body]).returncode == 0, name
    assert host_functions.called("systemctl stop x && cluster_is down") == ["cluster_is"]
    # stop_basebackup_into waits with wait_for: both go along
    assert host_functions.called("stop_basebackup_into /d") == ["wait_for", "stop_basebackup_into"]
    assert host_functions.defined("echo set_conf_x") == "echo set_conf_x"


def test_wait_for_is_bounded_and_names_what_it_waited_for():
    assert bash(host_functions.wait_for("true", 1, "never")).returncode == 0
    late = bash(host_functions.wait_for("false", 1, "the cluster is not down") + " && echo not reached")
    assert late.returncode == 1 and late.stderr.strip() == "the cluster is not down after 1 s"
    assert late.stdout == ""


def cluster(version: int) -> SimpleNamespace:
    """Parameters as lib.by_hand.variables reads them."""
    return SimpleNamespace(postgres={"version": version, "cluster": "main", "conf_dir": f"/etc/postgresql/{version}/main",
                                     "data_dir": f"/var/lib/postgresql/{version}/main"})


def test_cluster_is_reads_pg_lsclusters_for_the_clusters_version(tmp_path):
    fake = tmp_path / "pg_lsclusters"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "--no-header 15 main" ] && '
                    'echo "15  main    5432 down,recovery postgres /var/lib/postgresql/15/main x.log"\n')
    fake.chmod(0o755)
    run = lambda test, version: subprocess.run(["bash", "-c", host_functions.defined(test, cluster(version))],
                                               env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).returncode
    assert run(host_functions.cluster_is("down", "down,recovery"), 15) == 0
    assert run(host_functions.cluster_is("down"), 15) == 1
    assert run(host_functions.cluster_is("down,recovery"), 16) == 1


SHIPPED = """# a shipped file
#listen_addresses = 'localhost'\t\t# what IP address(es) to listen on;
port = 5432\t\t\t\t# (change requires restart)
#port = 6543
  # wal_level = replica\t\t\t# minimal, replica, or logical
max_wal_senders = 10
max_wal_senders = 3   # the last one counts
#max_wal_senders_extra = 1
"""


@pytest.mark.parametrize("settings", [
    ["listen_addresses = '*'", "wal_level = 'replica'", "max_wal_senders = 5", "wal_keep_size = 64"],
    ["port = 9999", "backend_hostname0 = '10.0.0.1'", "listen_addresses = '*'"],
])
def test_set_conf_on_the_host_gives_what_by_hand_says(tmp_path, settings):
    conf = tmp_path / "x.conf"
    conf.write_text(SHIPPED)
    conf.chmod(0o640)
    done = bash(f"set_conf {conf}", "".join(s + "\n" for s in settings))
    assert done.returncode == 0, done.stderr
    assert conf.read_text() == by_hand.set_conf(SHIPPED, settings)
    assert (tmp_path / "x.conf.pgguide-orig").read_text() == SHIPPED and oct(conf.stat().st_mode)[-3:] == "640"
    written = conf.read_text()
    assert "max_wal_senders = 10\n" in written and "#max_wal_senders_extra = 1\n" in written   # not theirs
    again = bash(f"set_conf {conf}", "".join(s + "\n" for s in settings))
    assert again.returncode == 0 and conf.read_text() == written            # a second run changes nothing


def test_stop_basebackup_into_stops_only_a_backup_into_that_directory():
    def backup_into(directory: str) -> subprocess.Popen:     # a process that looks like one to pgrep -f
        return subprocess.Popen(["bash", "-c", f'exec -a "pg_basebackup -h x -D {directory} -P" sleep 30'])
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    mine, other = backup_into("/srv/data/main/"), backup_into("/srv/data/main2/")
    time.sleep(0.3)
    try:
        # the function looks for postgres's processes; these are this user's
        as_me = host_functions.FUNCTIONS["stop_basebackup_into"].replace("-u postgres ", f"-u {user} ")
        done = bash(as_me + "\nstop_basebackup_into /srv/data/main/")
        assert done.returncode == 0, done.stderr
        assert mine.wait(timeout=10) is not None and other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()


def test_an_action_that_calls_a_function_is_sent_with_its_definition_and_the_clusters_variables():
    from lib import ops
    from tests.test_ops import FakeRemote

    r = FakeRemote()
    ops.Command(r, "root", "systemctl start postgresql && " + ops.wait_for(host_functions.cluster_is("online"), 30,
                                                                             "not online")).run()
    ops.Command(r, "root", "systemctl reload postgresql").run()
    (sent, _, _), (plain, _, _) = r.ran
    assert sent.startswith("PG_BIN=/usr/lib/postgresql/15/bin\n") and "PG_VERSION=15\n" in sent
    assert "\nwait_for() {" in sent and "\ncluster_is() {" in sent and "\nset_conf() {" not in sent
    assert sent.endswith("systemctl start postgresql && wait_for 30 'not online' 'cluster_is online'")
    assert plain == "systemctl reload postgresql"
    assert subprocess.run(["bash", "-n", "-c", sent]).returncode == 0


def test_set_conf_changes_nothing_when_its_settings_are_cut_off(tmp_path):
    """A connection cut mid-send leaves the last setting without its newline (`ssl_cert = '/etc/ss`):
    written, it would be a line pgpool cannot parse."""
    conf = tmp_path / "x.conf"
    conf.write_text(SHIPPED)
    cut = bash(f"set_conf {conf}", "port = 9999\nssl_cert = '/etc/ss")
    assert cut.returncode == 1 and "did not arrive whole" in cut.stderr
    assert conf.read_text() == SHIPPED and not list(tmp_path.glob("x.conf.*"))
