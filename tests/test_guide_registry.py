"""The guide's list of steps (lib.guide.STEPS), which `--check` plans, against the notebooks, which
provisioning runs: under each `### Step N — title` heading, the cells call exactly that step's
planners, and no function marked @guide_step is left out of the list."""
import ast
import importlib
import inspect
import pkgutil

import nbformat
import pytest

import lib
from lib import REPO, guide
from lib.provision import runbook

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb"))


def planners_called(source: str, imported: dict) -> list:
    """The @guide_step functions a cell calls, in order, however it names them: `part1.x(env)`,
    `lib.part1.x(env)`, or `x(env)` after `from lib.part1 import x` in any cell of the notebook."""
    found = []
    calls = sorted((n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)),
                   key=lambda n: (n.lineno, n.col_offset))
    for node in calls:
        fn = None
        if isinstance(node.func, ast.Name):
            fn = imported.get(node.func.id)
        elif isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            module = imported.get(owner)
            if module is None and owner.startswith("lib."):
                module = importlib.import_module(owner)
            fn = getattr(module, node.func.attr, None) if inspect.ismodule(module) else None
        if getattr(fn, "guide_step", False) and fn not in found:
            found.append(fn)
    return found


def names_imported(nb) -> dict:
    """What the notebook's cells import from lib, by the name they use."""
    names = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lib"):
                module = importlib.import_module(node.module)
                for a in node.names:
                    value = getattr(module, a.name, None)
                    names[a.asname or a.name] = value if value is not None else importlib.import_module(
                        f"{node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("lib"):
                        names[a.asname or a.name] = importlib.import_module(a.name)
    return names


def steps_in_notebooks() -> list[tuple]:
    out = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        imported = names_imported(nb)
        sources = {c.get("id"): c.source for c in nb.cells if c.cell_type == "code"}
        for unit in runbook.units(nb, path.stem):
            planners = [fn for cid in unit.cell_ids for fn in planners_called(sources[cid], imported)]
            if planners:
                out.append((unit.notebook, unit.number, unit.title, tuple(planners)))
    return out


def test_the_notebooks_call_the_steps_of_the_list_and_no_other():
    listed = [(s.notebook, s.number, s.title, s.planners) for s in guide.STEPS]
    assert steps_in_notebooks() == listed


def test_every_function_marked_as_a_guide_step_is_in_the_list():
    planned = {fn for s in guide.STEPS for fn in s.planners}
    marked = [f"{m.name}.{name}" for m in pkgutil.walk_packages(lib.__path__, "lib.")
              if not m.name.endswith("__main__")                # running it would provision
              for name, fn in vars(importlib.import_module(m.name)).items()
              if inspect.isfunction(fn) and getattr(fn, "guide_step", False) and fn.__module__ == m.name
              and fn not in planned]
    assert not marked, f"marked @guide_step, missing from lib.guide.STEPS (so --check skips them): {marked}"


def test_a_step_called_another_way_is_still_found():
    """The old check looked for `part1.`/`part2.`/`failover.` calls only, and so never checked Step 45
    (`recovery.online_recovery(env)`)."""
    from lib import part1, recovery
    imported = {"recovery": recovery, "restart": part1.restart_primary}
    assert planners_called("recovery.online_recovery(env).apply()\nrestart(env)", imported) == [
        recovery.online_recovery, part1.restart_primary]
    assert planners_called("lib.part1.verify_primary(env)", {}) == [part1.verify_primary]


@pytest.mark.parametrize("step", guide.STEPS, ids=lambda s: f"{s.notebook}-{s.number}")
def test_each_step_has_planners_that_take_only_the_hosts(step):
    for fn in step.planners:
        assert list(inspect.signature(fn).parameters) == ["env"], fn
