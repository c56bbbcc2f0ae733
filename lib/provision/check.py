"""`ci/provision --check`: is the live cluster still what the guide builds? Changes nothing.

The steps are lib.guide.STEPS, the list the notebooks are held to (tests/test_guide_registry.py).
The check builds each step's plan on read-only hosts (file writes refused, SQL sessions read-only).
A step whose plan is not empty has drifted: its plan, as it would run, is the drift. Its
verifications of live state run too (those that would write, or take long, run only when
provisioning).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lib import heal
from lib import params as P
from lib.clone_guard import roles_swapped
from lib.guide import GuideStep, STEPS
from lib.remote import Hosts


@dataclass
class Checked:
    step: GuideStep
    hosts: list[str] = field(default_factory=list)
    drifts: list[str] = field(default_factory=list)


def run(env: Hosts) -> list[Checked]:
    results = []
    for guide_step in STEPS:
        checked = Checked(guide_step)
        for fn in guide_step.planners:
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
        try:
            swapped = roles_swapped(env)
        except Exception:               # a host that does not answer: the steps below say which and why
            swapped = None
        if swapped:
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
        say(f"  {mark} {r.step.label:<8} {', '.join(r.hosts) or '':<10} {r.step.title}")
        for d in r.drifts:
            for i, line in enumerate(d.splitlines()):
                say(f"        {'' if i == 0 else '  '}{line}")
    drifted = [r for r in results if r.drifts]
    if not drifted:
        say(f"check passed: all {len(results)} steps match the guide.")
        return 0
    steps = ", ".join(f"Step {r.step.number}" for r in drifted)
    say(f"check FAILED: {len(drifted)} of {len(results)} steps differ from the guide: {steps}. "
        "Provisioning again runs them and changes only what differs.")
    return 1
