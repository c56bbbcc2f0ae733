"""A diagnosis cannot change a host: what it may run is checked before anything is sent."""
import pytest

from lib.diagnose.readonly import NotReadOnly, check_argv, check_sql


@pytest.mark.parametrize("argv", [
    ["cat", "--", "/etc/postgresql/15/main/pg_hba.conf"],
    ["pg_lsclusters", "--no-header", "15", "main"],
    ["tail", "-n", "40", "/var/log/postgresql/postgresql-15-main.log"],
    ["test", "-f", "/var/lib/postgresql/15/main/standby.signal"],
    ["stat", "-c", "%U %a", "/var/lib/postgresql/.pgpoolkey"],
    ["pg_isready", "-h", "10.0.0.1", "-p", "5432", "-t", "2"],
    ["pcp_node_info", "-h", "localhost", "-p", "9898", "-U", "pgpool", "-w", "-v", "-n", "0"],
    ["hostname"],
])
def test_readers_may_run(argv):
    check_argv(argv)


@pytest.mark.parametrize("argv, said", [
    (["rm", "-rf", "/"], "not one of the programs"),
    (["bash", "-c", "cat x > y"], "not one of the programs"),
    (["systemctl", "restart", "pgpool2"], "not one of the programs"),
    (["pcp_attach_node", "-n", "1"], "not one of the programs"),
    (["journalctl", "--vacuum-size=1K"], "not one of the programs"),
    (["ss", "-K", "dst", "10.0.0.1"], "not one of the programs"),
    (["hostname", "vm9"], "not how a diagnosis runs hostname"),
    (["tail", "-f", "/var/log/syslog"], "not how a diagnosis runs tail"),
    (["cat", "/etc/x", "-"], "not how a diagnosis runs cat"),
    (["pg_isready", "-h", "10.0.0.1;reboot", "-p", "5432", "-t", "2"], "not how a diagnosis runs pg_isready"),
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
    ("SELECT pg_reload_conf()", "pg_reload_conf: not a function a diagnosis may call"),
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "pg_terminate_backend: not a function"),
    ("SELECT set_config('x', 'y', false)", "set_config: not a function"),
    ("SELECT * INTO t FROM pg_class", "acts"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "acts"),
    ("SELECT 1 \\g /tmp/x", "no backslash"),
    ("COPY t TO '/tmp/x'", "only SELECT"),
    ('SELECT "pg_reload_conf"()', "pg_reload_conf: not a function a diagnosis may call"),
    ("SELECT pg_terminate_backend/**/(1)", "no comments"),
    ("SELECT 1 -- '\n , pg_reload_conf() --'", "no comments"),
    ('SELECT "pg_reload_""conf"()', "not a function"),
    ("SELECT pg_catalog.pg_replication_slot_advance('s', '0/0')", "pg_replication_slot_advance: not a function"),
    ("SELECT lo_import('/etc/shadow')", "lo_import: not a function"),
    ("SELECT $$x$$", "without dollar quotes"),
    ("SELECT 'unterminated", "unterminated"),
])
def test_acting_sql_is_refused(sql, said):
    with pytest.raises(NotReadOnly, match=said):
        check_sql(sql)


@pytest.mark.parametrize("sql", [       # every query a diagnosis makes (lib/diagnose/checks/)
    "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), coalesce(address, ''), "
    "coalesce(netmask, ''), auth_method, coalesce(error, '') FROM pg_hba_file_rules ORDER BY line_number",
    "SELECT host(client_addr), application_name, state, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)"
    "::bigint FROM pg_stat_replication",
    "SELECT setting, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'listen_addresses'",
    "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int",
    "SELECT inet_server_addr()",
    "SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'wal_keep_size'",
    "SHOW pool_nodes",
])
def test_the_diagnosis_own_queries_pass(sql):
    check_sql(sql)
