"""Every guide step's plan, without a lab: given the facts its planner read on a fresh lab (recorded by
`ci/record-plans`, tests/data/plans/), it plans what it planned there; given the facts of a provisioned
lab, it plans nothing. A host read outside the facts layer fails the test at once, so a step is here only
when its planner decides from facts alone; the steps that still read around them are listed, and the
list may only shrink."""
import pytest

from lib import clone_guard, db, guide, plan_record
from lib import params as P
from lib.remote import Hosts, Remote

PARAMS = P.load("params/lab.yaml")
RECORDED = plan_record.read(plan_record.FIXTURES / "lab.json", PARAMS)

#: the steps whose planners still read a host outside the facts layer (what each read is in the recording):
#: 7, the clone guard, reads afresh on purpose before anything is wiped, and waits for a standby that is
#: reconnecting; 32 asks pg_enc on the pgpool host what pool_passwd's entries must be (a computation with the
#: key, not a fact); 34 reads SHOW pool_nodes in a session through pgpool
READ_AROUND_THE_FACTS = {7, 32, 34}

PURE = [gs for gs in guide.STEPS if gs.number not in READ_AROUND_THE_FACTS]


class NoHost(Remote):
    def run(self, command, **kw):
        raise AssertionError(f"{self.host.name}: a planner read the host outside the facts layer: {command[:200]}")


@pytest.fixture(autouse=True)
def no_sessions(monkeypatch):
    def refused(params, host, **kw):
        raise AssertionError(f"{host.name}: a planner opened a session outside the facts layer")
    monkeypatch.setattr(db, "connect", refused)


def given(recorded: dict) -> Hosts:
    """The lab's hosts as the recording found them, answering nothing else."""
    env = Hosts(PARAMS)
    for r in env.all:
        r.__class__ = NoHost
        r.facts.given(recorded["facts"].get(r.host.name, {}))
    decision = recorded["clone_decision"]
    if decision:
        names = {r.host.name: r for r in env.standbys}
        env.clone_decision = clone_guard.CloneDecision([names[n] for n in decision["standbys"]], decision["proofs"],
                                                       decision["refused"])
    return env


def planned(gs: guide.GuideStep, env: Hosts) -> list[str]:
    return [line for planner in gs.planners for line in planner(env).preview()]


@pytest.mark.parametrize("gs", PURE, ids=lambda gs: gs.label.replace(" ", ""))
def test_on_a_fresh_lab_a_step_plans_what_it_planned_there(gs):
    recorded = RECORDED["before"][gs.number]
    assert planned(gs, given(recorded)) == [plan_record.fill(line, PARAMS) for line in recorded["plan"]]


@pytest.mark.parametrize("gs", PURE, ids=lambda gs: gs.label.replace(" ", ""))
def test_on_a_provisioned_lab_a_step_plans_nothing(gs):
    assert planned(gs, given(RECORDED["after"][gs.number])) == []


def test_only_these_steps_read_around_the_facts():
    outside = {n for when in ("before", "after") for n, step in RECORDED[when].items() if step["outside"]}
    assert outside == READ_AROUND_THE_FACTS, (
        "a step left the list: take it out of READ_AROUND_THE_FACTS" if outside < READ_AROUND_THE_FACTS else
        "a planner reads a host outside the facts layer: " + "; ".join(
            f"Step {n}: {RECORDED['before'][n]['outside'][:2]}" for n in sorted(outside - READ_AROUND_THE_FACTS)))


def test_every_step_was_recorded_and_the_second_pass_changed_nothing():
    assert sorted(RECORDED["before"]) == sorted(RECORDED["after"]) == [gs.number for gs in guide.STEPS]
    assert all(step["plan"] == [] for step in RECORDED["after"].values())
