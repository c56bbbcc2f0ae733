"""`ci/provision --check`: is the live cluster still what the guide builds? Changes nothing.

There is no list of checks here. The notebooks are the list: under each `### Step N — Title`
heading, the cells call functions marked @guide_step (lib.part1, lib.part2). The check
finds those calls and builds the same steps on read-only hosts (file writes refused, SQL
sessions read-only). A step whose plan is not empty has drifted: its plan, as it would run,
is the drift. Its verifications of live state run too (those that would write, or take
long, run only when provisioning).
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nbformat

from lib import REPO
from lib.provision import runbook
from lib.remote import Hosts

NOTEBOOKS = REPO / "notebooks"
STEP_MODULES = ("part1", "part2", "failover")


@dataclass
class Checked:
    unit: runbook.Unit
    hosts: list[str] = field(default_factory=list)
    drifts: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"Step {self.unit.number:>2}" if self.unit.number is not None else self.unit.title


def step_functions(source: str) -> list[Callable]:
    """The @guide_step functions a cell calls, in order (`part1.configure_primary(env)`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id in STEP_MODULES):
            fn = getattr(importlib.import_module(f"lib.{node.func.value.id}"), node.func.attr, None)
            if getattr(fn, "guide_step", False) and fn not in found:
                found.append(fn)
    return found


def guide_steps(notebooks: list[Path] | None = None) -> list[tuple[runbook.Unit, list[Callable]]]:
    """(step, its functions) for every step whose cells call one, in the notebooks' order."""
    out = []
    for path in notebooks or sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        sources = {c.get("id"): c.source for c in nb.cells if c.cell_type == "code"}
        for unit in runbook.units(nb, path.stem):
            fns = [fn for cid in unit.cell_ids for fn in step_functions(sources[cid])]
            if fns:
                out.append((unit, fns))
    return out


def run(env: Hosts) -> list[Checked]:
    results = []
    for unit, fns in guide_steps():
        checked = Checked(unit)
        for fn in fns:
            try:
                step = fn(env)
                for action in step.plan:
                    if action.host not in checked.hosts:
                        checked.hosts.append(action.host)
                checked.drifts += step.drift()
            except Exception as e:          # one failing check must not hide the others
                lines = str(e).strip().splitlines() or [type(e).__name__]
                why = next((l.removeprefix("stderr: ") for l in lines if l.startswith("stderr: ")), "")
                checked.drifts.append(f"could not check: {lines[0]}" + (f" ({why})" if why else ""))
        results.append(checked)
    return results


def main(params, say: Callable[[str], None]) -> int:
    """Print one line per guide step; exit status 0 when the cluster matches the guide."""
    env = Hosts(params, read_only=True)
    say(f"check {params.environment}: does the live cluster still match the guide? (nothing is changed)")
    try:
        from lib.clone_guard import roles_swapped
        try:
            swapped = roles_swapped(env)
        except Exception:               # a host that does not answer: the steps below say which and why
            swapped = None
        if swapped:
            from lib import heal
            from lib import params as P
            as_they_are = heal.roles_as_they_are(env)
            if as_they_are is None:
                say(f"check FAILED: {swapped[0]}\n  Likely fix: {swapped[1]}")
                return 1
            say(f"  the primary is {as_they_are['hosts']['primary']['name']} since a failover, and "
                f"{params.primary.name} (the preferred primary) streams from it: checking the roles as they are")
            env.close()
            env = Hosts(P.load(as_they_are), read_only=True)
        results = run(env)
    finally:
        env.close()
    for r in results:
        mark = "ok   " if not r.drifts else "DRIFT"
        say(f"  {mark} {r.label:<8} {', '.join(r.hosts) or '':<10} {r.unit.title}")
        for d in r.drifts:
            for i, line in enumerate(d.splitlines()):
                say(f"        {'' if i == 0 else '  '}{line}")
    drifted = [r for r in results if r.drifts]
    if not drifted:
        say(f"check passed: all {len(results)} steps match the guide.")
        return 0
    steps = ", ".join(r.label.replace("Step  ", "Step ") for r in drifted)
    say(f"check FAILED: {len(drifted)} of {len(results)} steps differ from the guide: {steps}. "
        "Provisioning again runs them and changes only what differs.")
    return 1
