"""The executed guide as a static site: `python -m lib.book [RECORD]` (ci/book).

It executes nothing: the stored outputs are the content, or a run record's for the notebooks it holds. Sphinx with MyST-NB turns the
notebooks into pages with a table of contents, previous/next links and search. Before that, each notebook's
prose gets what a book needs and a notebook cannot hold:
- every diagram drawn as inline SVG (lib.diagrams), so pages carry no renderer;
- a label on every step's heading, and each "Step N" and "notebook 0N" in the prose a link to it; Sphinx
  fails the build on a link with no target;
- the outputs' commands highlighted as shell, and files' diff lines as insertions and deletions
  (lib.transcript_lexer).
The build runs with warnings as errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from lib import diagrams

REPO = Path(__file__).resolve().parent.parent
PAGES = REPO / "book"                      # the book's own pages (index.md), beside the notebooks
NOTEBOOKS = REPO / "notebooks"
BUILD = REPO / "build" / "book"

CONF = '''\
project = "PostgreSQL streaming replication behind PgPool-II"
author = "the pgpool-guide authors"
extensions = ["myst_nb"]
nb_execution_mode = "off"          # the stored outputs are the content
nb_merge_streams = True
myst_heading_anchors = 3
html_theme = "furo"
html_title = project
html_show_sourcelink = False
html_copy_source = False
exclude_patterns = ["_build"]
nb_render_text_lexer = "pgguide-transcript"    # a step's output: its commands highlighted (lib/transcript_lexer.py)
html_static_path = ["_static"]
html_css_files = ["transcript.css"]


def setup(app):
    import sys
    sys.path.insert(0, {repo!r})
    from lib.transcript_lexer import TranscriptLexer
    app.add_lexer("pgguide-transcript", TranscriptLexer)
'''

#: the transcript's marks, in light and dark mode alike: the prompt bold, a file's lines added and removed as a diff
TRANSCRIPT_CSS = """\
.highlight .gp { font-weight: bold; }
.highlight .gi { color: #2da44e; background: rgba(46, 160, 67, .12); }
.highlight .gd { color: #e5534b; background: rgba(229, 83, 75, .12); }
.highlight .go { color: inherit; }
"""

STEP_HEADING = re.compile(r"^(#{1,6}) Step (\d+) — ", re.M)
STEP_MENTION = re.compile(r"\b(Steps?) (\d+(?:(?:[–-]|, | and | or )\d+)*)\b")
NOTEBOOK_MENTION = re.compile(r"\b([Nn]otebook) (0\d)\b")
FENCE_LINE = re.compile(r"^\s*(```|~~~)")


POSTGRES_DOCS = "https://www.postgresql.org/docs/15/"
PGPOOL_DOCS = "https://www.pgpool.net/docs/latest/en/html/"
#: each setting the prose names, on the page of its documentation (anchors are GUC-<NAME>, as both projects'
#: DocBook sources make them). A name both servers use (listen_addresses, logging_collector) is left out.
SETTING_PAGES = {
    POSTGRES_DOCS + "runtime-config-wal.html": "wal_level wal_log_hints synchronous_commit wal_writer_delay",
    POSTGRES_DOCS + "runtime-config-replication.html": "max_wal_senders wal_keep_size synchronous_standby_names "
                                                       "primary_conninfo wal_receiver_timeout wal_retrieve_retry_interval",
    POSTGRES_DOCS + "runtime-config-connection.html": "max_connections password_encryption tcp_user_timeout",
    POSTGRES_DOCS + "runtime-config-client.html": "default_transaction_read_only",
    PGPOOL_DOCS + "runtime-config-connection.html": "num_init_children max_pool",
    PGPOOL_DOCS + "runtime-config-health-check.html": "health_check_period health_check_timeout health_check_max_retries "
                                                      "health_check_retry_delay",
    PGPOOL_DOCS + "runtime-streaming-replication-check.html": "sr_check_period delay_threshold delay_threshold_by_time",
    PGPOOL_DOCS + "runtime-config-load-balancing.html": "statement_level_load_balance disable_load_balance_on_write "
                                                        "database_redirect_preference_list app_name_redirect_preference_list "
                                                        "user_redirect_preference_list",
    PGPOOL_DOCS + "runtime-config-failover.html": "failover_command failback_command follow_primary_command "
                                                  "failover_on_backend_error search_primary_node_timeout auto_failback "
                                                  "auto_failback_interval detach_false_primary",
}
SETTING_DOCS = {name: f"{page}#GUC-{name.upper().replace('_', '-')}"
                for page, names in SETTING_PAGES.items() for name in names.split()}
SETTING_SPAN = re.compile(r"`([a-z_]+)(?: = [^`]*)?`")


def step_label(n: int | str) -> str:
    return f"step-{int(n)}"


def link_mentions(text: str, notebooks: dict[str, str]) -> str:
    """Each "Step N" (and "Steps N–M") and "notebook 0N" in prose a MyST reference, and each setting in a code
    span a link to its documentation; fenced code, headings and links are left as they are."""
    out, in_fence = [], False
    for line in text.splitlines(True):
        if FENCE_LINE.match(line):
            in_fence = not in_fence
        if in_fence or FENCE_LINE.match(line) or line.lstrip().startswith("#"):
            out.append(line)
            continue
        parts = re.split(r"(`[^`]*`|\[[^\]]*\]\([^)]*\))", line)
        out.append("".join(_documented(p) if i % 2 else _linked(p, notebooks) for i, p in enumerate(parts)))
    return "".join(out)


def _documented(span: str) -> str:
    """A code span naming a setting (`wal_level`, `wal_level = replica`) as a link to its documentation."""
    found = SETTING_SPAN.fullmatch(span)
    return f"[{span}]({SETTING_DOCS[found.group(1)]})" if found and found.group(1) in SETTING_DOCS else span


def _linked(prose: str, notebooks: dict[str, str]) -> str:
    def step(m):
        word, numbers = m.groups()
        if word == "Step" and numbers.isdigit():
            return f"{{ref}}`Step {numbers} <{step_label(numbers)}>`"
        return f"{word} " + re.sub(r"\d+", lambda n: f"{{ref}}`{n.group(0)} <{step_label(n.group(0))}>`", numbers)

    def notebook(m):
        word, number = m.groups()
        doc = notebooks.get(number)
        return f"{{doc}}`{word} {number} <{doc}>`" if doc else m.group(0)
    return NOTEBOOK_MENTION.sub(notebook, STEP_MENTION.sub(step, prose))


def labelled_steps(text: str) -> str:
    return STEP_HEADING.sub(lambda m: f"({step_label(m.group(2))})=\n{m.group(0)}", text)


def svg_block(svg: str) -> str:
    return f"\n````{{raw}} html\n{diagrams.figure(svg)}\n````\n"


def prepared(paths: list[Path]) -> dict[str, nbformat.NotebookNode]:
    """The notebooks as the book shows them, by page name."""
    notebooks = {p.stem[:2]: p.stem for p in paths}
    books = {p.stem: nbformat.read(p, as_version=4) for p in paths}
    for name, nb in books.items():
        prose = [c for c in nb.cells if c.cell_type == "markdown"]
        diagrams.drawn_in(prose, f"{name}.ipynb", svg_block)
        for c in prose:
            # a notebook links a chapter as ../book/NAME.md, which is beside it in the book
            c.source = link_mentions(labelled_steps(c.source.replace("](../book/", "](")), notebooks)
    return books


def build(record: Path | None = None, out: Path = BUILD) -> Path:
    """The site from the stored notebooks, or from a run record's executed copies; returns its index.html."""
    stored = sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
    ran = {p.name: p for p in (record.glob("[0-9][0-9]-*.ipynb") if record else [])}
    if record and not ran:
        raise SystemExit(f"ci/book: no notebooks in {record}")
    # a record holds what provisioning ran (the drills and the diagnosis never are): the rest is the stored run
    paths = [ran.get(p.name, p) for p in stored]
    src = out / "src"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(PAGES, src)
    if record:
        index = src / "index.md"
        said = ", ".join(sorted(p.stem for p in ran.values()))
        index.write_text(index.read_text().replace("\n## How to read it", f"\n```{{note}}\nThis book shows the run record "
                         f"`{record.name}` ({said}); the other chapters are the stored run.\n```\n\n## How to read it", 1))
    shutil.copytree(REPO / "bench", out / "bench", ignore=shutil.ignore_patterns("*.json"))   # the plots ../bench/ names
    (src / "conf.py").write_text(CONF.replace("{repo!r}", repr(str(REPO))))
    (src / "_static").mkdir(exist_ok=True)
    (src / "_static" / "transcript.css").write_text(TRANSCRIPT_CSS)
    notebooks = {p.stem[:2]: p.stem for p in paths}
    for page in src.glob("*.md"):
        page.write_text(link_mentions(page.read_text(), notebooks))
    for name, nb in prepared(paths).items():
        nbformat.write(nb, src / f"{name}.ipynb")
    html = out / "html"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(html)],
                          text=True)
    if done.returncode:
        raise SystemExit(f"ci/book: sphinx-build failed ({done.returncode}): the warnings above are errors here")
    return html / "index.html"


def main(argv: list[str]) -> int:
    record = Path(argv[0]).resolve() if argv else None
    try:
        index = build(record)
    except diagrams.DiagramError as e:
        print(f"ci/book: {e}", file=sys.stderr)
        return 1
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
