"""Mermaid diagrams drawn once, when a page is written: each source becomes an inline SVG, so a page
carries no 2.7 MB renderer and shows its diagrams in any browser, offline.

The drawing is mermaid's own (the browser build that ci/bootstrap fetches, lib/provision/renderer.py),
in headless Chromium, all diagrams of a call in one page. A drawing is kept under build/diagrams/, named
by the hash of what made it, so a diagram is drawn once until its source, mermaid or the settings here
change. A source mermaid cannot parse is an error that names the diagram, never a page that shows the
source behind a warning mark."""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from lib import REPO
from lib.provision.renderer import VERSION

RENDERER = REPO / ".venv" / "share" / "pgguide" / "mermaid.min.js"
DRAWN = REPO / "build" / "diagrams"
#: Arial's metrics, which every reader's browser has in some form: the labels are measured here, in
#: Chromium, and must fit wherever the SVG is shown
FONT = '"Liberation Sans", Arial, Helvetica, sans-serif'
SETTINGS = {"startOnLoad": False, "securityLevel": "strict", "theme": "default", "fontFamily": FONT,
            "htmlLabels": True, "sequence": {"wrap": True}}
FENCE = re.compile(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
#: the class of the <figure> around each drawn diagram, by which a test (or a reader of the page's source)
#: tells one apart
MARK = "pgguide-diagram"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"]

PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script>{renderer}</script></head><body>
<script id="sources" type="application/json">{sources}</script>
<script type="module">
mermaid.initialize({settings});
const sources = JSON.parse(document.getElementById("sources").textContent);
const drawn = [];
for (const [i, source] of sources.entries()) {{
  try {{
    drawn.push({{svg: (await mermaid.render("{mark}-{batch}-" + i, source)).svg}});
  }} catch (e) {{
    drawn.push({{error: String(e && e.message || e)}});
  }}
}}
const out = document.createElement("textarea");
out.id = "drawn";
out.textContent = JSON.stringify(drawn);
document.body.append(out);
</script></body></html>
"""


class DiagramError(Exception):
    pass


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise DiagramError("chromium is missing: ci/bootstrap installs it (apt-get install chromium)")
    return found


def _key(source: str) -> str:
    return hashlib.sha256(json.dumps([VERSION, SETTINGS, source]).encode()).hexdigest()[:32]


def draw(sources: list[str], names: list[str] | None = None) -> list[str]:
    """Each mermaid source as an SVG element (text, on one line), in order. Raises DiagramError naming
    every diagram that mermaid could not draw, with mermaid's words."""
    names = names or [f"diagram {i + 1}" for i in range(len(sources))]
    kept = {s: DRAWN / f"{_key(s)}.svg" for s in sources}
    missing = [s for s in dict.fromkeys(sources) if not kept[s].is_file()]
    if missing:
        for source, svg in zip(missing, _draw_in_chromium(missing, [names[sources.index(s)] for s in missing])):
            DRAWN.mkdir(parents=True, exist_ok=True)
            part = kept[source].with_suffix(f".{os.getpid()}.part")       # runs beside each other may draw it too
            part.write_text(svg)
            part.replace(kept[source])
    return [kept[s].read_text() for s in sources]


def _draw_in_chromium(sources: list[str], names: list[str]) -> list[str]:
    if not RENDERER.is_file():
        raise DiagramError(f"mermaid is missing ({RENDERER}): run ci/bootstrap, which fetches it from the npm registry")
    # element ids must differ between drawings that may share a page: the batch is named by its sources
    batch = hashlib.sha256("\0".join(sources).encode()).hexdigest()[:8]
    page = PAGE.format(renderer=RENDERER.read_text(), settings=json.dumps(SETTINGS), mark=MARK, batch=batch,
                       sources=json.dumps(sources).replace("</", "<\\/"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "draw.html"
        path.write_text(page)
        dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile",
                              "--virtual-time-budget=60000", "--dump-dom", path.as_uri()],
                             capture_output=True, text=True, timeout=300).stdout
    found = re.search(r'<textarea id="drawn">(.*?)</textarea>', dom, re.S)
    if not found:
        raise DiagramError(f"mermaid {VERSION} drew nothing in headless Chromium (its page ended: {dom[-300:]!r})")
    drawn = json.loads(html.unescape(found.group(1)))
    failed = [f"{name}: {d['error']}" for name, d in zip(names, drawn) if "error" in d]
    if failed:
        raise DiagramError("mermaid could not draw:\n  " + "\n  ".join(failed))
    return [compact(d["svg"]) for d in drawn]


GEOMETRY = re.compile(r'(\s(?:d|transform|viewBox|points|x|y|x1|y1|x2|y2|width|height|cx|cy|r|rx|ry|style)=")([^"]*)"')
LONG_DECIMAL = re.compile(r"(\d+\.\d)\d+")
#: the icons a sequence diagram may give its actors (a database, a computer, a clock), 12 KB, kept only where used
SYMBOL = re.compile(r'<symbol id="([^"]+)".*?</symbol>', re.S)


def compact(svg: str) -> str:
    """One line (markdown ends a raw HTML block at a blank line), and coordinates to a tenth of a pixel:
    mermaid writes 15 digits, which made a diagram's edges 85 KB. Only geometry attributes are touched,
    never a label's text. Unused icons go."""
    svg = GEOMETRY.sub(lambda m: m.group(1) + LONG_DECIMAL.sub(r"\1", m.group(2)) + '"', svg)
    svg = SYMBOL.sub(lambda m: m.group(0) if f'#{m.group(1)}"' in svg else "", svg)
    return re.sub(r"\s*\n\s*", " ", svg)


def sources_in(markdown: str) -> list[str]:
    return [m.group(1) for m in FENCE.finditer(markdown)]


def figure(svg: str) -> str:
    return f'<figure class="{MARK}">{svg}</figure>'


def drawn_in(cells: list, where: str, wrap) -> None:
    """Every mermaid fence in these markdown cells replaced, in place, by wrap(svg); drawn in one batch."""
    sources, names = [], []
    for i, cell in enumerate(cells):
        found = sources_in(cell.source)
        sources += found
        names += [f"{where}, markdown cell {i + 1}"] * len(found)
    svgs = iter(draw(sources, names))
    for cell in cells:
        if sources_in(cell.source):
            cell.source = FENCE.sub(lambda m: wrap(next(svgs)), cell.source)
