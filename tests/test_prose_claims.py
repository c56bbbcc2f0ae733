"""What the prose claims and can be counted is counted: the drills of the diagnosis, the notebooks, the drills
of notebook 04. A claim that drifts from what is there fails here, with both numbers."""
import re

import nbformat

from lib import REPO
from tests.test_diagnose import DRILLS
from tests.test_stored_notebooks import NOTEBOOKS

README = (REPO / "README.md").read_text()
OPERATE = (REPO / "book" / "operate.md").read_text()


def prose(name: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def code(name: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_the_diagnosis_drills_counted_where_they_are_named():
    said = [int(n) for n in re.findall(r"breaks the lab in (\d+) ways", prose("05-troubleshooting.ipynb"))]
    said += [int(n) for n in re.findall(r"`tests/test_diagnose.py`, (\d+) of them", OPERATE)]
    assert len(said) == 2 and set(said) == {len(DRILLS)}, f"the prose says {said}; tests/test_diagnose.py has {len(DRILLS)}"


def test_every_notebook_is_in_the_readmes_table_and_in_00s():
    names = [p.stem for p in NOTEBOOKS]
    assert re.findall(r"^\| `notebooks/(\d\d-[\w-]+)\.ipynb` \|", README, re.M) == names
    assert re.findall(r"^\| \[(\d\d-[\w-]+)\]\(\1\.ipynb\) \|", prose("00-environment.ipynb"), re.M) == names


def test_notebook_04s_table_lists_the_drills_it_runs():
    table = re.findall(r"^\| (\d+[a-z]?) \|", prose("04-failover-drills.ipynb"), re.M)
    run = re.findall(r'^figures\["(\d+[a-z]?) ', code("04-failover-drills.ipynb"), re.M)
    assert table == run, f"the table lists drills {table}; the notebook runs {run}"
