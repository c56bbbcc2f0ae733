"""Bad input gets one clear error before any host is changed: book/operate.md's table, row by row.

Each case runs the real `ci/provision` on the lab and checks the exit status, the error it
prints (once), and that the hosts are exactly as before: the sha256 of the files Part 1
and Part 2 edit, the clusters' state, and what is installed on the pgpool host. Runs
first on the fresh lab that ci/test starts (test_bad_input sorts before the others).
"""
import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lib import REPO
from lib import params as P
from labtools import on
from paramcases import set_key

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (run ci/test as root)")]
LAB = P.read_file(REPO / "params" / "lab.yaml")
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


def host_state():
    files = "/etc/postgresql/15/main/postgresql.conf /etc/postgresql/15/main/pg_hba.conf"
    return {h: on(h, f"sudo sha256sum {files}; pg_lsclusters --no-header; "
                     "sudo -u postgres psql -XAtc 'select rolname, rolpassword from pg_authid order by 1'")
            for h in ("vm1", "vm2")} | {
        "vm3": on("vm3", "dpkg-query -W -f='${Package} ${Status}\\n' 'postgresql-client*' 'pgpool2' 2>&1; "
                         "ls /etc/pgpool2 2>&1; true")}


@pytest.fixture(scope="module", autouse=True)
def lab_up():
    subprocess.run([str(REPO / "ci" / "lab"), "up"], check=True, capture_output=True)


def params_file(tmp_path, change=None, text=None) -> Path:
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    else:
        data = copy.deepcopy(LAB)
        change(data)
        path.write_text(yaml.safe_dump(data))
    return path


def secrets_file(tmp_path, mode=0o600, **values) -> Path:
    path = tmp_path / "lab.secrets"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(mode)
    return path


def provision(*args, env=None):
    proc = subprocess.run([str(REPO / "ci" / "provision"), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout + proc.stderr




ALL_SECRETS = {"PGGUIDE_REPLICATION_PASSWORD": "Repl-test-1", "PGGUIDE_POSTGRES_PASSWORD": "Pg-test-22",
               "PGGUIDE_PGPOOL_PASSWORD": "Pool-test-3", "PGGUIDE_APP_PASSWORD": "App-test-55",
               "PGGUIDE_PGPOOL_KEY": "Key-test-44"}
VMWARE = REPO / "params" / "vmware.yaml"

# (case, what to run: tmp_path -> argv, exit status, the one error expected)
CASES = [
    ("no parameter file", lambda t: [t / "missing.yaml"], EXIT_BAD_INPUT,
     "missing.yaml does not exist (the files in params/ are: example.yaml, lab-debian13.yaml, lab.yaml, vmware.yaml)"),
    ("YAML syntax error", lambda t: [params_file(t, text="hosts:\n  primary: [unclosed\n")], EXIT_BAD_INPUT,
     "bad.yaml is not valid YAML"),
    ("unknown key", lambda t: [params_file(t, set_key("postgres.verison", 15))], EXIT_BAD_INPUT,
     "unknown parameter postgres.verison; postgres takes version, cluster"),
    ("wrong type", lambda t: [params_file(t, set_key("postgres.version", "fifteen"))], EXIT_BAD_INPUT,
     "postgres.version must be a whole number, not 'fifteen'"),
    ("bad address", lambda t: [params_file(t, set_key("hosts.primary.address", "10.213.93.300"))], EXIT_BAD_INPUT,
     "hosts.primary.address = '10.213.93.300' is not an IPv4 address"),
    ("pgpool open to the whole internet", lambda t: [params_file(t, set_key("pgpool.allowed_clients", "0.0.0.0/0"))],
     EXIT_BAD_INPUT, "pgpool.allowed_clients = 0.0.0.0/0 admits 4,294,967,296 addresses, anyone who can reach pgpool"),
    ("duplicate addresses", lambda t: [params_file(t, set_key("hosts.pgpool.address", "10.213.93.133"))],
     EXIT_BAD_INPUT, "two hosts share the address '10.213.93.133' (vm2 and vm3)"),
    ("standby address equal to the primary's",
     lambda t: [params_file(t, set_key("hosts.standbys.0.address", "10.213.93.132"))], EXIT_BAD_INPUT,
     "hosts.standbys[0].address 10.213.93.132 is the primary's address"),
    ("a password in the parameter file", lambda t: [params_file(t, set_key("postgres.password", "hunter2"))],
     EXIT_BAD_INPUT, "postgres.password: secrets never go in parameter files"),
    ("missing secret", lambda t: [params_file(t, lambda d: None), "--secrets",
                                  secrets_file(t, PGGUIDE_REPLICATION_PASSWORD="Repl-test-1")], EXIT_BAD_INPUT,
     "missing secrets PGGUIDE_POSTGRES_PASSWORD, PGGUIDE_PGPOOL_PASSWORD, PGGUIDE_APP_PASSWORD, PGGUIDE_PGPOOL_KEY"),
    ("secrets file readable by others", lambda t: [params_file(t, lambda d: None), "--secrets",
                                                   secrets_file(t, 0o644, **ALL_SECRETS)], EXIT_BAD_INPUT,
     "can be read by others (mode 644): chmod 600"),
    ("a 6-character secret", lambda t: [VMWARE, "--secrets", secrets_file(t, **{**ALL_SECRETS, "PGGUIDE_PGPOOL_KEY": "six-ch"})],
     EXIT_BAD_INPUT, "PGGUIDE_PGPOOL_KEY is shorter than 8 characters"),
    ("the postgres password 'postgres' outside the lab",
     lambda t: [VMWARE, "--secrets", secrets_file(t, **{**ALL_SECRETS, "PGGUIDE_POSTGRES_PASSWORD": "postgres"})],
     EXIT_BAD_INPUT, "PGGUIDE_POSTGRES_PASSWORD is a name the records print"),
    ("unreachable host", lambda t: [params_file(t, set_key("hosts.pgpool.address", "10.213.93.200"))], EXIT_FAILED,
     "vm3 (pgpool, 10.213.93.200): cannot reach SSH port 22"),
    ("unreachable primary, where the lock lives", lambda t: [params_file(t, set_key("hosts.primary.address", "10.213.93.201"))],
     EXIT_FAILED, "could not take the cluster's lock on vm1 (primary, 10.213.93.201)"),
    ("wrong SSH key", lambda t: [params_file(t, set_key("ssh.key_file", str(new_key(t))))], EXIT_FAILED,
     "SSH as labadmin failed"),
    ("PostgreSQL version not installed on the host", lambda t: [params_file(t, set_key("postgres.version", 16))], EXIT_FAILED,
     "PostgreSQL 16 is not installed on vm1 (versions there: 15)"),
]


def new_key(tmp_path) -> Path:
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def assert_one_clear_error(code, out, expected_code, message, before):
    assert code == expected_code, f"exit {code}, expected {expected_code}:\n{out}"
    assert out.count(message) == 1, f"expected {message!r} once in:\n{out}"
    assert "Traceback" not in out, out
    if expected_code == EXIT_BAD_INPUT:
        assert "Nothing was changed." in out
    elif "could not take the cluster's lock" in out:     # the primary refused before any notebook ran
        assert "so nothing was changed" in out and "00-environment" not in out, out
    else:   # stopped in notebook 00, the preflight, before Part 1
        assert "provision FAILED in 00-environment" in out and "[ 4/" not in out, out
    assert host_state() == before, "a host changed"


@pytest.mark.parametrize("case, argv, expected_code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_error_and_changes_nothing(tmp_path, case, argv, expected_code, message):
    before = host_state()
    code, out = provision(*argv(tmp_path))
    assert_one_clear_error(code, out, expected_code, message, before)


def test_wrong_sudo_password(tmp_path):
    """As on the guide's Ubuntu VMs, sudo asks for the user's password."""
    before = host_state()
    on("vm1", "echo 'labadmin:pw-for-test' | sudo chpasswd && "
              "echo 'labadmin ALL=(ALL:ALL) ALL' | sudo tee /etc/sudoers.d/lab-admin >/dev/null")
    try:
        code, out = provision(env={"PGGUIDE_SUDO_PASSWORD": "wrong-password"})
    finally:
        on("vm1", "echo pw-for-test | sudo -S -p '' sh -c "
                  "\"echo 'labadmin ALL=(ALL:ALL) NOPASSWD: ALL' > /etc/sudoers.d/lab-admin\"")
    assert on("vm1", "sudo -n true && echo restored").strip() == "restored"
    assert_one_clear_error(code, out, EXIT_FAILED, "the sudo password in PGGUIDE_SUDO_PASSWORD is wrong", before)


def test_wrong_database_password(tmp_path):
    """A cluster whose replicator role already has a password: a different secret is refused
    (replacing it would lock out the standbys that use it) unless options.reset_passwords."""
    on("vm1", "sudo -u postgres psql -XAqc \"create role replicator with replication login password 'the-real-one'\"")
    try:
        before = host_state()
        code, out = provision()
        assert_one_clear_error(code, out, EXIT_FAILED,
                               "PGGUIDE_REPLICATION_PASSWORD is not the password role replicator has on vm1", before)
        assert "options.reset_passwords: true" in out
    finally:
        on("vm1", "sudo -u postgres psql -XAqc 'drop role replicator'")


def test_injection_in_any_string_parameter_exits_2_and_runs_nothing(tmp_path, capsys):
    """Every string parameter, with a command, a command substitution, a newline or a space in
    it, through ci/provision's own entry point (in-process: about 200 runs)."""
    from paramcases import cases
    from lib.provision.cli import main
    before = host_state()
    wrong = []
    for key, value, what in cases(LAB):
        code = main([str(params_file(tmp_path, set_key(key, value)))])
        err = capsys.readouterr().err
        if code != EXIT_BAD_INPUT or "Nothing was changed." not in err:
            wrong.append(f"{what} ({value!r}): exit {code}")
    assert not wrong, "; ".join(wrong)
    assert not Path("/tmp/x").exists()
    for host in ("vm1", "vm2", "vm3"):
        assert on(host, "test -e /tmp/x && echo FOUND || echo none").strip() == "none", host
    assert host_state() == before, "a host changed"
