"""Diagrams are drawn when a page is written (lib.diagrams): every diagram in the stored notebooks draws,
a diagram mermaid cannot parse stops the writing with its name, and the drawn SVG is compact."""
import uuid

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from lib import diagrams
from lib.provision.record import external_references, render_html
from tests.test_stored_notebooks import NOTEBOOKS


def test_every_diagram_in_the_stored_notebooks_draws():
    sources, names = [], []
    for path in NOTEBOOKS:
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            found = diagrams.sources_in(cell.source) if cell.cell_type == "markdown" else []
            sources += found
            names += [f"{path.name}, cell {i}"] * len(found)
    assert len(sources) >= 6
    drawn = diagrams.draw(sources, names)
    assert all(svg.startswith("<svg") and "\n" not in svg for svg in drawn)


def test_a_diagram_mermaid_cannot_parse_names_itself():
    # a ';' ends a sequence diagram's statement, so the words after it are read as a new one
    broken = f"sequenceDiagram\n    A->>B: detach node 0; run failover_command {uuid.uuid4().hex}\n"
    with pytest.raises(diagrams.DiagramError, match=r"03-failover.ipynb, cell 0: Parse error"):
        diagrams.draw(["flowchart LR\n  A --> B\n", broken], ["fine", "03-failover.ipynb, cell 0"])


def test_geometry_is_rounded_and_text_is_not():
    svg = ('<svg viewBox="0 0 502.39739990234375 251.96664428710938">\n<path d="M231.93333435058594,341L1.5,2"/>'
           '<text x="12.345678">10.213.93.132 at 0.123456</text><symbol id="computer"><path d="M0 0"/></symbol>'
           '<symbol id="used"></symbol><use href="#used"/></svg>')
    assert diagrams.compact(svg) == (
        '<svg viewBox="0 0 502.3 251.9"> <path d="M231.9,341L1.5,2"/><text x="12.3">10.213.93.132 at 0.123456</text>'
        '<symbol id="used"></symbol><use href="#used"/></svg>')


def test_a_record_page_draws_its_diagrams_inline_and_loads_nothing(tmp_path):
    nb = new_notebook(cells=[
        new_markdown_cell("# A page\n\n```mermaid\nflowchart LR\n  VM1 --> VM2\n```\n"),
        new_code_cell("environment = None", metadata={"tags": ["parameters", "remove-input"]}),
        new_code_cell("print('hi')", outputs=[new_output("stream", name="stdout", text="hi\n")])])
    nbformat.write(nb, tmp_path / "m.ipynb")
    page = render_html(tmp_path / "m.ipynb").read_text()
    assert page.count(f'<figure class="{diagrams.MARK}"><svg') == 1 and "```mermaid" not in page
    assert "<script" not in page and external_references(page) == []
    assert "<title>A page</title>" in page and "hi" in page
    assert "environment = None" not in page                   # plumbing hidden, as in the book
