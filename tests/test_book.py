"""The book (ci/book): the stored notebooks as a static site that reads offline. Built once here, then
opened page by page in headless Chromium: every page loads, every diagram is an SVG and none is an error,
every link inside the site reaches a page and an anchor that exist, and the search finds pool_passwd."""
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from lib import book, diagrams
from tests.test_stored_notebooks import NOTEBOOKS

NOTEBOOK_PAGES = {"03": "03-failover", "04": "04-failover-drills"}


#: the tests that build the book with Sphinx (about 20 s in all): ci/test runs them, --unit leaves them out
BUILDS = pytest.mark.book


def test_a_step_and_a_notebook_in_prose_become_links():
    text = "Step 30's settings; Steps 7–9 clear it (notebook 04 breaks it)."
    assert book.link_mentions(text, NOTEBOOK_PAGES) == (
        "{ref}`Step 30 <step-30>`'s settings; Steps {ref}`7 <step-7>`–{ref}`9 <step-9>` clear it "
        "({doc}`notebook 04 <04-failover-drills>` breaks it).")


def test_each_step_of_a_list_is_linked():
    assert book.link_mentions("Steps 3, 23 and 26", NOTEBOOK_PAGES) == \
        "Steps {ref}`3 <step-3>`, {ref}`23 <step-23>` and {ref}`26 <step-26>`"


def test_a_setting_links_to_its_documentation():
    assert book.link_mentions("`wal_level = replica` and `health_check_period`, not `listen_addresses`", {}) == (
        "[`wal_level = replica`](https://www.postgresql.org/docs/15/runtime-config-wal.html#GUC-WAL-LEVEL) and "
        "[`health_check_period`](https://www.pgpool.net/docs/latest/en/html/runtime-config-health-check.html"
        "#GUC-HEALTH-CHECK-PERIOD), not `listen_addresses`")


def test_every_documented_setting_is_named_somewhere_in_the_prose():
    prose = "\n".join([c.source for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells]
                      + [p.read_text() for p in book.PAGES.glob("*.md")])
    unused = [n for n in book.SETTING_DOCS if f"`{n}" not in prose]
    assert not unused, f"links kept for settings the prose never names: {unused}"


def test_code_headings_and_links_are_left_as_they_are():
    text = ("### Step 31 — Configure `wal_level`, pool_hba.conf\n`Step 3` in code, [Step 2](x.md) linked\n"
            "```\nStep 9 in a fence\n```\nand notebook 09, which does not exist\n")
    assert book.link_mentions(text, NOTEBOOK_PAGES) == text


def test_a_step_heading_gets_its_label():
    assert book.labelled_steps("intro\n### Step 12 — Check Replication\n") == \
        "intro\n(step-12)=\n### Step 12 — Check Replication\n"


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def read(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def in_browser(url: str, wait_ms: int = 0) -> str:
    flags = [*diagrams.CHROMIUM_FLAGS, *([f"--virtual-time-budget={wait_ms}"] if wait_ms else []), "--dump-dom"]
    return subprocess.run([diagrams.chromium(), *flags, url], capture_output=True, text=True, timeout=120,
                          check=True).stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    index = book.build(out=tmp_path_factory.mktemp("book"))
    assert index.name == "index.html" and index.is_file()
    return index.parent


@BUILDS
def test_each_notebook_is_a_page_in_order_with_previous_and_next(site):
    pages = [p.stem for p in NOTEBOOKS]
    index = read(site / "index.html")
    assert list(dict.fromkeys(h.removesuffix(".html") for h in index.links if h.removesuffix(".html") in pages)) == pages
    middle = read(site / f"{pages[2]}.html")
    assert f"{pages[1]}.html" in middle.links and f"{pages[3]}.html" in middle.links


@BUILDS
def test_every_page_loads_and_draws_every_diagram_as_svg(site):
    for path in NOTEBOOKS:
        fences = sum(len(diagrams.sources_in(c.source)) for c in nbformat.read(path, as_version=4).cells
                     if c.cell_type == "markdown")
        dom = in_browser((site / f"{path.stem}.html").as_uri())
        assert "<h1>" in dom, f"{path.stem}: the page did not load"
        assert dom.count(f'<figure class="{diagrams.MARK}"><svg') == fences, f"{path.stem}: a diagram is not drawn"
        assert "language-mermaid" not in dom and "Syntax error in text" not in dom, path.stem


@BUILDS
def test_every_link_inside_the_site_reaches_its_page_and_anchor(site):
    pages = {p: read(p) for p in site.glob("*.html")}
    broken = []
    for path, page in pages.items():
        for href in page.links:
            url = urlsplit(href)
            if url.scheme or href.startswith("//"):
                continue
            target = (path.parent / unquote(url.path)).resolve() if url.path else path
            if target.suffix == ".html" and target not in pages:
                broken.append(f"{path.name}: {href} (no such page)")
            elif url.fragment and target in pages and unquote(url.fragment) not in pages[target].ids:
                broken.append(f"{path.name}: {href} (no such anchor)")
    assert not broken, "\n".join(broken)
    steps = [h for page in pages.values() for h in page.links if re.search(r"#step-\d+$", h)]
    assert len(steps) > 100, "the prose's step mentions are not links"


@BUILDS
def test_the_search_finds_pool_passwd(site):
    dom = in_browser(f"{(site / 'search.html').as_uri()}?q=pool_passwd", wait_ms=10000)
    found = re.search(r"found (\d+) pages? matching", dom)
    assert found and int(found.group(1)) >= 2, "Sphinx's search found nothing offline"
    assert 'href="02-pgpool.html' in dom


@BUILDS
def test_a_step_with_no_heading_fails_the_build(tmp_path, monkeypatch):
    broken = tmp_path / "notebooks"
    broken.mkdir()
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("As Step 99 says."))
    nbformat.write(nb, broken / NOTEBOOKS[0].name)
    with pytest.raises(SystemExit, match="sphinx-build failed"):
        book.build(broken, out=tmp_path / "book")


@BUILDS
def test_step_30s_diff_is_folded_and_its_grouped_settings_shown(site):
    page = (site / "02-pgpool.html").read_text()
    folded = re.search(r"<details class=\"[^\"]*hide[^\"]*\">(.*?)</details>", page, re.S)
    assert folded and "edit /etc/pgpool2/pgpool.conf" in re.sub(r"<[^>]+>", "", folded.group(1))   # text, not markup
    assert "grouped as the guide groups them" in page.replace(folded.group(1), "")


@BUILDS
def test_a_run_records_book_shows_its_notebooks_and_the_stored_rest(tmp_path):
    record = tmp_path / "20261207-000000"
    record.mkdir()
    nb = nbformat.read(NOTEBOOKS[1], as_version=4)
    nb.cells[0].source += "\n\nThis copy ran in the record."
    nbformat.write(nb, record / NOTEBOOKS[1].name)
    site = book.build(record, out=tmp_path / "book").parent
    assert "This copy ran in the record." in (site / f"{NOTEBOOKS[1].stem}.html").read_text()
    assert f"run record <code class=\"docutils literal notranslate\"><span class=\"pre\">{record.name}</span>" in \
        (site / "index.html").read_text()
    assert all((site / f"{p.stem}.html").is_file() for p in NOTEBOOKS)


@BUILDS
def test_outputs_show_their_commands_highlighted_and_diffs_as_insertions_and_deletions(site):
    page = (site / "01-streaming-replication.html").read_text()
    # Sphinx's pygments classes: gp a prompt, gi/gd inserted/deleted lines, go plain output
    assert '<span class="gp">vm1 (postgres) $ </span>' in page
    assert '<span class="gi">+wal_level = \'replica\'' in page
    assert '<span class="gd">-#wal_level = replica' in page
    assert '<span class="go">' in page
