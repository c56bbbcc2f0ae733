"""The pieces of a run record: the secret search must find a secret in any form in any file,
and the HTML must not load anything from the network."""
import datetime
import hashlib
import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook, new_output

from lib.provision.record import StepRecord, Summary, external_references, find_in_record, render_html
from lib import plan_secrets
from lib.secrets import secret_forms


def test_secret_forms_are_the_value_its_escaped_forms_and_its_md5_forms():
    forms = secret_forms("it's\\s3cret", "pgpool")
    assert forms == {"value": "it's\\s3cret", "SQL literal": "it''s\\s3cret", "conninfo": "it\\'s\\\\s3cret",
                     ".pgpass field": "it's\\\\s3cret", "shell word": "it'\"'\"'s\\s3cret",
                     "md5(password)": hashlib.md5("it's\\s3cret".encode()).hexdigest(),
                     "md5(password+pgpool)": hashlib.md5("it's\\s3cretpgpool".encode()).hexdigest()}


def test_a_secret_printed_on_purpose_is_found_in_every_kind_of_file(tmp_path):
    forms = {k: v for k, v in secret_forms("s3cret", "pgpool").items() if k.startswith(("value", "md5"))}
    for i, (what, needle) in enumerate(forms.items()):
        nb = new_notebook(cells=[new_code_cell("print(x)", outputs=[new_output("stream", name="stdout", text=needle)])])
        nbformat.write(nb, tmp_path / f"{i}.ipynb")
    (tmp_path / "provision.log").write_text(f"line with {forms['value']} in it\n")
    (tmp_path / "summary.json").write_text(json.dumps({"changes": [forms["md5(password+pgpool)"]]}))
    hits = find_in_record(tmp_path, forms)
    assert "0.ipynb: value" in hits and "1.ipynb: md5(password)" in hits and "2.ipynb: md5(password+pgpool)" in hits
    assert "provision.log: value" in hits and "summary.json: md5(password+pgpool)" in hits
    assert find_in_record(tmp_path, secret_forms("other")) == []


def test_html_reads_offline(tmp_path):
    nb = new_notebook(cells=[new_code_cell("print('hi')", outputs=[new_output("stream", name="stdout", text="hi\n")])])
    nbformat.write(nb, tmp_path / "n.ipynb")
    html = render_html(tmp_path / "n.ipynb").read_text()
    assert "hi" in html and external_references(html) == []
    assert external_references('<script src="https://cdn.example/x.js"></script>') == ["https://cdn.example/x.js"]
    assert external_references('<script type="module">await import("https://cdn.example/m.mjs")</script>') == \
        ["https://cdn.example/m.mjs"]
    assert external_references('<a href="https://example.org/doc">a link is fine</a>') == []


def test_a_fetch_in_a_script_is_an_external_reference():
    assert external_references('<script>fetch("https://x.example/a")</script>') == ["https://x.example/a"]
    assert external_references("<script>new Worker('https://x.example/w.js')</script>") == ["https://x.example/w.js"]
    assert external_references("<script>// see https://www.w3.org/TR/ for the spec</script>") == []


def test_summary_counts_changed_steps(tmp_path):
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("01", 1, "a", "changed"), StepRecord("01", 2, "b", "in place")]
    s.steps[0].add_events([{"host": "vm1"}, {"host": "vm1", "applied": True, "user": "postgres", "what": "role x created",
                                             "shown": "psql -c ...", "bash": "on vm1 postgres psql"}, {"host": "vm2"}])
    s.finish("succeeded", 1.234)
    s.write(tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["steps_changed"] == 1 and data["seconds"] == 1.23
    assert data["steps"][0]["hosts"] == ["vm1", "vm2"]
    assert data["steps"][0]["changes"] == [{"host": "vm1", "what": "role x created"}]


def test_summary_counts_the_round_trips_that_read_facts():
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("01", 1, "a", "in place"), StepRecord("01", 2, "b", "in place")]
    s.steps[0].add_events([{"host": "vm1", "facts_read": 1}, {"host": "vm2", "facts_read": 1}, {"host": "vm1"}])
    s.steps[1].add_events([{"host": "vm1", "facts_read": 1}])
    s.finish("succeeded", 1.0)
    assert s.fact_reads == {"vm1": 2, "vm2": 1} and s.steps[0].fact_reads == {"vm1": 1, "vm2": 1}


def test_commands_sh_is_bash_with_every_applied_action_and_secrets_as_references(tmp_path, monkeypatch):
    import subprocess

    from lib import ops
    from lib import params as P
    from lib.remote import Remote
    from lib.provision.record import commands_sh

    monkeypatch.setenv("PGGUIDE_REPLICATION_PASSWORD", "Secret-That-Must-Not-Appear")
    prm = P.load()
    r = Remote(prm, prm.primary)
    action = ops.Sql(r, "postgres", statement=("ALTER ROLE replicator PASSWORD ", plan_secrets.Secret("replication", "sql"), ";"))
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("01-streaming-replication", 1, "Create Replication User", "changed"),
               StepRecord("01-streaming-replication", 2, "Configure postgresql.conf", "in place")]
    s.steps[0].add_events([{**action.record(), "applied": True}])
    script = commands_sh(s, prm)
    assert "Secret-That-Must-Not-Appear" not in script
    assert ': "${PGGUIDE_REPLICATION_PASSWORD:?export PGGUIDE_REPLICATION_PASSWORD first}"' in script
    assert "# 01-streaming-replication: Step 1 — Create Replication User" in script and "Step 2" not in script
    assert "ALTER ROLE replicator PASSWORD $(sql_literal \"${PGGUIDE_REPLICATION_PASSWORD}\");" in script
    assert "declare -A ADDRESS=([vm1]=10.213.93.132 [vm2]=10.213.93.133 [vm3]=10.213.93.134)" in script
    (tmp_path / "commands.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "commands.sh")]).returncode == 0


def test_an_edit_in_commands_sh_is_its_changed_lines_and_gives_the_runs_text(tmp_path):
    import os
    import subprocess

    from lib import host_functions, ops
    from tests.test_ops import FakeRemote

    old = "".join(f"#setting_{i} = {i}\t\t# shipped comment {i}\n" for i in range(200)) + "  indented \\ line\n"
    new = (old.replace("#setting_7 = 7", "setting_7 = 'seven'").replace("#setting_150 = 150\t\t# shipped comment 150\n", "")
           .replace("#setting_9 = 9\t\t# shipped comment 9\n", "#setting_9 = 9\t\t# shipped comment 9\nadded = 'x y'\n")
           + "appended = 1\n")
    target = tmp_path / "x.conf"
    target.write_text(old)
    shown = ops.FileChange(FakeRemote(), "root", path=str(target), old=old, new=(new,)).bash()
    assert shown.count("\n") <= 8, shown                 # the changed lines, not the file
    script = f'on() {{ bash -c "$HOST_FUNCTIONS\n$3"; }}\n{shown}\n'
    functions = {**os.environ, "HOST_FUNCTIONS": host_functions.ALL}
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=functions)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == new and (tmp_path / "x.conf.pgguide-orig").read_text() == old
    again = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=functions)   # another text now
    assert again.returncode != 0 and "not the text this edit was made from" in again.stderr
    assert target.read_text() == new


def test_a_new_file_in_commands_sh_is_written_from_its_copy_in_the_record(tmp_path):
    import subprocess

    from lib import ops
    from lib import params as P
    from lib.provision.record import commands_sh, record_files
    from tests.test_ops import FakeRemote

    target = tmp_path / "etc" / "failover.sh"
    target.parent.mkdir()
    text = "#!/bin/bash\necho 'failing over'\n"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    made = ops.FileChange(FakeRemote(), "root", path=str(target), old=None, new=(text,), owner=f"{user}:{group}", mode="750")
    other = ops.FileChange(FakeRemote(), "root", path=str(target), old=None, new=("another text\n",))
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("03-failover", 42, "Failover commands", "changed")]
    s.steps[0].add_events([{**made.record(), "applied": True}, {**other.record(), "applied": True}])
    script, files = commands_sh(s, P.load()), record_files(s)
    assert files == {f"vm1{target}": text}
    assert f'install -m 750 -o {user} -g {group} /dev/stdin {target}\' < "$FILES/vm1{target}"' in script
    assert "another text" in script                      # the same name with another text: written whole
    (tmp_path / "files" / f"vm1{target.parent}").mkdir(parents=True)
    (tmp_path / "files" / f"vm1{target}").write_text(text)
    line = next(l for l in script.splitlines() if "$FILES/" in l)
    done = subprocess.run(["bash", "-c", f'on() {{ bash -c "$3"; }}\nFILES={tmp_path}/files\n{line}'],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == text and oct(target.stat().st_mode & 0o777) == "0o750"


def test_a_wrapped_command_is_named_on_a_line_of_its_own_in_commands_sh():
    from lib import ops
    from lib import params as P
    from lib.provision.record import commands_sh
    from tests.test_ops import FakeRemote

    guarded = ops.Command(FakeRemote(), "postgres", "{ test -d /x; } || exit 1; rm -rf /x/* && ls /x/",
                          shown="rm -rf /x/* && ls /x/")
    plain = ops.Command(FakeRemote(), "root", "systemctl reload postgresql")
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("01-streaming-replication", 8, "Clear Slave Data Directory", "changed")]
    s.steps[0].add_events([{**guarded.record(), "applied": True}, {**plain.record(), "applied": True}])
    script = commands_sh(s, P.load())
    assert "# vm1 (postgres) $ rm -rf /x/* && ls /x/\non vm1 postgres" in script
    assert "# vm1 (root)" not in script          # the line itself says what it does


def test_a_change_of_settings_in_commands_sh_is_set_conf_and_sets_what_the_run_set(tmp_path):
    import os
    import subprocess

    from lib import host_functions, ops, pgpoolconf
    from tests.test_ops import FakeRemote

    shipped = ("#listen_addresses = 'localhost'\t\t# what IP address(es) to listen on;\n"
               "port = 5432\t\t\t\t# (change requires restart)\n#wal_level = replica\n")
    wanted = {"listen_addresses": "*", "wal_level": "replica", "max_wal_senders": 5}
    new, _ = pgpoolconf.set_settings(shipped, wanted)
    target = tmp_path / "postgresql.conf"
    target.write_text(shipped)
    shown = ops.FileChange(FakeRemote(), "root", path=str(target), old=shipped, new=(new,)).bash()
    assert shown == (f"on vm1 root 'set_conf {target}' <<'CONF'\n"
                     "listen_addresses = '*'\nwal_level = 'replica'\nmax_wal_senders = 5\nCONF")
    functions = {**os.environ, "HOST_FUNCTIONS": host_functions.ALL}
    done = subprocess.run(["bash", "-c", f'on() {{ bash -c "$HOST_FUNCTIONS\n$3"; }}\n{shown}\n'],
                          capture_output=True, text=True, env=functions)
    assert done.returncode == 0, done.stderr
    assert pgpoolconf.active_settings(target.read_text()) == pgpoolconf.active_settings(new)
    # a line that set_conf would leave as it is: the change is shown line by line
    dropped = new.replace("port = 5432\t\t\t\t# (change requires restart)\n", "")
    assert "edit_lines" in ops.FileChange(FakeRemote(), "root", path=str(target), old=shipped, new=(dropped,)).bash()


def test_commands_sh_names_the_clusters_paths_where_the_host_expands_them():
    from lib import by_hand
    from lib import params as P
    from lib.by_hand import for_people

    prm = P.load()
    script = ("rm -rf /var/lib/postgresql/15/main/* && mv /var/lib/postgresql/15/main.cloning /tmp/x && "
              "echo '/var/lib/postgresql/15/main' \"/etc/postgresql/15/main/pg_hba.conf\" /var/lib/postgresql/15/main2")
    assert for_people(script, prm) == (
        "rm -rf $PG_DATA/* &&\n    mv $PG_DATA.cloning /tmp/x &&\n"
        "    echo '/var/lib/postgresql/15/main' \"$PG_ETC/pg_hba.conf\" /var/lib/postgresql/15/main2")
    # quoted for `on`: the host's shell expands the variable, which commands.sh's preamble sets
    said = by_hand.shell_word(for_people("echo $HOME /usr/lib/postgresql/15/bin/pg_ctl", prm))
    assert said == "'echo $HOME $PG_BIN/pg_ctl'"


def test_a_steps_checks_follow_its_actions_in_commands_sh_as_comments():
    from lib import ops
    from lib import params as P
    from lib.provision.record import EXPECTED_LINES, commands_sh
    from tests.test_ops import FakeRemote

    restart = ops.Command(FakeRemote(), "root", "systemctl restart postgresql")
    s = Summary("lab", "params/lab.yaml")
    s.steps = [StepRecord("01-streaming-replication", 5, "Restart Master PostgreSQL", "changed")]
    evidence = "vm1 (root) $ pg_lsclusters\n" + "\n".join(f"line {i}" for i in range(20))
    s.steps[0].add_events([{**restart.record(), "applied": True}, {"verified": "the cluster is online", "evidence": evidence}])
    script = commands_sh(s, P.load())
    assert "on vm1 root 'systemctl restart postgresql' </dev/null\n# check: the cluster is online\n" \
           "#   vm1 (root) $ pg_lsclusters\n#   line 0\n" in script
    assert f"#   … {21 - EXPECTED_LINES} more lines in the notebook\n" in script and "line 19" not in script
    s.steps[0].checks = [{"verified": "short", "evidence": "\n".join(f"row {i}" for i in range(EXPECTED_LINES + 1))}]
    assert f"#   row {EXPECTED_LINES}" in commands_sh(s, P.load())      # one line more is shown, not announced
    assert s.steps[0].changes == [{"host": "vm1", "what": "systemctl restart postgresql"}]


def test_a_hosts_own_file_that_holds_a_secret_is_changed_by_hand_line_by_line(tmp_path, monkeypatch):
    import os
    import subprocess

    from lib import host_functions, ops
    from lib.part2.pgpool_setup import _replace_line
    from tests.test_ops import PREAMBLE_FUNCTIONS, FakeRemote

    monkeypatch.setenv("PGGUIDE_PGPOOL_PASSWORD", "pgpool-secret-1")
    shipped = "# PCP Client Authentication Configuration File\n# postgres:e8a48653851e28c69d0506508fb27fc5\n"
    target = tmp_path / "pcp.conf"
    target.write_text(shipped)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    group = subprocess.run(["id", "-gn"], capture_output=True, text=True).stdout.strip()
    new = _replace_line(shipped, "pgpool:", ("pgpool:", plan_secrets.Secret("pgpool", "md5")))
    change = ops.FileChange(FakeRemote(), "root", path=str(target), old=shipped, new=new, owner=f"{user}:{group}",
                            mode="600", mask_line=lambda l: l, by_hand=(
                                f"replace_line {target} '^pgpool:' {user}:{group} 600 'pgpool:'",
                                (plan_secrets.Secret("pgpool", "md5"), "\n")))
    shown = change.bash()
    assert "pgpool-secret-1" not in shown and "# PCP Client" not in shown        # the file's own text stays
    assert shown.endswith('<<PGGUIDE_EOF\n$(md5_of "${PGGUIDE_PGPOOL_PASSWORD}")\nPGGUIDE_EOF')
    done = subprocess.run(["bash", "-c", f'{PREAMBLE_FUNCTIONS}\non() {{ bash -c "$HOST_FUNCTIONS\n$3"; }}\n{shown}\n'],
                          capture_output=True, text=True, env={**os.environ, "HOST_FUNCTIONS": host_functions.ALL})
    assert done.returncode == 0, done.stderr
    assert target.read_text() == plan_secrets.resolve(new, None) and oct(target.stat().st_mode)[-3:] == "600"


def test_a_one_line_statement_is_psql_dash_c_in_commands_sh_and_a_longer_one_a_here_document():
    from lib import ops
    from tests.test_ops import FakeRemote

    create = ops.Sql(FakeRemote(), "postgres", statement=("CREATE DATABASE testdb;",))
    assert create.bash() == "on vm1 postgres 'psql -X -v ON_ERROR_STOP=1 -c \"CREATE DATABASE testdb;\"' </dev/null"
    assert "typed" not in create.record()                    # the line itself is what a person types
    insert = ops.Sql(FakeRemote(), "postgres", statement=("INSERT INTO t VALUES ('x');",), database="testdb")
    assert "<<'PGGUIDE_EOF'\nINSERT INTO t VALUES ('x');\nPGGUIDE_EOF" in insert.bash()
    assert insert.record()["typed"] == "psql -d testdb -c \"INSERT INTO t VALUES ('x');\""


def test_the_record_notebook_is_written_at_the_start_on_a_failure_and_at_the_end_not_at_every_cell(
        tmp_path, monkeypatch):
    from papermill import engines
    from lib.provision import engine
    nb = new_notebook(cells=[new_code_cell(f"print({i})") for i in range(5)])
    nb.metadata.papermill = {}                            # as papermill.execute_notebook prepares it
    writes = []
    monkeypatch.setattr(engines, "write_ipynb", lambda nb, path: writes.append(path))
    manager = engine.SparseSaves(nb, output_path=str(tmp_path / "run.ipynb"), progress_bar=False)
    manager.notebook_start()
    assert len(writes) == 1                               # the file is there from the start
    for i, cell in enumerate(nb.cells[:3]):
        manager.cell_start(cell, i)
        manager.cell_complete(cell, i)
    assert len(writes) == 1                               # papermill alone would have written 7 times by now
    manager.last_save_time -= datetime.timedelta(seconds=manager.autosave_cell_every)
    manager.cell_start(nb.cells[3], 3)
    assert len(writes) == 2                               # its autosave interval still holds
    manager.cell_exception(nb.cells[3], 3)
    manager.cell_complete(nb.cells[3], 3)
    assert len(writes) == 3 and nb.cells[3].metadata.papermill["status"] == "failed"
    manager.notebook_complete()
    assert len(writes) == 4
