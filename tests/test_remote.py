import os
import subprocess

import pytest

from lib import hosts, params as P
from lib.remote import Remote, Result


def remote(sudo_needs_password=False):
    prm = P.load()
    r = Remote(prm, prm.primary)
    r._sudo_needs_password = sudo_needs_password      # as if probed
    return r


def test_commands_run_with_bash_as_the_right_user():
    r = remote()
    assert r._wrap("echo 'hi'", None, None) == ("bash -c 'echo '\"'\"'hi'\"'\"''", None)
    cmd, stdin = r._wrap("pg_lsclusters", "postgres", "SELECT 1")
    assert cmd == "sudo -n -H -u postgres bash -c 'cd ~ 2>/dev/null; pg_lsclusters'" and stdin == "SELECT 1"


FAKE_SUDO = r"""#!/bin/bash
# sudo on a host that asks for a password ($FAKE/asks) or does not (cached credentials, NOPASSWD)
if [ "$1" = -n ] && [ "${@: -1}" = true ] && [ -f "$FAKE/asks" ]; then exit 1; fi
if [ "$1" = -S ] && [ -f "$FAKE/asks" ]; then IFS= read -r line; echo "$line" > "$FAKE/validated"; fi
while [ "${1#-}" != "$1" ]; do case $1 in -u|-p) shift ;; esac; shift; done   # the options, then the command
exec "$@"
"""


@pytest.mark.parametrize("asks", [True, False])
def test_the_sudo_password_never_reaches_the_command(monkeypatch, tmp_path, asks):
    """Where sudo wants a password, the host's shell reads it and hands it to `sudo -v` alone. Where sudo
    would not have asked (cached credentials, NOPASSWD for the target user), the command still gets
    only its own input: psql would have run the password as SQL, and the server logged it."""
    monkeypatch.setenv("PGGUIDE_SUDO_PASSWORD", "sudo-pw")
    (tmp_path / "sudo").write_text(FAKE_SUDO)
    (tmp_path / "sudo").chmod(0o755)
    if asks:
        (tmp_path / "asks").write_text("")
    cmd, stdin = remote(sudo_needs_password=True)._wrap("cat", "postgres", "SELECT 1;\n")
    assert stdin.startswith("sudo-pw\n") and "sudo-pw" not in cmd      # on stdin, never in argv
    out = subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "FAKE": str(tmp_path), "HOME": str(tmp_path)})
    assert out.stdout == "SELECT 1;\n", out
    assert (tmp_path / "validated").exists() == asks


def test_failure_message_names_host_command_code_stderr_and_masks_secrets():
    r = remote()
    msg = r.describe_failure(Result("psql -c \"ALTER ROLE x PASSWORD 'replica123'\"", 2, "",
                                    "psql: error: connection refused"), "postgres", "is PostgreSQL running?")
    assert msg.startswith("vm1 (primary, 10.213.93.132): `psql -c \"ALTER ROLE x PASSWORD '********'\"` "
                          "as postgres exited 2\n")
    assert "stderr: psql: error: connection refused" in msg
    assert msg.endswith("What to check: is PostgreSQL running?")
    assert "replica123" not in msg


def test_default_hint_says_how_to_run_it_by_hand():
    lab = remote()
    assert lab.describe_failure(Result("x", 1, "", "e"), None, None).endswith("after `ci/lab ssh vm1` to see more")
    vm = P.load(P.REPO / "params" / "vmware.yaml")
    real = Remote(vm, vm.primary)
    assert "after `ssh ubuntu@172.16.93.132` to see more" in real.describe_failure(Result("x", 1, "", "e"), None, None)


class LateOutputChannel:
    """An SSH channel whose exit status arrives before its output, which then comes with the EOF
    (what sshd may do); or, with eof=False, a command whose background process keeps the output open."""

    def __init__(self, data: bytes, after_polls: int, eof: bool = True):
        self.data, self.after, self.eof, self.polls = data, after_polls, eof, 0
        self.eof_received = False

    def settimeout(self, t): pass
    def exec_command(self, c): pass
    def sendall(self, b): pass
    def shutdown_write(self): pass
    def close(self): pass
    def recv_exit_status(self): return 0
    def exit_status_ready(self): return True
    def recv_stderr_ready(self): return False

    def recv_ready(self):
        self.polls += 1
        if self.polls > self.after and self.data is not None:
            self.eof_received = self.eof
            return True
        return False

    def recv(self, n):
        data, self.data = self.data, None
        return data


def run_on(channel):
    r = remote()

    class Transport:
        def open_session(self, timeout=None): return channel
    r._conn = type("Conn", (), {"client": type("Client", (), {"get_transport": lambda self: Transport()})()})()
    return r._exec("cat /etc/postgresql/15/main/postgresql.conf", None, 10, journaled=False)


def test_output_that_comes_after_the_exit_status_is_read_whole():
    assert run_on(LateOutputChannel(b"wal_level = replica\n", after_polls=50)) == (0, "wal_level = replica\n", "")


def test_a_command_whose_output_never_ends_is_not_waited_for_long():
    import time
    started = time.monotonic()
    assert run_on(LateOutputChannel(None, after_polls=0, eof=False)) == (0, "", "")
    assert time.monotonic() - started < 3


def test_openssh_logs_in_with_the_parameters_key_and_known_hosts_and_trusts_no_new_host_key():
    """What `ci/lab ssh` and the lab tests run: the same key, known_hosts, port and user as the notebooks."""
    prm = P.load({**P.read_file(P.DEFAULT_FILE), "ssh": {**P.read_file(P.DEFAULT_FILE)["ssh"], "port": 2222}})
    argv = hosts.openssh_argv(prm, prm.standbys[0])
    assert argv[0] == "ssh" and argv[-1] == f"{prm.ssh['user']}@{prm.standbys[0].address}"
    options = " ".join(argv[1:-1])
    assert f"-i {prm.ssh['key_file']}" in options and f"UserKnownHostsFile={prm.ssh['known_hosts']}" in options
    assert "StrictHostKeyChecking=yes" in options and "IdentitiesOnly=yes" in options and "-p 2222" in options
