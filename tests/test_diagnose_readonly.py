"""A diagnosis cannot change a host: what it may run is checked before anything is sent."""
import pytest

from lib.diagnose.readonly import NotReadOnly, check_argv, check_sql


@pytest.mark.parametrize("argv", [
    ["cat", "--", "/etc/postgresql/15/main/pg_hba.conf"],
    ["pg_lsclusters", "--no-header"],
    ["systemctl", "is-active", "pgpool2"],
    ["grep", "-c", "x", "/etc/pgpool2/pgpool.conf"],
    ["pg_isready", "-h", "10.0.0.1", "-p", "5432"],
    ["pcp_node_info", "-h", "localhost", "-w", "-n", "0"],
])
def test_readers_may_run(argv):
    check_argv(argv)


@pytest.mark.parametrize("argv, said", [
    (["rm", "-rf", "/"], "not one of the programs"),
    (["bash", "-c", "cat x > y"], "not one of the programs"),
    (["systemctl", "restart", "pgpool2"], "acts"),
    (["systemctl"], "acts"),
    (["ufw", "allow", "5432"], "acts"),
    (["pcp_attach_node", "-n", "1"], "not one of the programs"),
    (["journalctl", "--rotate"], "not a read"),
    (["psql", "-c", "DROP TABLE x"], "through ReadOnlyHost.query"),
    ([], "empty"),
])
def test_anything_else_is_refused(argv, said):
    with pytest.raises(NotReadOnly, match=said):
        check_argv(argv)


@pytest.mark.parametrize("sql", [
    "SELECT name, setting FROM pg_settings WHERE name = 'listen_addresses'",
    "SHOW synchronous_standby_names",
    "WITH r AS (SELECT * FROM pg_stat_replication) SELECT count(*) FROM r",
    "SELECT count(*) FROM pg_file_settings WHERE name = 'x;y' AND sourcefile LIKE '%auto.conf'",
    "SELECT pg_is_in_recovery();",
])
def test_reading_sql_may_run(sql):
    check_sql(sql)


@pytest.mark.parametrize("sql, said", [
    ("ALTER SYSTEM SET listen_addresses = '*'", "only SELECT"),
    ("SELECT 1; DROP TABLE t", "one statement"),
    ("SELECT pg_reload_conf()", "function that acts"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "function that acts"),
    ("SELECT set_config('x', 'y', false)", "function that acts"),
    ("SELECT * INTO t FROM pg_class", "acts"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "acts"),
    ("SELECT 1 \\g /tmp/x", "one statement"),
    ("COPY t TO '/tmp/x'", "only SELECT"),
])
def test_acting_sql_is_refused(sql, said):
    with pytest.raises(NotReadOnly, match=said):
        check_sql(sql)
