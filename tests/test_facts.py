"""The facts layer (lib.facts): every fact asked of a host answered in one round trip, exactly (a
file's text byte for byte, with or without its last newline), kept until a command that may change
a host runs, and given in place for a planner's test. The batch script runs in this machine's bash."""
import json
import subprocess

import pytest

from lib import REPO, facts, secrets
from lib import params as P
from lib.facts import CommandFact, FileFact, Output
from lib.remote import Remote, Result

PARAMS = P.load()


class LocalHost(Remote):
    """A host whose commands run in this machine's bash, as we are; counts them."""

    def __init__(self):
        super().__init__(PARAMS, PARAMS.primary)
        self.commands = []

    def run(self, command, *, user=None, stdin=None, check=True, reads_only=False, **kw):
        if not reads_only:
            facts.stale()
        self.commands.append(command)
        r = subprocess.run(["bash", "-c", command], capture_output=True, text=True, input=stdin)
        return Result(command, r.returncode, r.stdout, r.stderr)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "conf").write_text("listen_addresses = '*'\n# no newline at the end")
    (tmp_path / ("conf" + facts.ORIGINAL_SUFFIX)).write_text("")
    (tmp_path / "tricky").write_text("@@abc:0:begin\nabsent\n\n")
    return tmp_path


def test_several_facts_in_one_round_trip_each_answer_exact(files):
    host = LocalHost()
    conf, tricky, missing = (FileFact(str(files / n)) for n in ("conf", "tricky", "missing"))
    failing = CommandFact("echo partial; echo why >&2; exit 3")
    host.facts.prefetch([conf, tricky, missing, failing])
    assert len(host.commands) == 1
    found = host.facts.get(conf)
    assert found.text == "listen_addresses = '*'\n# no newline at the end" and found.original_kept
    assert found.access.split()[1] == "644"
    assert host.facts.get(tricky).text == "@@abc:0:begin\nabsent\n\n" and not host.facts.get(tricky).original_kept
    assert host.facts.get(missing).text is None and not host.facts.get(missing).exists
    assert host.facts.get(failing) == Output(False, "partial\n")
    assert len(host.commands) == 1, "every answer came from the one round trip"


def test_answers_are_kept_until_a_command_that_may_change_a_host(files):
    host = LocalHost()
    conf = FileFact(str(files / "conf"))
    first = host.facts.get(conf)
    host.run("true", reads_only=True)                  # a read: the answers stay
    assert host.facts.get(conf) is first and len(host.commands) == 2
    (files / "conf").write_text("changed\n")
    host.run(f"touch {files / 'conf'}")                # may have changed something: read again
    assert host.facts.get(conf).text == "changed\n"
    assert host.facts.read(conf).text == "changed\n" and len(host.commands) == 5, "read() always asks again"


def test_a_fact_of_another_user_runs_as_that_user():
    host = LocalHost()
    who = CommandFact("id -un", user="nobody")
    assert host.facts.get(who).stdout == "nobody\n"


def test_an_answer_cut_off_is_an_error_not_a_wrong_fact():
    hello = [CommandFact("echo hello")]
    out = subprocess.run(["bash", "-c", facts.batch(hello, "n1")], capture_output=True, text=True).stdout
    assert facts.answers(out, hello, "n1") == [(0, "hello\n", "")]
    with pytest.raises(facts.FactUnreadable, match="not whole"):
        facts.answers(out[:len(out) // 2], hello, "n1")


def test_the_queries_of_one_database_share_a_psql_session_and_each_keeps_its_own_answer():
    """This machine has no psql: the session's output is written here as psql prints it (the lab's test
    of the same, tests/test_lab.py, runs the real one). A query psql would read a `:name` or a backslash in
    runs alone."""
    count, fails, other_db, empty = (facts.SqlFact("SELECT count(*) FROM t"), facts.SqlFact("SELECT nope"),
                                     facts.SqlFact("SELECT 1", "testdb"), facts.SqlFact("SELECT 1 WHERE false"))
    alone, unanswered = facts.SqlFact("SELECT :'x'"), facts.SqlFact("SELECT 2")
    wanted = [count, CommandFact("echo hi"), fails, other_db, alone, empty, unanswered]
    script = facts.batch(wanted, "n2")
    assert script.count("psql ") == 3 and "SQL_n2_q0" in script and "SQL_n2_q2" in script   # postgres, testdb
    assert script.count("-f - <<") == 2 and script.count("-d postgres -c ") == 1                 # the query alone
    assert facts.SqlFact.session([count, fails, empty], "n2:q0").count("\\if :ERROR") == 3
    session = ("@@n2:q0:0:begin\n7\n\n@@n2:q0:0:end:0\n@@n2:q0:0:err\n"
               "@@n2:q0:1:begin\n\n@@n2:q0:1:end:1\ncolumn \"nope\" does not exist\n@@n2:q0:1:err\n"
               "@@n2:q0:2:begin\n\n@@n2:q0:2:end:0\n@@n2:q0:2:err\n")
    out = "".join(f"@@n2:{u}:begin\n{text}\n@@n2:{u}:end:{code}\n{err}\n@@n2:{u}:err\n" for u, (code, text, err) in
                  enumerate([(0, session, ""), (0, "hi\n", ""), (2, "", "psql: error: no such database"),
                             (0, "x\n", "")]))
    found = facts.answers(out, wanted, "n2")
    assert found == [(0, "7\n", ""), (0, "hi\n", ""), (1, "", 'column "nope" does not exist'),
                     (2, "", "psql: error: no such database"), (0, "x\n", ""), (0, "", ""),
                     (2, "", "")]                         # a session that stopped short answers nothing for it
    assert fails.parse(*found[2]) == facts.Rows(False, error='column "nope" does not exist')


def test_given_answers_stand_for_the_host_and_nothing_else_is_asked():
    host = Remote(PARAMS, PARAMS.primary)
    known = CommandFact("uname -r")
    host.facts.given({known: Output(True, "6.1\n")})
    facts.stale()
    assert host.facts.get(known).stdout == "6.1\n"
    with pytest.raises(facts.FactUnreadable, match="no answer given for CommandFact"):
        host.facts.get(CommandFact("hostname"))


def test_answers_are_masked_unless_the_fact_is_for_comparing_with_a_secret(tmp_path):
    """A file's text, and a query made with masked=False (a stored md5 verifier), keep the run's secret
    values: a planner compares them with what it wants. Other answers have them masked."""
    secret = secrets.secret("replication", PARAMS)
    (tmp_path / "pgpass").write_text(f"*:5432:*:replicator:{secret}\n")
    host = LocalHost()
    assert host.facts.get(CommandFact(f"echo {secret}")).stdout == "********\n"
    assert host.facts.get(FileFact(str(tmp_path / "pgpass"))).text.endswith(f":{secret}\n")
    assert not facts.SqlFact("SELECT rolpassword FROM pg_authid", masked=False).masked
    assert facts.SqlFact("SELECT 1").masked


def test_what_a_run_asked_is_asked_with_the_next_runs_first_question(files, tmp_path):
    """A run keeps the keys of the facts it asked (never the answers); the next asks them all with its
    first question to the host: one round trip when nothing changed. Live facts are not kept."""
    first = LocalHost()
    conf, count = FileFact(str(files / "conf")), facts.SqlFact("SELECT count(*) FROM employees", "testdb", 5433)
    first.facts.get(conf)
    first.facts.get(CommandFact("echo kept", user="nobody"))
    # from here on answered in place: this machine has no psql, no pcp
    first.facts.given({count.key: facts.Rows(True, (("3",),)),
                       ("CommandFact", "postgres", "pcp_node_info"): Output(True, "")})
    first.facts.get(count)
    first.facts.get(CommandFact("pcp_node_info", "postgres", live=True))
    memory = tmp_path / "runs" / "facts-asked.json"
    facts.remember(memory, "01-streaming-replication", [first])
    recalled = facts.recall(memory, "01-streaming-replication")[first.host.name]
    assert [f.key for f in recalled] == [conf.key, ("CommandFact", "nobody", "echo kept"), count.key]
    assert "kept\n" not in memory.read_text() and "listen_addresses" not in memory.read_text(), "keys only"

    second = LocalHost()
    second.facts.expect(recalled[:2])
    second.facts.get(CommandFact("echo now"))
    assert len(second.commands) == 1
    assert second.facts.get(conf).exists and second.facts.get(recalled[1]).stdout == "kept\n"
    assert len(second.commands) == 1, "the first question brought the others' answers"
    facts.remember(memory, "01-streaming-replication", [second])
    assert [f.key for f in facts.recall(memory, "01-streaming-replication")[first.host.name]][-1] == \
        ("CommandFact", "root", "echo now")
    assert facts.recall(memory, "02-pgpool") == {}, "another notebook asks ahead only what it asked itself"
    facts.remember(memory, "02-pgpool", [second])
    assert set(json.loads(memory.read_text())) == {"01-streaming-replication", "02-pgpool"}


def test_a_key_stands_for_its_fact():
    for fact in (FileFact("/etc/hosts"), facts.SqlFact("SELECT 1", "testdb", 5433, masked=False),
                 CommandFact("id -un", user="postgres")):
        assert facts.from_key(list(fact.key)).key == fact.key
        assert facts.from_key(list(fact.key)).command() == fact.command()


def test_a_batch_runs_its_queries_with_the_psql_it_is_given_and_other_commands_as_they_are():
    """The lab's hosts run the versioned psql (Params.pg_bin), not Debian's Perl wrapper on PATH."""
    psql = P.load(REPO / "params" / "lab-debian13.yaml").pg_bin("psql")
    assert psql == "/usr/lib/postgresql/17/bin/psql"
    script = facts.batch([facts.SqlFact("SELECT 1"), facts.SqlFact("SELECT 2"), facts.SqlFact("SELECT :'x'"),
                          CommandFact("psql --version")], "n3", psql)
    assert script.count("psql -X") == script.count(f"{psql} -X") == 2      # a session, and the query alone
    assert "( psql --version\n)" in script
