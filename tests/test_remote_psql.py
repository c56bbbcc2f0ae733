"""Remote.psql's end-of-input marker: an answer counts only when psql read all of its SQL."""
import pytest

from labtools import PARAMS_FILE, lab, needs_root
from lib import params as P
from lib.remote import PSQL_END, Remote, Result, StepFailed, whole_input


def test_the_marker_is_removed_from_a_whole_answer():
    got = whole_input(Result("psql", 0, f"t\n{PSQL_END}\n", ""), "vm1")
    assert got.stdout == "t\n" and got.ok


def test_an_empty_answer_is_still_an_answer_when_the_sql_arrived():
    assert whole_input(Result("psql", 0, f"{PSQL_END}\n", ""), "vm1").stdout == ""


def test_exit_0_without_the_marker_is_a_cut_input_not_an_empty_answer():
    with pytest.raises(StepFailed, match="vm1: psql exited 0 without reaching the end of its SQL"):
        whole_input(Result("psql", 0, "", ""), "vm1")


def test_a_failed_psql_is_returned_as_it_failed():
    got = whole_input(Result("psql", 3, "", "ERROR:  relation does not exist"), "vm1")
    assert got.exit_code == 3 and "ERROR" in got.stderr


@needs_root
@pytest.mark.lab
@pytest.mark.parametrize("sql, answer", [("SELECT 1", "1\n"), ("SELECT 1;", "1\n"), ("SELECT 1 -- a comment", "1\n"),
                                         ("SELECT 1; SELECT 2", "1\n2\n"), ("SET search_path = public", "")])
def test_psql_on_a_lab_host_returns_the_answer_without_the_marker(sql, answer):
    """psql runs a backslash command as soon as it reads it, but sends a statement without its ";"
    only at the end of its input: the marker must come after the answer either way."""
    if lab("status", PARAMS_FILE, check=False).returncode != 0:
        lab("up", PARAMS_FILE)
    prm = P.load(PARAMS_FILE)
    assert Remote(prm, prm.primary).psql(sql).stdout == answer
