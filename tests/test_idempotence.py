"""Provisioning on the lab, checked from outside: two runs leave two run records, the second
changes nothing (file hashes, rows, restarts) and says so; the records hold no secret; the
result is what the guide promises (read with plain psql on the hosts); --check sees drift
and names the step that fixes it; --teardown does what it says; a broken step stops with a
message that says why. Runs before test_lab.py, which leaves a fresh lab."""
import json
import os
import shlex
import shutil
import subprocess
import time

import pytest
import yaml

from lib import REPO, conninfo, diagrams, failover_scripts, guide, part1, part2, pgpool_client, pgpool_host
from lib import params as P
from lib.clone_guard import CloneDecision
from lib.remote import Hosts, StepFailed
from labtools import PARAMS_FILE, on, psql, sh, stalled_health_check
from lib.provision.record import find_in_record
from lib.secrets import secret_forms
from lib.wait import wait_until

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]
PARAMS = P.load()
WATCHED = ["/etc/postgresql/15/main/postgresql.conf", "/etc/postgresql/15/main/pg_hba.conf",
           "/var/lib/postgresql/15/main/postgresql.auto.conf", "/var/lib/postgresql/.pgpass",
           "/var/lib/postgresql/.ssh/authorized_keys"]
# Not the lab's demo values: the records are searched for these and their hashed forms.
SECRETS = {"PGGUIDE_REPLICATION_PASSWORD": "Repl-7f3a-secret", "PGGUIDE_POSTGRES_PASSWORD": "Pg-91c2-secret",
           "PGGUIDE_PGPOOL_PASSWORD": "Pool-5d8e-secret", "PGGUIDE_APP_PASSWORD": "App-2c4b-secret",
           "PGGUIDE_PGPOOL_KEY": "Key-0b6f-secret"}
ROLE_OF = {"PGGUIDE_REPLICATION_PASSWORD": "replicator", "PGGUIDE_POSTGRES_PASSWORD": "postgres",
           "PGGUIDE_PGPOOL_PASSWORD": "pgpool", "PGGUIDE_APP_PASSWORD": "app"}
#: the steps a first run on a fresh lab must report as changed (the journal's instrumentation)
CHANGING_STEPS = {1, 2, 3, 5, 7, 8, 9, 11, 14, 17, 19, 20, 21, 22, 23, 25, 26, 28, 30, 31, 32, 33, 35, 39,
                  40, 41, 42, 43, 44, 45}


POOL_FILES = ["/etc/pgpool2/pgpool.conf", "/etc/pgpool2/pool_hba.conf", "/etc/pgpool2/pool_passwd",
              "/etc/pgpool2/pcp.conf", "/var/lib/postgresql/.pgpoolkey", "/var/lib/postgresql/.pcppass",
              "/etc/pgpool2/failover.sh", "/etc/pgpool2/follow_primary.sh", "/etc/pgpool2/failback.sh", "/var/lib/postgresql/.ssh/known_hosts",
              "/var/lib/postgresql/.ssh/id_ed25519_pgguide.pub",
              "/etc/systemd/system/pgpool2.service.d/pgguide-stop.conf"]


def snapshot():
    """sha256 of every file Parts 1 and 2 touch, row counts, and when each server started."""
    state = {}
    for host in ("vm1", "vm2"):
        state[host] = on(host, f"sudo sha256sum {' '.join(WATCHED)}; "
                               "sudo -u postgres psql -XAtc 'select count(*) from employees' testdb; "
                               "sudo -u postgres psql -XAtc 'select pg_postmaster_start_time()'")
    state["vm3"] = on("vm3", f"sudo sha256sum {' '.join(POOL_FILES)}; systemctl show -p MainPID pgpool2")
    return state


@pytest.fixture(scope="module")
def secrets_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secrets") / "lab.secrets"
    path.write_text("# test secrets\n" + "".join(f"{k}={v}\n" for k, v in SECRETS.items()))
    path.chmod(0o600)
    return path


def provision(secrets_file):
    out = sh(REPO / "ci" / "provision", "--secrets", secrets_file)
    return REPO / out.strip().splitlines()[-1].split("Record: ")[1]


def check(secrets_file):
    return sh(REPO / "ci" / "provision", "--check", "--secrets", secrets_file, check=False)


@pytest.fixture(scope="module")
def provisioned_twice(secrets_file):
    sh(REPO / "ci" / "lab", "up")
    # every CREATE/ALTER ROLE goes to the primary's log: where a plain password would show
    on("vm1", "echo \"log_statement = 'ddl'\" | sudo tee /etc/postgresql/15/main/conf.d/log-ddl.conf >/dev/null "
              "&& sudo systemctl reload postgresql")
    first_run = provision(secrets_file)
    before = snapshot()
    second_run = provision(secrets_file)
    return first_run, second_run, before, snapshot()


def summary(record):
    return json.loads((record / "summary.json").read_text())


def outputs(record, notebook="01-streaming-replication.ipynb"):
    nb = json.loads((record / notebook).read_text())
    return "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                   for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_second_run_changes_no_file_no_row_and_restarts_nothing(provisioned_twice):
    _, _, before, after = provisioned_twice
    assert before == after
    assert before["vm1"].splitlines()[len(WATCHED)] == "6"    # Alice, Bob, Charlie, David; Frank, Grace


def test_two_runs_leave_two_records(provisioned_twice):
    first, second, _, _ = provisioned_twice
    assert first != second and first.parent == second.parent == REPO / "runs" / "lab"
    for record in (first, second):
        # kernels.log only when a kernel wrote to stderr (ipykernel's shutdown noise, now and then)
        names = sorted(p.name for p in record.iterdir() if p.name not in ("kernels.log", "files"))
        assert names == ["00-environment.html", "00-environment.ipynb", "01-streaming-replication.html",
                         "01-streaming-replication.ipynb", "02-pgpool.html", "02-pgpool.ipynb",
                         "03-failover.html", "03-failover.ipynb", "commands.sh", "provision.log", "summary.json"]
        assert summary(record)["result"] == "succeeded"
    # the new files the first run wrote, which its commands.sh installs from there; the second wrote none
    assert (first / "files" / "vm3" / "etc" / "pgpool2" / "failover.sh").is_file()
    assert not (second / "files").exists()


def test_summary_says_what_each_step_changed(provisioned_twice):
    first, second, _, _ = provisioned_twice
    steps = summary(first)["steps"]
    assert [s["step"] for s in steps if s["step"] is not None] == list(range(1, 46))
    assert {s["step"] for s in steps if s["status"] == "changed"} == CHANGING_STEPS
    by_step = {s["step"]: s for s in steps}
    assert by_step[5]["changes"] == [{"host": "vm1", "what": "systemctl restart postgresql"}]
    assert by_step[9]["hosts"] == ["vm2"] and [c["what"] for c in by_step[9]["changes"]][-1].startswith("base backup from vm1")
    assert all(s["seconds"] >= 0 for s in steps) and by_step[38]["seconds"] > 1
    again = summary(second)
    assert again["steps_changed"] == 0 and {s["status"] for s in again["steps"]} == {"in place"}
    log = (second / "provision.log").read_text()
    assert "0 steps changed, 55 already in place" in log and "[55/55] 03" in log
    assert "# nothing was changed" in (second / "commands.sh").read_text()


def test_second_run_reports_everything_in_place(provisioned_twice):
    first, second, _, _ = provisioned_twice
    text = outputs(second)
    for phrase in ("role replicator already has REPLICATION LOGIN and the password in PGGUIDE_REPLICATION_PASSWORD",
                   "postgresql.conf already as the guide wants it", "pg_hba.conf already as the guide wants it",
                   "no restart needed", "vm2: already a standby streaming from vm1: not cloned again",
                   "testdb.employees already holds the guide's 3 rows", "David is already in testdb.employees"):
        assert phrase in text, phrase
    part2 = outputs(second, "02-pgpool.ipynb")
    for phrase in ("pgpool2 already installed", "role postgres already has LOGIN", "role pgpool already has LOGIN",
                   "pgpool.conf already as the guide wants it", "pool_hba.conf already as the guide wants it",
                   "pool_passwd already holds the AES entries", ".pcppass already holds PGGUIDE_PGPOOL_PASSWORD",
                   "pgpool2 is running with the configuration on disk", "Frank is already in testdb.employees"):
        assert phrase in part2, phrase
    # no action ran: the only INSERT shown is Steps 16/37's, which must fail on the standby, and the
    # indented lines are the guide's md5 way in the appendix, planned and not applied
    ran = "\n".join(line for line in (text + part2).splitlines()
                    if "'Hacker'" not in line and not line.startswith("    "))
    assert "The guide's md5 way differs here: the appendix at the end of this notebook shows it." in part2
    assert "Step 25, planned on the hosts as they were then, not applied:\n    vm1 (root) $ edit" in part2
    for prompt in ("(root) $ edit ", "(root) $ systemctl restart", "(root) $ systemctl reload", " $ pg_enc -m",
                   "INSERT INTO employees (name, department) VALUES", "CREATE ROLE", "ALTER ROLE"):
        assert prompt not in ran, prompt


def test_first_run_shows_what_it_ran_with_host_and_user(provisioned_twice):
    text = outputs(provisioned_twice[0]) + outputs(provisioned_twice[0], "02-pgpool.ipynb")
    for line in ("vm1 (postgres) $ psql -c \"CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD '********';\"",
                 "vm1 (root) $ edit /etc/postgresql/15/main/postgresql.conf", "  +wal_level = 'replica'",
                 "vm1 (root) $ systemctl restart postgresql", "vm2 (root) $ systemctl stop postgresql",
                 "vm2 (postgres) $ rm -rf /var/lib/postgresql/15/main/* && ls /var/lib/postgresql/15/main/",
                 "vm2 (postgres) $ pg_basebackup -h 10.213.93.132 -U replicator -D /var/lib/postgresql/15/main/ -P -Xs -R "
                 "-c fast -w -d application_name=vm2",
                 "vm3 (root) $ apt-get update && apt-get install pgpool2 -y",
                 "vm3 (labadmin) $ psql -h 10.213.93.134 -p 9999 -U postgres -c \"SHOW pool_nodes;\"",
                 "vm1 (postgres) $ psql -c \"GRANT pg_read_all_stats TO pgpool;\"",
                 "vm3 (root) $ pg_enc -m -k /var/lib/postgresql/.pgpoolkey -f /etc/pgpool2/pgpool.conf -i /dev/stdin",
                 "vm3 (labadmin) $ psql -h 10.213.93.134 -p 9999 -U postgres -d testdb -c \"INSERT INTO employees"):
        assert line in text, line


def test_independent_check_with_psql_on_the_hosts(provisioned_twice):
    rows = on("vm1", "sudo -u postgres psql -XAtc \"select client_addr, state from pg_stat_replication\"")
    assert rows.split() == ["10.213.93.133|streaming"]
    assert on("vm2", "sudo -u postgres psql -XAtc 'select pg_is_in_recovery()'").strip() == "t"
    refused = on("vm2", "sudo -u postgres psql -XAtc \"insert into employees (name) values ('x')\" testdb", check=False)
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr
    for host in ("vm1", "vm2"):
        assert on(host, "sudo -u postgres psql -XAtc 'select name from employees order by id' testdb").split() == \
            ["Alice", "Bob", "Charlie", "David", "Frank", "Grace"]


def through_pgpool(sql, database="postgres"):
    """Plain psql against pgpool's port as the superuser, from the pgpool host (the superuser is let in
    from there and from pgpool.admin_clients only)."""
    return on("vm3",
              f"PGPASSWORD={SECRETS['PGGUIDE_POSTGRES_PASSWORD']} psql -XAt -h 10.213.93.134 -p 9999 -U postgres "
              f"-d {database} -c \"{sql}\"")


def test_independent_check_through_pgpool(provisioned_twice):
    nodes = [line.split("|") for line in through_pgpool("SHOW pool_nodes").splitlines()]
    assert [(n[1], n[3], n[5], n[6]) for n in nodes] == [("10.213.93.132", "up", "0.333333", "primary"),
                                                         ("10.213.93.133", "up", "0.666667", "standby")]
    # a write (into a temporary table, so no data changes) runs on the primary, with the read after it
    assert through_pgpool("CREATE TEMP TABLE probe (x int); INSERT INTO probe VALUES (1); "
                          "SELECT inet_server_addr()").strip().splitlines()[-1] == "10.213.93.132"
    # reads are spread over both servers
    servers = {through_pgpool("SELECT inet_server_addr()").strip() for _ in range(30)}
    assert servers == {"10.213.93.132", "10.213.93.133"}
    scram = on("vm3", "sudo grep -c 'scram-sha-256' /etc/pgpool2/pool_hba.conf").strip()
    assert int(scram) >= 1


def test_a_run_record_is_for_the_operator_alone(provisioned_twice):
    record = provisioned_twice[0]
    modes = {p.name: p.stat().st_mode & 0o777 for p in [record, *record.iterdir()]}
    assert modes.pop(record.name) == 0o700 and modes.pop("commands.sh") == 0o700
    assert modes and all(m & 0o077 == 0 for m in modes.values()), modes


def test_no_account_on_the_pgpool_host_gets_in_without_a_password(provisioned_twice):
    """Debian ships pool_hba.conf with trust for pgpool's socket and 127.0.0.1: with a postgres entry in
    pool_passwd, that made any account on the host the superuser on the servers. Step 31 removes it."""
    for where in ("-h 127.0.0.1", "-h /var/run/postgresql"):
        attempt = on("vm3", f"cd / && sudo -u nobody psql -w {where} -p 9999 "
                      "-U postgres -XAtc 'SELECT current_user'", check=False)
        assert attempt.returncode != 0 and "postgres" not in attempt.stdout, (where, attempt.stdout)
        assert "no password supplied" in attempt.stderr, (where, attempt.stderr)
    assert "trust" not in on("vm3", "sudo grep -v '^ *#' /etc/pgpool2/pool_hba.conf")


def test_pgpools_role_reads_replication_status_but_no_setting_that_holds_a_password(provisioned_twice):
    """Step 22 grants pg_read_all_stats, not the guide's pg_monitor (whose pg_read_all_settings reads
    primary_conninfo, and the replication password in it), and takes pg_monitor back from a cluster that had it."""
    password = shlex.quote(SECRETS["PGGUIDE_PGPOOL_PASSWORD"])
    asks = {"conninfo": ("10.213.93.133", "SHOW primary_conninfo"),
            "senders": ("10.213.93.132", "SELECT count(replay_lsn) FROM pg_stat_replication")}
    script = f"export PGPASSWORD={password}\ncd /\n" + "".join(
        f"echo @@{name}; psql -XAt -h {host} -U pgpool -d postgres -c '{sql}' 2>&1\n" for name, (host, sql) in asks.items())
    out = on("vm3", "bash -s", input=script)
    said = dict(part.split("\n", 1) for part in out.split("@@")[1:])
    assert said["conninfo"].startswith("ERROR:") and 'to examine "primary_conninfo"' in said["conninfo"], said
    assert SECRETS["PGGUIDE_REPLICATION_PASSWORD"] not in out and "password=" not in out, said
    assert said["senders"].strip() == "1", said      # the standby's WAL sender, its columns visible


def test_primary_conninfo_names_the_passfile_and_a_password_in_it_is_moved_out(provisioned_twice, monkeypatch):
    """Step 9 clones with the password from ~postgres/.pgpass, so -R writes passfile= and no password. A standby
    cloned the guide's way (the password inside primary_conninfo, readable with pg_read_all_settings) gets passfile=
    from Step 10 instead, and streams on."""
    def standby_conninfo():
        return conninfo.parse_conninfo(on("vm2", "sudo -u postgres psql -XAtc 'SHOW primary_conninfo'").strip())
    assert "password" not in standby_conninfo() and standby_conninfo()["passfile"] == part1.PGPASS, standby_conninfo()
    guide_way = " ".join(f"{k}={v}" for k, v in standby_conninfo().items() if k != "passfile")
    guide_way += f" password={SECRETS['PGGUIDE_REPLICATION_PASSWORD']}"
    on("vm2", "sudo -u postgres psql -XAtq -f - -c 'SELECT pg_reload_conf()'",
       input=f"ALTER SYSTEM SET primary_conninfo = '{guide_way}';\n")
    assert standby_conninfo()["password"] == SECRETS["PGGUIDE_REPLICATION_PASSWORD"]
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    env = Hosts(PARAMS)
    try:
        part1.verify_backup(env).apply()
        part1.check_streaming(env).apply()
    finally:
        env.close()
    assert "password" not in standby_conninfo() and standby_conninfo()["passfile"] == part1.PGPASS, standby_conninfo()
    assert SECRETS["PGGUIDE_REPLICATION_PASSWORD"] not in on("vm2", "sudo cat /var/lib/postgresql/15/main/postgresql.auto.conf")


def test_the_superuser_through_pgpool_only_from_the_pgpool_host_and_the_admin_machine(provisioned_twice):
    """pool_hba.conf (Step 31): postgres through pgpool from vm1, an address of the clients' network, is turned
    away with the right password, while the pgpool role and the application's own role (app: it reads employees,
    may not delete them, nor read the catalog of passwords) get in from there; from vm3 itself postgres gets in, and
    from this machine (pgpool.admin_clients, the lab's gateway) the notebooks did, every step of them."""
    passwords = {role: shlex.quote(SECRETS[f"PGGUIDE_{role.upper()}_PASSWORD"]) for role in ("postgres", "pgpool")}
    attempt = "".join(f"PGPASSWORD={passwords[role]} psql -XAt -h 10.213.93.134 -p 9999 -U {role} -d postgres "
                      f"-c 'SELECT current_user' 2>&1; echo @@\n" for role in ("postgres", "pgpool"))
    superuser, pgpool = on("vm1", "bash -s", input="cd /\n" + attempt).split("@@")[:2]
    assert 'no pool_hba.conf entry for host "10.213.93.132", user "postgres"' in superuser, superuser
    assert pgpool.strip() == "pgpool", pgpool
    app = shlex.quote(SECRETS["PGGUIDE_APP_PASSWORD"])
    as_app = "".join(f"PGPASSWORD={app} psql -XAt -h 10.213.93.134 -p 9999 -U app -d testdb -c {shlex.quote(sql)} 2>&1; "
                     "echo @@\n" for sql in ("SELECT current_user, count(*) > 0 FROM employees",
                                             "DELETE FROM employees WHERE false", "SELECT count(*) FROM pg_authid"))
    reads, deletes, catalog = on("vm1", "bash -s", input="cd /\n" + as_app).split("@@")[:3]
    assert reads.strip() == "app|t", reads                      # an application's own role: it reads employees
    assert "permission denied for table employees" in deletes, deletes
    assert "permission denied for table pg_authid" in catalog, catalog
    from_pgpool_host = on("vm3", "bash -s", input="cd /\n" + attempt.split("\n")[0])
    assert from_pgpool_host.split("@@")[0].strip() == "postgres", from_pgpool_host


def test_the_pgpool_hosts_key_runs_the_failover_scripts_commands_and_no_shell(provisioned_twice):
    """Step 41's key: postgres of vm3 gets no shell on vm1, only what failover.sh and its siblings send."""
    ssh = f"sudo -u postgres ssh {failover_scripts.ssh_options()} postgres@10.213.93.132"
    said = {command: on("vm3", f"cd / && {ssh} {shlex.quote(command)}", check=False)
            for command in ("hostname", "pg_lsclusters --no-header 15 main", "id", "psql -c 'SELECT 1'")}
    assert said["hostname"].stdout.strip() == "vm1" and "online" in said["pg_lsclusters --no-header 15 main"].stdout
    for refused in ("id", "psql -c 'SELECT 1'"):
        assert said[refused].returncode == 126 and "refused" in said[refused].stderr, said[refused]


def test_replicator_cannot_open_a_database_from_the_pgpool_host(provisioned_twice):
    """pg_hba's `all all` line for the pgpool host let replicator, whose password every standby keeps, into
    testdb; a reject line in front of it (Steps 23, 26) turns it away on both servers."""
    password = shlex.quote(SECRETS["PGGUIDE_REPLICATION_PASSWORD"])
    script = f"export PGPASSWORD={password}\ncd /\n" + "".join(
        f"psql -XAt -h {address} -U replicator -d testdb -c 'SELECT 1' 2>&1; echo @@\n"
        for address in ("10.213.93.132", "10.213.93.133"))
    out = on("vm3", "bash -s", input=script).split("@@")[:2]
    assert all("pg_hba.conf rejects connection" in o and 'user "replicator"' in o for o in out), out


def backend_sessions(database):
    """Sessions the primary has opened to `database` since its start (pg_stat_database)."""
    return int(on("vm1", f"sudo -u postgres psql -XAtc \"SELECT sessions FROM pg_stat_database "
                         f"WHERE datname = '{database}'\"").strip())


def test_pgpool_reuses_backend_connections_for_testdb_and_never_for_postgres(provisioned_twice, monkeypatch):
    """Why Step 38 samples testdb: there pgpool's children keep their backend connections; to the
    database postgres every session makes pgpool log in to the servers anew."""
    from lib import loadbalance
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    env, sessions = Hosts(PARAMS), 100
    try:
        grew = {}
        for database in ("testdb", "postgres"):
            before = backend_sessions(database)
            loadbalance.sample(pgpool_client.via_pgpool(env, database), sessions, concurrent=loadbalance.CONCURRENT)
            time.sleep(1.5)             # a backend's statistics reach pg_stat_database within a second
            grew[database] = backend_sessions(database) - before - (database == "postgres")   # minus our own count
    finally:
        env.close()
    # at most one new backend connection per pgpool child (they connect on first use), not one per session
    assert grew["testdb"] <= PARAMS.pgpool["num_init_children"] < sessions, grew
    assert grew["postgres"] >= sessions - loadbalance.CONCURRENT, grew      # the last few may still be exiting


def test_ssh_sends_each_packet_at_once(provisioned_twice):
    """TCP_NODELAY on our SSH connections: without it every command waited 40 ms for a delayed ACK."""
    import socket
    env = Hosts(PARAMS)
    try:
        env.primary.run("true")
        sock = env.primary.conn.client.get_transport().sock
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        env.close()


def secret_needles():
    """Each secret, its md5 forms, and the forms the hosts store: SCRAM verifiers (salted, so
    read from pg_authid), pool_passwd's AES entries, the key file."""
    needles = {}
    for variable, value in SECRETS.items():
        needles.update({f"{variable} {form}": v for form, v in secret_forms(value, ROLE_OF.get(variable)).items()})
    for line in on("vm1", "sudo -u postgres psql -XAtc \"select rolname, rolpassword from pg_authid "
                          "where rolname in ('replicator', 'postgres', 'pgpool')\"").split():
        role, verifier = line.split("|", 1)
        needles[f"{role}'s stored verifier"] = verifier
        needles[f"{role}'s StoredKey:ServerKey"] = verifier.split("$")[-1]
    for line in on("vm3", "sudo cat /etc/pgpool2/pool_passwd").split():
        user, entry = line.split(":", 1)
        needles[f"pool_passwd entry of {user}"] = entry
    return needles


def test_no_secret_in_any_form_in_the_run_records(provisioned_twice):
    needles = secret_needles()
    assert len(needles) >= 4 * 2 + 3 * 2 + 2
    for record in provisioned_twice[:2]:
        assert find_in_record(record, needles) == []
        injected = json.loads((record / "01-streaming-replication.ipynb").read_text())["metadata"]["papermill"]
        assert set(injected["parameters"]) == {"environment", "lab", "hosts", "ssh", "postgres", "options"}


def test_no_plain_password_reaches_the_primarys_log(provisioned_twice):
    """Roles get a verifier computed on this side (lib.roles.scram_verifier), so the server's
    statement log shows that, never the password."""
    log = on("vm1", "sudo cat /var/log/postgresql/postgresql-15-main.log")
    assert "CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'SCRAM-SHA-256$4096:" in log
    leaked = [v for v in SECRETS if SECRETS[v] in log]
    assert not leaked, f"in the primary's log: {leaked}"


def test_html_record_opens_in_headless_chromium_and_shows_the_steps(provisioned_twice, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: ci/test installs it (apt-get install chromium)"
    page = provisioned_twice[1] / "02-pgpool.html"
    flags = diagrams.CHROMIUM_FLAGS
    dom = sh(chromium, *flags, "--dump-dom", f"file://{page}")
    for text in ("Step 34 — Check PgPool Node Status", "Step 39 — Real-Time Sync Test Through PgPool",
                 "10.213.93.133", "streaming"):
        assert text in dom, text
    # the diagrams are drawn, as inline SVG, and the record is light: no renderer, no theme in every page
    drawn = sh(chromium, *flags, "--dump-dom", f"file://{provisioned_twice[1] / '00-environment.html'}")
    assert drawn.count('<figure class="pgguide-diagram"><svg') == 2, "the diagrams were not drawn"
    pages = list(provisioned_twice[1].glob("*.html"))
    assert len(pages) == 4 and sum(p.stat().st_size for p in pages) < 500_000
    shot = tmp_path / "page.png"
    sh(chromium, *flags, "--window-size=1200,900", f"--screenshot={shot}", f"file://{page}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000     # a blank page compresses to ~5 kB


def test_check_passes_on_the_provisioned_cluster(provisioned_twice, secrets_file):
    result = check(secrets_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"check passed: all {len(guide.STEPS)} steps match the guide." in result.stdout


#: drifts, each on a file of its own: (host, file, the edit, {each step that would set it right: lines of its plan})
DRIFTS = [
    # the edit itself (Step 26), and the reload it would need (Step 28 settles the standby)
    ("vm2", "/etc/postgresql/15/main/pg_hba.conf", "sed -i '/pgpool .*10.213.93.134/d'",
     {"Step 26": ["vm2 (root) $ edit /etc/postgresql/15/main/pg_hba.conf", "+host all pgpool 10.213.93.134/32 scram-sha-256"],
      "Step 28": ["vm2 (root) $ systemctl reload postgresql"], "Step 40": []}),
    # the edit (Step 30), and the restart of pgpool it would need (Step 33)
    ("vm3", "/etc/pgpool2/pgpool.conf", "sed -i 's/^backend_weight1 = 2/backend_weight1 = 0/'",
     {"Step 30": ["-backend_weight1 = 0", "+backend_weight1 = 2"], "Step 33": ["vm3 (root) $ systemctl restart pgpool2"],
      "Step 43": []}),
    # a suspension of synchronous commit that failover.sh would leave, left behind: Step 44 lifts it
    ("vm1", "/var/lib/postgresql/15/main/postgresql.auto.conf", "sed -i \"\\$a synchronous_standby_names = ''\"",
     {"Step 44": ["vm1 (postgres) $ psql <<'SQL'", "ALTER SYSTEM RESET synchronous_standby_names;"]}),
    # pgpool's unit back to signalling every process at once: Step 33 writes its drop-in again
    ("vm3", "/etc/systemd/system/pgpool2.service.d/pgguide-stop.conf", "sed -i 's/^KillMode=mixed/KillMode=control-group/'",
     {"Step 33": ["-KillMode=control-group", "+KillMode=mixed", "vm3 (root) $ systemctl daemon-reload"], "Step 43": []}),
]


def drift_blocks(output: str) -> dict[str, str]:
    """--check's output cut into each drifted step's lines (whitespace squeezed), by step."""
    blocks, current = {}, None
    for line in output.splitlines():
        words = line.split()
        if words[:1] == ["DRIFT"]:
            current = " ".join(words[1:3])
            blocks[current] = ""
        elif words[:1] == ["ok"] or line.startswith("check "):
            current = None
        elif current:
            blocks[current] += " ".join(words) + "\n"
    return blocks


def test_check_names_each_drift_under_the_step_that_fixes_it(provisioned_twice, secrets_file):
    """Four drifts at once, one --check: each step that would set one right is listed, with that fix."""
    for i, (host, path, edit, _) in enumerate(DRIFTS):
        on(host, f"sudo cp -p {path} /tmp/drift{i}.bak && sudo {edit} {path}")
    try:
        edited = [on(host, f"sudo sha256sum {path}") for host, path, _, _ in DRIFTS]
        result = check(secrets_file)
        assert [on(host, f"sudo sha256sum {path}") for host, path, _, _ in DRIFTS] == edited, "--check changed a file"
    finally:
        for i, (host, path, _, _) in enumerate(DRIFTS):
            on(host, f"sudo cp -p /tmp/drift{i}.bak {path}")
    assert result.returncode == 1, result.stdout
    blocks = drift_blocks(result.stdout)
    wanted: dict[str, list[str]] = {}
    for _, _, _, steps in DRIFTS:
        for step, lines in steps.items():
            wanted.setdefault(step, []).extend(lines)
    order = sorted(wanted, key=lambda s: int(s.split()[1]))
    assert list(blocks) == order, result.stdout
    for step, lines in wanted.items():
        for line in lines:
            assert " ".join(line.split()) in blocks[step], f"{step} lacks {line!r}:\n{result.stdout}"
    assert f"steps differ from the guide: {', '.join(order)}." in result.stdout
    assert check(secrets_file).returncode == 0


def streams_after_restart():
    """Restart the standby so it must log in again with primary_conninfo's password."""
    on("vm2", "sudo systemctl restart postgresql")
    for _ in range(100):
        rows = on("vm1", "sudo -u postgres psql -XAtc 'select client_addr, state from pg_stat_replication'")
        if rows.split() == ["10.213.93.133|streaming"]:
            return True
        time.sleep(0.1)
    return False


def test_reset_passwords_rotates_the_replication_and_pgpool_passwords_and_the_cluster_follows(
        provisioned_twice, secrets_file, tmp_path):
    """Passwords with a quote, a backslash and a colon: the standby logs in again with the new replication
    password (~postgres/.pgpass), and pcp with the new pgpool password (~postgres/.pcppass, where an
    unescaped colon would cut it short)."""
    rotated = tmp_path / "rotated.secrets"
    rotated.write_text(secrets_file.read_text().replace(SECRETS["PGGUIDE_REPLICATION_PASSWORD"], "Rot'at\\e-1")
                       .replace(SECRETS["PGGUIDE_PGPOOL_PASSWORD"], "Po:ol\\p-2"))
    rotated.chmod(0o600)
    params = tmp_path / "rotate.yaml"
    params.write_text((REPO / "params" / "lab.yaml").read_text().replace("options:\n", "options:\n  reset_passwords: true\n"))
    try:
        record = REPO / sh(REPO / "ci" / "provision", "--secrets", rotated, params).strip().splitlines()[-1].split("Record: ")[1]
        changed = {s["step"]: s["changes"] for s in summary(record)["steps"] if s["status"] == "changed"}
        # 1, 22: the two roles; 9, 40: ~postgres/.pgpass on the standby, then on the primary; 32: pool_passwd,
        # pcp.conf and ~postgres/.pcppass; 33: pgpool starts again to read pool_passwd
        assert set(changed) == {1, 9, 22, 32, 33, 40}, changed
        assert [c["what"] for c in changed[9]] == ["/var/lib/postgresql/.pgpass: *:5432:*:replicator:********"], changed
        assert "/var/lib/postgresql/.pcppass: localhost:9898:pgpool:********" in [c["what"] for c in changed[32]], changed
        assert "Rot'at" not in (record / "commands.sh").read_text() and "Po:ol" not in (record / "commands.sh").read_text()
        assert streams_after_restart(), "the standby did not reconnect with the new password"
        assert on("vm3", "sudo -u postgres pcp_node_count -h localhost -p 9898 -U pgpool -w").strip() == "2"
        rotated_check = check(rotated)
        assert f"all {len(guide.STEPS)} steps match" in rotated_check.stdout, rotated_check.stdout
    finally:
        sh(REPO / "ci" / "provision", "--secrets", secrets_file, params)
    assert streams_after_restart() and check(secrets_file).returncode == 0


def test_wrong_pool_passwd_entry_stops_with_the_reason(provisioned_twice, monkeypatch):
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    env = Hosts(PARAMS)
    try:
        monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", "not-the-password")
        part2.password_file(env).apply()
        part2.start_pgpool(env).apply()
        monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", SECRETS["PGGUIDE_POSTGRES_PASSWORD"])
        with pytest.raises(AssertionError, match=r"(?s)pgpool refused the login.*pool_passwd.*"
                                                 r"auth_method scram-sha-256 must hold AES entries"):
            pgpool_client.wait_for_nodes(pgpool_client.via_pgpool(env), PARAMS, timeout=20)
    finally:
        monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", SECRETS["PGGUIDE_POSTGRES_PASSWORD"])
        part2.password_file(env).apply()
        part2.start_pgpool(env).apply()
        env.close()


def pcp_node_status(node_id):
    return on("vm3", f"sudo -u postgres pcp_node_info -h localhost -U pgpool -w -v -n {node_id}")


def test_a_restart_of_pgpool_first_attaches_a_healthy_standby_that_it_keeps_down(provisioned_twice, monkeypatch):
    """A pgpool started with a node down in pgpool_status starts no health check for it, and auto_failback
    runs in that check: the node stays down for good. So it was after a standby's slow restart in Step 40 and
    pgpool's restart in Step 43. Here pgpool starts so on purpose; the restart the steps plan attaches it first."""
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    env = Hosts(PARAMS)
    status_file = "/var/log/postgresql/pgpool_status"      # pgpool's logdir in Debian's pgpool.conf
    try:
        on("vm3", f"sudo systemctl stop pgpool2 && printf 'up\\ndown\\n' | sudo tee {status_file} >/dev/null "
                  f"&& sudo systemctl start pgpool2")
        streaming, _ = wait_until(lambda: "Replication State      : streaming" in pcp_node_status(1), timeout=15, interval=0.5)
        assert streaming, pcp_node_status(1)
        assert "Status Name            : down" in pcp_node_status(1)
        time.sleep(2 * pgpool_host.HEALTH_CHECK["health_check_period"])      # auto_failback would have acted by now
        assert "Status Name            : down" in pcp_node_status(1), "pgpool attached it by itself: nothing to prove"
        on("vm3", f"echo '0  /etc/pgpool2/pgpool.conf' | sudo tee {pgpool_host.LOADED} >/dev/null")   # a restart is due
        part2.start_pgpool(env).apply()
        attached, _ = wait_until(lambda: "Status Name            : down" not in pcp_node_status(1), timeout=15, interval=0.5)
        assert attached, f"pgpool's restart kept the streaming standby down:\n{pcp_node_status(1)}"
    finally:
        on("vm3", "sudo -u postgres pcp_attach_node -h localhost -U pgpool -w -n 1 >/dev/null 2>&1 || true")
        env.close()


def test_a_restart_of_the_primary_that_provisioning_plans_is_no_failover_for_connected_clients(
        provisioned_twice, secrets_file, monkeypatch):
    """A setting the primary reads only at start has drifted: provisioning restarts it (Step 5) while a client
    holds a session through pgpool. pgpool would take that for a failure and fail over; the step flags the node
    DISALLOW_TO_FAILOVER around the restart, and the roles stay as they are."""
    for variable, value in SECRETS.items():
        monkeypatch.setenv(variable, value)
    # the drift, made with pgpool stopped, so that it needs a restart and pgpool saw none
    on("vm3", "sudo systemctl stop pgpool2")
    on("vm1", "sudo sed -i 's/^wal_log_hints = on/wal_log_hints = off/' /etc/postgresql/15/main/postgresql.conf "
              "&& sudo systemctl restart postgresql")
    on("vm3", "sudo systemctl start pgpool2")
    failovers_before = on("vm3", "sudo cat /var/log/pgpool2/failover.log").count("promoting")
    env = Hosts(PARAMS)
    try:
        wait_until(lambda: "Status Name            : down" not in pcp_node_status(0) + pcp_node_status(1), timeout=20,
                   interval=0.5)
        client = pgpool_client.via_pgpool(env, "testdb")()
        client.execute("SELECT 1")
        record = provision(secrets_file)
        client.close()
    finally:
        env.close()
    step5 = (record / "01-streaming-replication.ipynb").read_text()
    assert "backend_flag0 = 'DISALLOW_TO_FAILOVER'" in step5 and "pcp_reload_config" in step5, step5
    assert on("vm3", "sudo cat /var/log/pgpool2/failover.log").count("promoting") == failovers_before, \
        on("vm3", "sudo tail -5 /var/log/pgpool2/failover.log")
    assert psql("vm1", "SELECT pg_is_in_recovery()") == "f" and psql("vm2", "SELECT pg_is_in_recovery()") == "t"
    assert "backend_flag0 = 'ALLOW_TO_FAILOVER'" in on("vm3", "sudo cat /etc/pgpool2/pgpool.conf")
    assert check(secrets_file).returncode == 0


def test_teardown_stops_pgpool_and_leaves_a_standalone_standby(provisioned_twice, secrets_file):
    before = on("vm1", f"sudo sha256sum {' '.join(WATCHED[:2])}")
    out = sh(REPO / "ci" / "provision", "--teardown", "--secrets", secrets_file)
    assert "vm3 (root) $ systemctl disable --now pgpool2" in out
    assert "vm2 (root) $ pg_ctlcluster 15 main promote" in out
    assert on("vm3", "systemctl is-active pgpool2 || true").strip() == "inactive"
    assert on("vm2", "sudo -u postgres psql -XAtc 'select pg_is_in_recovery()'").strip() == "f"
    assert "primary_conninfo" not in on("vm2", "sudo cat /var/lib/postgresql/15/main/postgresql.auto.conf")
    on("vm2", "sudo -u postgres psql -XAtc \"insert into employees (name) values ('standalone')\" testdb")
    assert on("vm1", f"sudo sha256sum {' '.join(WATCHED[:2])}") == before      # the primary is left alone
    again = sh(REPO / "ci" / "provision", "--teardown", "--secrets", secrets_file)
    assert "pgpool2 already stopped" in again and "vm2: already a standalone server" in again
    result = check(secrets_file)
    assert result.returncode == 1
    drifted = [" ".join(line.split()[1:4]) for line in result.stdout.splitlines() if line.lstrip().startswith("DRIFT")]
    assert "Step 33 vm3" in drifted and any(d.startswith("Step 34") for d in drifted), result.stdout
    # the promoted standby holds a write of its own: --check says it will not be cloned over
    assert "could not check: Refusing to clear and clone vm2: it is a writable server, not a standby, holding " \
           "databases testdb" in result.stdout
    assert "Step 7 refused to clone: vm2" in result.stdout


def data_fingerprint():
    """What a wipe or a clone would change: each cluster's identity, the timeline it writes on, and its rows.
    Not its checkpoints: the server makes those itself (a promoted standby's first one can end minutes later)."""
    identity = ("sudo -u postgres /usr/lib/postgresql/15/bin/pg_controldata -D /var/lib/postgresql/15/main "
                "| grep -e '^Database system identifier' -e '^Database cluster state'")
    timeline = ("sudo -u postgres psql -XAtc \"SELECT CASE WHEN pg_is_in_recovery() THEN 'in recovery' "
                "ELSE 'writing on timeline ' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END\"")
    rows = "sudo -u postgres psql -XAtc 'select name from employees order by id' testdb"
    return {h: on(h, f"cd /; {identity}; {timeline}; {rows}") for h in ("vm1", "vm2")}


def refused_before_any_change(tmp_path, secrets_file, change, message):
    data = P.read_file(P.DEFAULT_FILE)
    change(data)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(data))
    before = data_fingerprint()
    result = sh(REPO / "ci" / "provision", path, "--secrets", secrets_file, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "provision FAILED in 00-environment" in out and message in out, out
    assert data_fingerprint() == before


def test_after_a_teardown_no_parameter_file_wipes_data(provisioned_twice, secrets_file, tmp_path):
    """The torn-down standby took a write (previous test). Neither the file as it is, nor with
    rebuild_standby, nor with the roles swapped, may clone over either server."""
    sh(REPO / "ci" / "provision", "--teardown", "--secrets", secrets_file)     # a no-op after the previous test
    on("vm2", "sudo -u postgres psql -XAtc \"insert into employees (name) values ('written after the teardown')\" testdb")

    def swapped(d):
        d["hosts"]["primary"], d["hosts"]["standbys"][0] = d["hosts"]["standbys"][0], d["hosts"]["primary"]
    cases = [(lambda d: None, "Part 1 would clear and clone vm2, but: it is a writable server, not a standby, "
                              "holding databases testdb"),
             (lambda d: d["options"].update(rebuild_standby=True), "vm1 is not ahead of it, so it may hold writes vm1 lacks"),
             (swapped, "Part 1 would clear and clone vm1, but: it is a writable server")]
    for change, message in cases:
        refused_before_any_change(tmp_path, secrets_file, change, message)


def test_a_standby_address_that_reaches_the_primary_is_refused(provisioned_twice, secrets_file, tmp_path):
    """vm1 answers at a second address, which the parameter file gives as the standby's."""
    other = "10.213.93.140"
    known = tmp_path / "known_hosts"
    lines = (REPO / ".lab" / "ssh" / "known_hosts").read_text().splitlines()
    vm1_key = next(l for l in lines if l.startswith("10.213.93.132 ")).split(" ", 1)[1]
    known.write_text("\n".join(lines + [f"{other} {vm1_key}"]) + "\n")

    def at_vm1(d):
        d["hosts"]["standbys"][0]["address"] = other
        d["ssh"]["known_hosts"] = str(known)
    # the container may not change its own addresses; its network namespace is the lab's
    sh("ip", "-n", "pglab-vm1", "addr", "add", f"{other}/24", "dev", "ens33")
    try:
        refused_before_any_change(tmp_path, secrets_file, at_vm1,
                                  "vm2's ens33 address is 10.213.93.132, but the parameters say 10.213.93.140")
        data = P.read_file(P.DEFAULT_FILE)
        at_vm1(data)
        env = Hosts(P.load(data))
        from lib import clone_guard
        [(_, allowed, why)] = clone_guard.choose(env)       # the guard too, on its own
        env.close()
        assert allowed is False and why.startswith("it is the same machine as vm1"), why
    finally:
        sh("ip", "-n", "pglab-vm1", "addr", "del", f"{other}/24", "dev", "ens33")


def test_wrong_replication_password_stops_the_base_backup_with_the_reason(provisioned_twice, monkeypatch):
    from lib import host_functions

    # a script that calls a host function carries its definition (lib.host_functions.defined)
    on("vm2", "sudo systemctl stop postgresql && sudo bash -c " + shlex.quote(host_functions.defined(
        host_functions.wait_for("pg_lsclusters --no-header 15 main | grep -q down", 30, "vm2 is not down"))))
    env = Hosts(PARAMS)
    try:
        env.clone_decision = CloneDecision([env.standby])  # what Step 7 decides for a standby it stopped
        part1.clear_standbys(env).apply()
        monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", "not-the-password")
        with pytest.raises(StepFailed, match=r"(?s)password authentication failed for user \"replicator\".*"
                                             r"a wrong replication password \(PGGUIDE_REPLICATION_PASSWORD, in /var/lib/postgresql/.pgpass\)"):
            part1.base_backup(env).apply()
    finally:
        env.close()                                          # and with it the cluster's lock


def test_clearing_refuses_the_primary(provisioned_twice):
    env = Hosts(PARAMS)
    with pytest.raises(AssertionError, match="Refusing to clear the data directory: vm1 is the primary"):
        part1.clear_data_directory(env.primary, env.primary)
    assert on("vm1", "sudo -u postgres psql -XAtc 'select count(*) from employees' testdb").strip() == "6"
    env.close()


def test_commands_sh_replayed_on_a_fresh_lab_builds_the_same_cluster(provisioned_twice, secrets_file):
    """What the transcript shows is complete and true: the first run's commands.sh, run with bash
    alone (no Python) on a fresh lab, builds a cluster that --check finds as the guide wants it."""
    script = provisioned_twice[0] / "commands.sh"
    # a person can read it: each edit its changed lines, each new file in files/ (about 740 lines on the lab, checks included)
    assert script.read_text().count("\n") < 800
    sh(REPO / "ci" / "lab", "up")
    replay = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600,
                            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **SECRETS})
    assert replay.returncode == 0, replay.stdout[-3000:] + replay.stderr[-3000:]
    result = check(secrets_file)
    assert result.returncode == 0, result.stdout
    assert on("vm2", "sudo -u postgres psql -XAtc 'select name from employees order by id' testdb").split() == \
        ["Alice", "Bob", "Charlie", "David", "Frank", "Grace"]


def test_pgpools_health_check_gives_up_on_a_server_that_stalls_without_tls(provisioned_twice):
    """On pgpool 4.3 without TLS, health_check_timeout bounds a health check's whole session: a standby
    that stops answering after its login is tried again within the timeout (3 s, Step 30), with the guard
    of Step 33 paused. The contrast to ssl = on (test_guide_variants.py) and to pgpool 4.6
    (test_debian13.py), where the same stall holds the check."""
    seen = stalled_health_check(PARAMS_FILE)
    assert f"health check retrying on DB node: {seen['node']} (round:1)" in seen["log before the end"], seen
