"""Reading a notebook as the guide's steps: the progress lines and summary.json rest on it."""
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from lib.provision import runbook
from lib import REPO


def test_code_cells_belong_to_the_step_heading_above_them():
    nb = new_notebook(cells=[
        new_markdown_cell("# Title\n## Parameters"), new_code_cell("x = 1"),
        new_markdown_cell("## Section\n### Step 5 — Restart Master PostgreSQL"), new_code_cell("a"), new_code_cell("b"),
        new_markdown_cell("Prose without a heading"), new_code_cell("c"),
        new_markdown_cell("### Step 6: Verify"), new_markdown_cell("## Done"), new_code_cell("d")])
    units = runbook.units(nb, "01-x")
    assert [(u.number, u.title, len(u.cell_ids)) for u in units] == [
        (None, "Parameters", 1), (5, "Restart Master PostgreSQL", 3), (None, "Done", 1)]
    assert units[1].label == "Step  5  Restart Master PostgreSQL"
    by_cell = runbook.unit_of_cell(units)
    assert by_cell[nb.cells[6].id] is units[1]


@pytest.mark.parametrize("name, steps", [("01-streaming-replication", range(1, 18)), ("02-pgpool", range(18, 40))])
def test_each_notebook_has_the_guides_steps_in_order(name, steps):
    """Every step of the guide's part has a code cell, so ci/provision reports each one."""
    units = runbook.units(nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4), name)
    assert [u.number for u in units if u.number is not None] == list(steps)
