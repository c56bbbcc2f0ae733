"""The operation model (lib/ops.py): literal actions, masked transcripts, handlers, check mode,
and the bash forms that commands.sh is made of (run through real bash here)."""
import grp
import hashlib
import json
import os
import pwd
import subprocess

import pytest

from lib import by_hand, host_functions, ops, plan_secrets
from lib import params as P
from lib.show import CheckFailed
from lib.remote import Remote, Result

PARAMS = P.load()
NASTY = "it's $HOME `id` \\n \"q\" 100%"        # quotes, expansions, a backslash: each must survive


class FakeRemote(Remote):
    """A Remote that records what it would run instead of opening SSH."""

    def __init__(self, read_only=False):
        super().__init__(PARAMS, PARAMS.primary, read_only=read_only)
        self.ran = []

    def run(self, command, *, user=None, stdin=None, **kw):
        self.ran.append((command, user, stdin))
        return Result(command, 0, "DONE\n", "")


@pytest.fixture
def secrets_env(monkeypatch):
    monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", NASTY)
    monkeypatch.setenv("PGGUIDE_POSTGRES_PASSWORD", "pg-secret-1")


def bash(script, env):
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, check=True).stdout


PREAMBLE_FUNCTIONS = r"""
sql_literal() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }
md5_of() { printf '%s' "$1" | md5sum | cut -c1-32; }
pgpass_field() { local s=${1//\\/\\\\}; printf '%s' "${s//:/\\:}"; }
"""


@pytest.mark.parametrize("form", ["plain", "sql", "pgpass", "md5", "md5:replicator"])
def test_a_secret_computed_in_bash_equals_the_value_sent(secrets_env, form):
    secret = plan_secrets.Secret("replication", form)
    pieces = ("a $literal `x` \\ line\n", secret, "\n")
    script = PREAMBLE_FUNCTIONS + "cat " + by_hand.heredoc(pieces)
    assert bash(script, {"PGGUIDE_REPLICATION_PASSWORD": NASTY, "PATH": "/usr/bin:/bin"}) == plan_secrets.resolve(pieces, PARAMS)


def test_secret_forms_and_how_they_are_shown(secrets_env):
    assert plan_secrets.Secret("replication", "sql").value(PARAMS) == "'" + NASTY.replace("'", "''") + "'"
    assert plan_secrets.Secret("postgres", "md5:postgres").value(PARAMS) == hashlib.md5(b"pg-secret-1postgres").hexdigest()
    assert plan_secrets.masked(("PASSWORD ", plan_secrets.Secret("postgres", "sql"))) == "PASSWORD '********'"
    assert plan_secrets.Secret("postgres").bash() == "${PGGUIDE_POSTGRES_PASSWORD}"


def test_a_heredoc_without_secrets_is_quoted_and_literal():
    text = "x = '$HOME' `id` \\\n"
    doc = by_hand.heredoc((text,))
    assert doc.startswith("<<'PGGUIDE_EOF'\n")
    assert bash("cat " + doc, {}) == text


def test_scripts_with_quotes_become_literal_heredocs():
    script = "awk '{print $4}' <<< 'a b c d'"
    assert bash(f"eval echo {by_hand.shell_word('plain')}; bash -c {by_hand.shell_word(script)}", {}) == "plain\nd\n"
    assert "SH" in by_hand.shell_word(script) and script in by_hand.shell_word(script)
    one_line = "replace_line /x '^pgpool:' postgres:postgres 600 'pgpool:'"
    assert by_hand.shell_word(one_line) == f'"{one_line}"' and bash(f"printf %s {by_hand.shell_word(one_line)}", {}) == one_line
    assert "SH" in by_hand.shell_word("echo '$HOME'")              # bash would expand it inside double quotes


def test_a_text_holding_our_end_word_still_arrives_whole(secrets_env):
    text = "a\nPGGUIDE_EOF\nPGGUIDE_EOF_1\nb $x\n"
    assert bash("cat " + by_hand.heredoc((text,)), {}) == text
    with_secret = (text, plan_secrets.Secret("postgres"), "\n")
    assert bash("cat " + by_hand.heredoc(with_secret), {"PGGUIDE_POSTGRES_PASSWORD": "pg-secret-1"}) == text + "pg-secret-1\n"
    script = "echo 'x'\nSH\necho 'y'"
    assert bash(f"printf %s {by_hand.shell_word(script)}", {}) == script


def test_apply_prints_the_transcript_masks_secrets_and_runs_handlers_once(secrets_env, capsys, monkeypatch, tmp_path):
    journal = tmp_path / "journal.jsonl"
    monkeypatch.setenv("PGGUIDE_JOURNAL", str(journal))
    r = FakeRemote()
    restart = ops.service(r, "restart", "postgresql")
    step = ops.Step("t").do(
        ops.Sql(r, "postgres", statement=("ALTER ROLE replicator PASSWORD ", plan_secrets.Secret("replication", "sql"), ";")),
        restart, ops.service(r, "restart", "postgresql"),
        ops.FileChange(r, "root", path="/etc/x.conf", old="a = 1\n", new=("a = 2\n",)))
    step.apply()
    out = capsys.readouterr().out
    assert out.splitlines()[:6] == [
        "vm1 (postgres) $ psql -c \"ALTER ROLE replicator PASSWORD '********';\"", "DONE",
        f"vm1 (root) $ edit /etc/x.conf{KEPT}/etc/x.conf.pgguide-orig", "  -a = 1", "  +a = 2",
        "vm1 (root) $ systemctl restart postgresql"]
    assert NASTY not in out
    assert restart.command == "systemctl restart postgresql"
    assert [c for c, *_ in r.ran].count("systemctl restart postgresql") == 1  # the handler ran once, last
    assert r.ran[-1][0] == "systemctl restart postgresql"
    sql_stdin = r.ran[0][2]
    assert sql_stdin == "ALTER ROLE replicator PASSWORD '" + NASTY.replace("'", "''") + "';\n"
    events = [json.loads(l) for l in journal.read_text().splitlines()]
    assert [e["what"] for e in events] == ["ALTER ROLE replicator PASSWORD '********';", "/etc/x.conf: a = 2",
                                           "systemctl restart postgresql"]
    assert NASTY not in journal.read_text()
    assert "$(sql_literal \"${PGGUIDE_REPLICATION_PASSWORD}\")" in events[0]["bash"]


def test_an_empty_plan_says_what_it_found(capsys):
    ops.Step("t").note(FakeRemote(), "role replicator already in place").apply()
    assert capsys.readouterr().out == "vm1: role replicator already in place\n"


def test_a_read_only_step_refuses_to_apply_and_reports_its_plan_as_drift():
    r = FakeRemote(read_only=True)
    step = ops.Step("t").do(ops.FileChange(r, "root", path="/etc/x.conf", old="a = 1\n", new=("a = 2\n",)))
    step.verify("fails", lambda: ops_fail("node 1 is down"))
    step.verify("writes", lambda: ops_fail("never run in a check"), in_check=False)
    assert step.drift() == [f"vm1 (root) $ edit /etc/x.conf{KEPT}/etc/x.conf.pgguide-orig\n  -a = 1\n  +a = 2",
                            "node 1 is down"]
    with pytest.raises(CheckFailed, match="refusing to apply on a read-only connection"):
        step.apply()
    assert r.ran == []


KEPT = "    # as it was before our first change: "


def ops_fail(message):
    raise CheckFailed(message)


def test_secret_files_show_masked_lines_only(secrets_env):
    r = FakeRemote()
    change = ops.FileChange(r, "root", path="/etc/pgpool2/pcp.conf", old="pgpool:0123abcd\n",
                            new=("pgpool:", plan_secrets.Secret("postgres", "md5"), "\n"),
                            mask_line=lambda l: l.split(":")[0] + ":" + plan_secrets.MASK)
    assert change.display() == f"edit /etc/pgpool2/pcp.conf{KEPT}/etc/pgpool2/" \
                               "pcp.conf.pgguide-orig\n  -pgpool:********\n  +pgpool:********"
    assert "0123abcd" not in change.what() and hashlib.md5(b"pg-secret-1").hexdigest() not in change.display()


def read_as_pcp_does(line: str, fields_before: int = 3) -> str:
    """The password of a .pcppass line as pgpool's pcp reads it (src/libs/pcp/pcp.c, PasswordFromFile and
    pwdfMatchesString, as libpq reads .pgpass): the fields before it end at an unescaped colon; then a
    backslash escapes the next character, and the password ends at an unescaped colon."""
    i = 0
    for _ in range(fields_before):
        while line[i] != ":":
            i += 2 if line[i] == "\\" else 1
        i += 1
    password, rest = "", line[i:].rstrip("\n")
    j = 0
    while j < len(rest) and rest[j] != ":":
        if rest[j] == "\\" and j + 1 < len(rest):
            j += 1
        password += rest[j]
        j += 1
    return password


@pytest.mark.parametrize("password", ["plain-secret-1", "a:b\\c:", NASTY + ":"])
def test_pcppass_holds_the_pgpool_password_as_pcp_reads_it_and_shows_none_of_it(monkeypatch, password):
    """A : or \\ in the password escaped (unescaped, pcp would cut it short at the colon and drop the
    backslash), and the diff masks the whole password, the part before an escaped colon too."""
    from lib.part2.pgpool_setup import pcppass_line
    from lib.secret_files import PCPPASS_MASKED
    monkeypatch.setenv("PGGUIDE_PGPOOL_PASSWORD", password)
    line = plan_secrets.resolve(pcppass_line(PARAMS), PARAMS)
    assert line.startswith("localhost:9898:pgpool:") and read_as_pcp_does(line) == password
    assert PCPPASS_MASKED(line.rstrip("\n")) == "localhost:9898:pgpool:" + plan_secrets.MASK


@pytest.mark.parametrize("line, shown", [
    ("*:5432:*:replicator:plain", "*:5432:*:replicator:********"),
    ("*:5432:*:replicator:ab\\:cd\\\\:ef", "*:5432:*:replicator:********"),
    ("*\\:x:5432:*:replicator:ab", "*\\:x:5432:*:replicator:********"),        # an escaped colon before it
    ("not a password line", "********"),
])
def test_a_pgpass_lines_password_is_masked_whole(line, shown):
    from lib.secret_files import PGPASS_MASKED
    assert PGPASS_MASKED(line) == shown


def test_file_changes_are_atomic_and_keep_owner_and_mode(tmp_path):
    target = tmp_path / "f.conf"
    target.write_text("old\n")
    target.chmod(0o640)
    change = ops.FileChange(FakeRemote(), "root", path=str(target), old="old\n", new=("new\n",))
    sent = plan_secrets.resolve(change.stdin(), None)
    # a connection lost mid-write: the text arrives cut short, and the file is left as it was
    cut = subprocess.run(["bash", "-c", host_functions.defined(change.script())], input=sent[:-5], text=True, capture_output=True)
    assert cut.returncode == 1 and "not written (its text did not arrive whole)" in cut.stderr
    assert target.read_text() == "old\n"
    subprocess.run(["bash", "-c", host_functions.defined(change.script())], input=sent, text=True, check=True)
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    # no temporary file left; the file as it was before the first change kept beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.conf", "f.conf.pgguide-orig"]
    assert (tmp_path / "f.conf.pgguide-orig").read_text() == "old\n"
    assert change.record()["original"] == f"{target}.pgguide-orig"
    without_newline = ops.FileChange(FakeRemote(), "root", path=str(target), old="new\n", new=("last",))
    subprocess.run(["bash", "-c", host_functions.defined(without_newline.script())], input=plan_secrets.resolve(without_newline.stdin(), None),
                   text=True, check=True)
    assert target.read_text() == "last"
    assert (tmp_path / "f.conf.pgguide-orig").read_text() == "old\n"          # kept once, never overwritten


def test_a_session_option_shows_and_runs_before_psql(secrets_env):
    r = FakeRemote()
    sql = ops.Sql(r, "postgres", statement=("ALTER USER postgres PASSWORD ", plan_secrets.Secret("postgres", "sql"), ";"),
                  session="-c password_encryption=md5")
    assert sql.display() == "PGOPTIONS='-c password_encryption=md5' psql -c \"ALTER USER postgres PASSWORD '********';\""
    assert sql.script() == "PGOPTIONS='-c password_encryption=md5' psql -X -v ON_ERROR_STOP=1"


def test_the_kept_original_of_a_file_that_holds_secrets_is_private_too(tmp_path):
    target = tmp_path / ".pcppass"
    target.write_text("localhost:9898:pgpool:old-secret\n")
    target.chmod(0o644)
    me = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
    change = ops.FileChange(FakeRemote(), "root", path=str(target), old=target.read_text(),
                            new=("localhost:9898:pgpool:new-secret\n",), owner=me, mode="600")
    subprocess.run(["bash", "-c", host_functions.defined(change.script())], input=plan_secrets.resolve(change.stdin(), None), text=True, check=True)
    for path in (target, tmp_path / ".pcppass.pgguide-orig"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


class LocalBash(Remote):
    """A Remote whose commands run in bash on this machine: for helpers that read a host's files."""

    def __init__(self):
        super().__init__(PARAMS, PARAMS.pgpool_host)

    def run(self, command, *, user=None, stdin=None, **kw):
        proc = subprocess.run(["bash", "-c", command], input=stdin, capture_output=True, text=True)
        return Result(command, proc.returncode, proc.stdout, proc.stderr)


def test_ensure_file_writes_a_missing_or_different_file_and_leaves_one_in_place(tmp_path):
    from lib import postgres
    path, text = tmp_path / "unit.conf", "[Service]\nKillMode=mixed\n"
    owner = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"

    def planned():
        step = ops.Step("file")
        changed = postgres.ensure_file(step, LocalBash(), str(path), text, owner=owner, mode="644", make_dir=True)
        return changed, [a for a in step.actions if isinstance(a, ops.FileChange)]
    changed, writes = planned()
    assert changed and writes[0].old is None and writes[0].display().startswith(f"install -m 644 -o {owner.split(':')[0]}")
    path.write_text(text)
    path.chmod(0o600)
    changed, writes = planned()
    assert changed and writes[0].old == text, "a wrong mode alone must be corrected"
    path.chmod(0o644)
    assert planned() == (False, [])
    path.write_text(text + "# edited by hand\n")
    changed, writes = planned()
    assert changed and "-# edited by hand" in writes[0].diff()


class OtherHost(FakeRemote):
    def __init__(self):
        super().__init__()
        self.host = PARAMS.database_hosts[1]


def test_a_file_written_the_same_on_another_host_is_named_not_printed_again():
    vm1, vm2 = FakeRemote(), OtherHost()
    step = ops.Step("same file").do(
        ops.FileChange(vm1, "root", path="/etc/x", old=None, new=("line one\nline two\n",)),
        ops.FileChange(vm2, "root", path="/etc/x", old=None, new=("line one\nline two\n",)),
        ops.FileChange(vm2, "root", path="/etc/x", old=None, new=("another text\n",)))
    shown = step.preview()
    assert "\nline one\n" in shown[0]
    assert shown[1].endswith("create /etc/x: the same as on vm1 above") and "line one" not in shown[1]
    assert "\nanother text\n" in shown[2]


def test_the_kept_original_is_named_once_per_file():
    first = ops.FileChange(FakeRemote(), "root", path="/etc/x.conf", old="a = 1\n", new=("a = 2\n",))
    later = ops.FileChange(FakeRemote(), "root", path="/etc/x.conf", old="a = 2\n", new=("a = 3\n",), original_kept=True)
    assert KEPT in first.display() and KEPT not in later.display()
    assert later.record()["original"] == "/etc/x.conf.pgguide-orig"      # the record still names it


def test_a_long_command_line_is_shown_one_command_a_line_and_bash_reads_it_the_same():
    line = ("k=$(cat) && touch /var/lib/postgresql/.ssh/known_hosts && { grep -v -- '^10.0.0.1 ' known_hosts || true; "
            "echo \"10.0.0.1 $k\"; } > known_hosts.new && chown 'a && b' x; mv known_hosts.new known_hosts"
            "    # stdin: vm1 (root) $ cat a; cat b")
    assert ops.readable(line) == (
        "k=$(cat) &&\n    touch /var/lib/postgresql/.ssh/known_hosts &&\n"
        "    { grep -v -- '^10.0.0.1 ' known_hosts || true; echo \"10.0.0.1 $k\"; } > known_hosts.new &&\n"
        "    chown 'a && b' x\n    mv known_hosts.new known_hosts    # stdin: vm1 (root) $ cat a; cat b")
    assert ops.readable("short && line") == "short && line"
    script = "a=1 && b=$((a + 1)) && c=\"x && y\"; echo \"$a $b $c\"" + " " * 120
    said = subprocess.run(["bash", "-c", ops.readable(script)], capture_output=True, text=True).stdout
    assert said == "1 2 x && y\n"


def test_a_new_file_is_shown_as_a_command_that_writes_it(tmp_path):
    target = tmp_path / "failover.sh"
    text = "#!/bin/bash\ncat <<'EOF'\nhi\nEOF\n"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    shown = ops.FileChange(FakeRemote(), "root", path=str(target), old=None, new=(text,), owner=f"{user}:{group}",
                           mode="750").display()
    assert shown.startswith(f"install -m 750 -o {user} -g {group} /dev/stdin {target} <<'END_OF_FILE'\n")
    subprocess.run(["bash", "-c", shown], check=True)           # what a reader copies does what we did
    assert target.read_text() == text and oct(target.stat().st_mode & 0o777) == "0o750"
