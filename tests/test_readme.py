"""The bad-input table (book/operate.md) is the list of tested cases, no more and no less."""
import re

from lib import REPO
from test_bad_input import CASES

EXTRA_CASES = ["wrong sudo password", "wrong database password",   # their own tests in test_bad_input.py
               "a shell command, `$(…)`, a newline or a space in any string parameter"]


def bad_input_rows():
    text = (REPO / "book" / "operate.md").read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return [re.split(r"\s*\|\s*", line.strip())[1] for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| Bad input")]


def test_every_tested_bad_input_is_in_the_table_and_nothing_else():
    tested = [case for case, *_ in CASES] + EXTRA_CASES
    rows = bad_input_rows()
    assert len(rows) >= 12
    assert rows == tested
