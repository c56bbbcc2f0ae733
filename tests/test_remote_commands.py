"""The program behind Step 41's key (lib.remote_commands), run with bash against the commands the failover
scripts really send, as bash on the pgpool host expands them: each is let through, and anything else
(a shell, other SQL, a value that smuggles a second command in) is refused before it runs."""
import re
import subprocess

import pytest

from lib import failover, failover_scripts, remote_commands
from lib import params as P

SAMPLE = "10.213.93.133"        # what every variable of the scripts stands for here


def prm(**postgres):
    data = P.read_file(P.DEFAULT_FILE)
    data["postgres"].update(postgres)
    return P.validate(data)


def scripts(p):
    return [failover_scripts.failover_script(p), failover_scripts.follow_script(p), failover_scripts.failback_script(p)]


def as_sent(body: str) -> str:
    """What bash on the pgpool host sends for the double-quoted `body`, every variable set to SAMPLE."""
    names = set(re.findall(r"(?<!\\)\$\{?(\w+)", body))
    assignments = "".join(f"{n}={SAMPLE}; " for n in names)
    return subprocess.run(["bash", "-c", f'{assignments}printf %s "{body}"'], capture_output=True, text=True,
                          check=True).stdout


def run(p, sent: str, tmp_path) -> subprocess.CompletedProcess:
    """The program as sshd runs it, its `exec bash -c` caught by a stand-in that only says what it was given."""
    (tmp_path / "program").write_text(remote_commands.program(failover.sent_commands(p)))
    fake = tmp_path / "bin" / "bash"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\nprintf "ran: %s" "$2"\n')
    fake.chmod(0o755)
    return subprocess.run(["/bin/bash", str(tmp_path / "program")], capture_output=True, text=True,
                          env={"PATH": f"{fake.parent}:/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": sent})


@pytest.mark.parametrize("synchronous", [False, True], ids=["async", "sync"])
def test_every_command_the_scripts_send_is_let_through_as_sent(tmp_path, synchronous):
    p = prm(synchronous=synchronous)
    sent = [as_sent(b) for s in scripts(p) for b in remote_commands.sent_bodies(s)]
    sent += [failover_scripts.handover_watch(p), "true", "hostname"]
    assert len(sent) >= 12
    for command in sent:
        out = run(p, command, tmp_path)
        assert out.returncode == 0 and out.stdout == f"ran: {command}", (command, out.stderr)


@pytest.mark.parametrize("sent", [
    "bash -i",
    "psql -c 'DROP DATABASE testdb'",
    "hostname; id",
    "pg_lsclusters --no-header 15 main; rm -rf /var/lib/postgresql",
    "psql -XAtc \"SELECT count(*) > 0 FROM pg_stat_replication WHERE application_name = 'x' OR true; "
    "DROP TABLE t; --' AND state IN ('streaming', 'catchup')\"",
    "pg_ctlcluster 15 main promote\nid",
])
def test_anything_else_is_refused_before_it_runs(tmp_path, sent):
    out = run(prm(), sent, tmp_path)
    assert out.returncode == remote_commands.REFUSED and "ran:" not in out.stdout, out
    assert "refused" in out.stderr


def test_a_command_the_program_cannot_match_is_an_error_when_it_is_written():
    with pytest.raises(ValueError, match="command substitution"):
        remote_commands.pattern('echo "$(id)"')
