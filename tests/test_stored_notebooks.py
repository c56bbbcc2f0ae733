"""The stored outputs are the documentation and the test: a code cell that was never
executed checks nothing, so every stored notebook must be one complete, in-order run."""
import json
import re

import nbformat
import pytest

from lib import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SECRET_LOOKING = re.compile(r"replica123|postgres123|pgpool123|password=(?!\*)\S")


def code_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_a_unique_id(path):
    """Provisioning's progress lines find a step's cells by id: a cell without one is never reported."""
    ids = [c.get("id") for c in json.loads(path.read_text())["cells"]]     # nbformat.read would make up ids
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: cells without an id or with the same id"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_has_run_once_in_order(path):
    counts = [c.execution_count for c in code_cells(path)]
    assert None not in counts, f"{path.name}: cells {[i for i, c in enumerate(counts) if c is None]} never ran; " \
                               "run ci/refresh-outputs"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: execution counts {counts} are not one run"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_but_parameters_shows_output(path):
    silent = [c.execution_count for c in code_cells(path)
              if not c.outputs and "parameters" not in c.metadata.get("tags", [])]
    assert not silent, f"{path.name}: cells {silent} have no stored output; print the evidence they check"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_errors_and_no_secrets_in_outputs(path):
    for c in code_cells(path):
        for out in c.outputs:
            assert out.output_type != "error", f"{path.name} cell {c.execution_count}: {out.get('evalue')}"
            text = str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
            assert not SECRET_LOOKING.search(text), f"{path.name} cell {c.execution_count} shows a secret"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exclusions_from_comparison_are_rare_explained_and_seen_by_nbval(path):
    from nbval.plugin import find_comment_markers

    cells = code_cells(path)
    excluded = 0
    for c in cells:
        tags = set(c.metadata.get("tags", []))
        assert not {"nbval-ignore-output", "nbval-skip"} & tags, \
            f"{path.name} cell {c.execution_count}: use a '# NBVAL_...' comment with its reason, not a tag"
        if re.search(r"NBVAL_(IGNORE_OUTPUT|SKIP)", c.source):
            excluded += 1
            lines = c.source.strip().splitlines()
            assert dict(find_comment_markers(c.source)), \
                f"{path.name} cell {c.execution_count}: nbval does not see {lines[0]!r} (the marker stands alone on its line)"
            assert len(lines) > 1 and lines[1].startswith("# Not compared: ") and len(lines[1]) > 30, \
                f"{path.name} cell {c.execution_count}: the line after the marker says '# Not compared: <why>'"
    assert excluded <= max(1, len(cells) // 10), f"{path.name}: {excluded} of {len(cells)} cells are not compared"


def is_plumbing(cell) -> bool:
    """What a reader need not see: the parameters, the session's start, the cells that print measured figures
    (excluded from comparison)."""
    return ("parameters" in cell.metadata.get("tags", []) or "notebook.start(" in cell.source
            or cell.source.startswith("# NBVAL_IGNORE_OUTPUT"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_plumbing_is_hidden_in_the_book_and_in_jupyterlab(path):
    plumbing = [c for c in code_cells(path) if is_plumbing(c)]
    assert len(plumbing) >= 2, f"{path.name}: no parameters or start cell found"
    shown = [c.execution_count for c in plumbing if "remove-input" not in c.metadata.get("tags", [])
             or not c.metadata.get("jupyter", {}).get("source_hidden")]
    assert not shown, f"{path.name}: cells {shown} show their plumbing: tag them remove-input, and set " \
                      "metadata.jupyter.source_hidden"
