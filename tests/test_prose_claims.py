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


def test_each_notebook_says_what_it_teaches_needs_and_takes_and_ends_with_a_recap():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[1].source      # right after the title and its first paragraph
        assert all(w in first for w in ("**You will learn**", "**You need**", "**It takes**")), path.name
        sections = [c.source.splitlines()[0] for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
        after = sections[sections.index("## Recap") + 1:] if "## Recap" in sections else None
        # the recap ends the lesson; only appendices may follow it
        assert after is not None and all(s.startswith("## Appendix") for s in after), (path.name, sections[-3:])


def test_the_time_a_notebook_says_it_takes_is_what_ci_bench_measured():
    import json
    measured = json.loads((REPO / "bench" / "results.json").read_text())["provisioning"]["notebooks, fresh"]
    for name, figure in measured.items():
        said = re.search(r"\*\*It takes\*\* about (\d+) s on the lab", prose(f"{name}.ipynb"))
        assert said and int(said.group(1)) == max(1, round(figure["median"])), \
            f"{name} says {said and said.group(0)}; ci/bench measured {figure['median']:.1f} s (bench/results.json)"


def test_the_tutorial_names_no_test_file_and_nothing_names_an_issue():
    """The notebooks teach; the chapters for operators and maintainers may cite the tests that prove a claim."""
    texts = {p.name: prose(p.name) for p in NOTEBOOKS} | {"README.md": README} | \
        {p.name: re.sub(r"tests/test_\w+", "", p.read_text()) for p in (REPO / "book").glob("*.md")}
    found = {name: m.group(0) for name, text in texts.items()
             for m in [re.search(r"tests/test_\w+|\b[Ii]ssues? #?\d+|\(issue", text)] if m}
    assert not found, f"maintainer detail in the reader's text: {found}"


def step_cells(name: str, number: int) -> tuple[str, str]:
    """A step's prose and its stored output, from its heading to the next heading."""
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    prose_, output, inside = [], [], False
    for c in nb.cells:
        if c.cell_type == "markdown":
            if re.search(rf"^#+ Step {number} — ", c.source, re.M):
                inside = True
            elif inside and re.search(r"^#+ ", c.source, re.M):
                break
            if inside:
                prose_.append(c.source)
        elif inside:
            output.append("".join(o.get("text", "") for o in c.outputs))
    return "\n".join(prose_), "\n".join(output)


def test_step_9s_flag_table_names_the_flags_that_ran():
    text, output = step_cells("01-streaming-replication.ipynb", 9)
    command = next(line for line in output.splitlines() if "pg_basebackup " in line)
    flags = [w for row in re.findall(r"^\| `([^`]+)`", text, re.M) for w in row.split() if w.startswith("-")]
    assert len(flags) >= 8 and all(f" {f} " in f" {command} " for f in flags), (flags, command)


def test_step_8s_prose_says_the_command_that_ran():
    text, output = step_cells("01-streaming-replication.ipynb", 8)
    assert "rm -rf" in text and " && ls " in output and "find " not in text


def test_step_34_names_every_column_psql_prints():
    text, output = step_cells("02-pgpool.ipynb", 34)
    header = next(line for line in output.splitlines() if line.lstrip().startswith("node_id"))
    columns = [c.strip() for c in header.split("|")]
    unnamed = [c for c in columns if f"`{c}`" not in text and c not in ("node_id", "hostname", "port")]
    assert len(columns) == 14 and not unnamed, unnamed


def test_each_troubleshooting_row_names_the_step_that_sets_it_right():
    rows = [r for r in re.findall(r"^\| (.+) \|$", prose("05-troubleshooting.ipynb"), re.M) if not r.startswith("---")]
    headers = [r for r in rows if r.startswith(("The guide's", "Check |"))]
    assert len(headers) == 3 and all("Set " in h for h in headers), headers
    body = [r.split(" | ") for r in rows if r not in headers]
    # the guide's rows end with the step; the settings table has it second
    steps = [cells[-1] if len(cells) == 4 else cells[1] for cells in body]
    assert all(re.fullmatch(r"(Steps? \d+.*|notebook 0\d)", s) for s in steps), steps
