from lib.pgpoolconf import render, set_settings

SHIPPED = """backend_clustering_mode = 'streaming_replication'
                                   # Clustering mode
#listen_addresses = 'localhost'
                                   # Host name or IP address to listen on
#port = 5433
#backend_hostname0 = 'host1'
                                   # Host name or IP address to connect to for backend 0
#load_balance_mode = on
#log_line_prefix = '%m: %a pid %p: '   # printf-style string
"""


def test_uncomments_sets_appends_and_is_idempotent():
    settings = {"listen_addresses": "*", "port": 9999, "backend_hostname0": "10.0.0.1",
                "backend_hostname1": "10.0.0.2", "load_balance_mode": True,
                "backend_clustering_mode": "streaming_replication"}
    new, changes = set_settings(SHIPPED, settings)
    assert "listen_addresses = '*'\n" in new and "port = 9999\n" in new
    assert "backend_hostname0 = '10.0.0.1'\n" in new and new.endswith("backend_hostname1 = '10.0.0.2'\n")
    assert "load_balance_mode = on\n" in new
    assert "-#port = 5433" in changes and "+port = 9999" in changes
    assert not any("clustering" in c for c in changes)
    again, none = set_settings(new, settings)
    assert none == [] and again == new


def test_changes_an_active_value_keeping_its_comment():
    text = "port = 5433\t\t# the port\n"
    new, changes = set_settings(text, {"port": 9999})
    assert new == "port = 9999\t\t# the port\n" and changes == ["-port = 5433\t\t# the port", "+port = 9999\t\t# the port"]


def test_values_with_quotes_and_hashes():
    assert render("it's") == "'it''s'" and render(False) == "off" and render(3) == "3"
    text = "log_line_prefix = '%m # %p'  # a comment\n"
    new, changes = set_settings(text, {"log_line_prefix": "%m # %p"})
    assert changes == [] and new == text


def test_the_socket_directory_setting_takes_the_name_this_pgpool_ships():
    from lib import pgpool_host
    shipped_43 = "listen_addresses = 'localhost'\n#socket_dir = '/var/run/postgresql'\n"
    shipped_46 = "#listen_addresses = 'localhost'\n#unix_socket_directories = '/var/run/postgresql'\n"
    assert pgpool_host.socket_setting(shipped_43) == "socket_dir"
    assert pgpool_host.socket_setting(shipped_46) == "unix_socket_directories"
    text, _ = set_settings(shipped_46, {pgpool_host.socket_setting(shipped_46): pgpool_host.SOCKET_DIR})
    assert "unix_socket_directories = '/var/run/postgresql'" in text.splitlines()


def test_every_setting_of_step_30_falls_in_one_of_the_guides_groups():
    from lib import params as P
    from lib import part2, pgpool_host
    params = P.load()
    names = list(pgpool_host.pgpool_settings(params))
    groups = part2.guide_groups(names, params.database_hosts)
    grouped = [n for _, _, found in groups for n in found]
    assert sorted(grouped) == sorted(names), set(names) ^ set(grouped)
    assert [t for t, _, _ in groups][:4] == ["Listening", "Backend 0: the primary (vm1)", "Backend 1: a standby (vm2)",
                                             "Load balancing"]


def test_a_restart_is_pending_when_the_files_differ_from_what_pgpool_read(tmp_path):
    import subprocess
    import time

    from lib.pgpool_host import restart_pending_script

    conf, pid, loaded = tmp_path / "pgpool.conf", tmp_path / "pgpool.pid", tmp_path / "loaded"
    conf.write_text("backend_weight0 = 1\n")
    pending = lambda: "newer" in subprocess.run(["bash", "-c", restart_pending_script([str(conf)], str(loaded), str(pid))],
                                                capture_output=True, text=True).stdout
    pid.write_text("1\n")
    assert not pending()                                 # started after the file was written
    time.sleep(0.01)
    conf.write_text("backend_weight0 = 2\n")
    assert pending()                                     # without checksums: the file's time says so
    subprocess.run(["bash", "-c", f"sha256sum {conf} > {loaded}"], check=True)      # what a (re)start records
    assert not pending()
    conf.write_text("backend_weight0 = 1\n")
    pid.touch()                                          # the pid file's time can no longer hide the change
    assert pending()
