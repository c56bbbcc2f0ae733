"""Every guide step's plan, without a lab: given the facts its planner read on a fresh lab (recorded by
`ci/record-plans`, tests/data/plans/), it plans what it planned there; given the facts of a provisioned
lab, it plans nothing. A host read outside the facts layer fails the test at once, so a step is here only
when its planner decides from facts alone; the steps that still read around them are listed, and the
list may only shrink."""
import copy
import dataclasses
import re

import pytest

from lib import clone_guard, db, facts, guide, ops, pgpool_host, plan_record, secrets
from lib.remote import Hosts, Remote

#: each recording (one per lab: its parameters say which) with its parameters
RECORDINGS = {path.stem: (params := plan_record.params_of(path), plan_record.read(path, params))
              for path in sorted(plan_record.FIXTURES.glob("*.json"))}

#: the steps whose planners still read a host outside the facts layer (what each read is in the recording):
#: 7, the clone guard, reads afresh on purpose before anything is wiped, and waits for a standby that is
#: reconnecting; 32 asks pg_enc on the pgpool host what pool_passwd's entries must be (a computation with the
#: key, which a fact's command may not carry)
READ_AROUND_THE_FACTS = {7, 32}

PURE = [gs for gs in guide.STEPS if gs.number not in READ_AROUND_THE_FACTS]
CASES = [pytest.param(lab, gs, id=f"{lab}-{gs.label.replace(' ', '')}") for lab in RECORDINGS for gs in PURE]


class NoHost(Remote):
    def run(self, command, **kw):
        raise AssertionError(f"{self.host.name}: a planner read the host outside the facts layer: {command[:200]}")


@pytest.fixture(autouse=True)
def no_sessions(monkeypatch):
    def refused(params, host, **kw):
        raise AssertionError(f"{host.name}: a planner opened a session outside the facts layer")
    monkeypatch.setattr(db, "connect", refused)


def given(params, recorded: dict) -> Hosts:
    """The lab's hosts as the recording found them, answering nothing else."""
    env = Hosts(params)
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


@pytest.mark.parametrize("lab, gs", CASES)
def test_on_a_fresh_lab_a_step_plans_what_it_planned_there(lab, gs):
    params, recorded = RECORDINGS[lab]
    before = recorded["before"][gs.number]
    assert planned(gs, given(params, before)) == [plan_record.fill(line, params) for line in before["plan"]]


@pytest.mark.parametrize("lab, gs", CASES)
def test_on_a_provisioned_lab_a_step_plans_nothing(lab, gs):
    params, recorded = RECORDINGS[lab]
    assert planned(gs, given(params, recorded["after"][gs.number])) == []


@pytest.mark.parametrize("lab", RECORDINGS)
def test_only_these_steps_read_around_the_facts(lab):
    _, recorded = RECORDINGS[lab]
    outside = {n for when in ("before", "after") for n, step in recorded[when].items() if step["outside"]}
    assert outside == READ_AROUND_THE_FACTS, (
        "a step left the list: take it out of READ_AROUND_THE_FACTS" if outside < READ_AROUND_THE_FACTS else
        "a planner reads a host outside the facts layer: " + "; ".join(
            f"Step {n}: {recorded['before'][n]['outside'][:2]}" for n in sorted(outside - READ_AROUND_THE_FACTS)))


@pytest.mark.parametrize("lab", RECORDINGS)
def test_every_step_was_recorded_and_the_second_pass_changed_nothing(lab):
    _, recorded = RECORDINGS[lab]
    assert sorted(recorded["before"]) == sorted(recorded["after"]) == [gs.number for gs in guide.STEPS]
    assert all(step["plan"] == [] for step in recorded["after"].values())


def test_the_default_lab_and_the_debian_13_lab_are_recorded():
    assert {"lab", "lab-debian13"} <= set(RECORDINGS), "record them: ci/record-plans [params/lab-debian13.yaml]"


@pytest.mark.parametrize("lab", RECORDINGS)
def test_a_recording_holds_no_secret(lab):
    """No secret value, no form of one (md5, pg_md5, escaped), no SCRAM verifier and no pool_passwd entry:
    placeholders stand for them."""
    params, _ = RECORDINGS[lab]
    text = (plan_record.FIXTURES / f"{lab}.json").read_text()
    found = [v for v in secrets.known_values(params) if v in text]
    found += [m for m in ("SCRAM-SHA-256$", "AES") if m in text.replace("${aes}", "")]
    count = len(found)      # not the values themselves: a failing test must not print them
    assert count == 0, "secret values or forms in the recording: record it again"


def test_the_recorder_names_a_read_around_the_facts_and_not_a_batch_of_facts(monkeypatch):
    """What ci/record-plans calls a read outside the facts: any command while a planner plans, except
    a batch of facts; and nothing while no planner plans."""
    from types import SimpleNamespace
    ran = []
    monkeypatch.setattr(Remote, "run", lambda remote, command, **kw: ran.append(command))
    watch = plan_record.Watch(None)
    vm1 = SimpleNamespace(host=SimpleNamespace(name="vm1"))
    try:
        watch.planning = True
        Remote.run(vm1, facts.batch([facts.FileFact("/etc/hostname")], "n0nce"), user="root")
        Remote.run(vm1, "cat /etc/hostname", user="root")
        watch.planning = False
        Remote.run(vm1, "systemctl restart postgresql", user="root")
    finally:
        watch.close()
    assert watch.outside == ["vm1: cat /etc/hostname"]
    assert len(ran) == 3 and not facts.is_batch("cat /etc/hostname")


@pytest.mark.parametrize("pgpool_state, stopped", [("active\nenabled\n", True), ("inactive\nenabled\n", False)])
def test_a_new_pgpool_password_is_set_with_pgpool_stopped(monkeypatch, pgpool_state, stopped):
    """options.reset_passwords on a provisioned lab: set under a running pgpool, the new password would fail
    its health checks (pool_passwd holds the old one until Step 32) and pgpool would detach every server. So
    Step 22 stops pgpool first, when it runs, and Step 33 starts it."""
    from lib.pgpool_host import service_state
    params, recorded = RECORDINGS["lab"]
    monkeypatch.setenv(secrets.SECRETS["pgpool"][0], "a-new-pgpool-secret")
    env = given(params, recorded["after"][22])
    state = facts.unit_state(params.pgpool["service"])
    env.pgpool.facts.given({state: state.parse(0, pgpool_state, "")})
    assert service_state(env.pgpool, fresh=False) == pgpool_state.split()
    step22 = next(gs for gs in guide.STEPS if gs.number == 22)
    assert planned(step22, env) == ["vm3 (root) $ systemctl stop pgpool2"] * stopped + [
        "vm1 (postgres) $ psql -c \"ALTER USER pgpool PASSWORD '********';\""]


@pytest.mark.parametrize("lab", RECORDINGS)
def test_a_restart_of_pgpool_first_attaches_a_standby_it_keeps_down_while_it_streams(lab):
    """A restarted pgpool starts no health check for a node its pgpool_status gives as down, and auto_failback
    runs in that check: Step 43's restart is planned after the attachment of such a standby, never before it."""
    params, recorded = RECORDINGS[lab]
    before = copy.deepcopy(recorded["before"][43])
    pooler = before["facts"][params.pgpool_host.name]
    nodes = next(key for key in pooler if "pcp_node_info" in key[-1])
    blocks = pooler[nodes].stdout.split("@@\n")
    standby = next(i for i, b in enumerate(blocks) if "Backend Role           : standby" in b)
    blocks[standby] = re.sub(r"Replication State +: \w+", "Replication State      : streaming",
                             blocks[standby].replace("Status Name            : up", "Status Name            : down"))
    pooler[nodes] = dataclasses.replace(pooler[nodes], stdout="@@\n".join(blocks))
    plan = planned(next(gs for gs in guide.STEPS if gs.number == 43), given(params, before))
    assert [line.split("$ ")[1].split()[0] for line in plan] == ["pcp_attach_node", "systemctl"], plan
    assert f"-n {standby}    # " in plan[0] and "streams from the primary" in plan[0]


def planned_restart(lab, pgpool_state: str, failover_command: str) -> list[str]:
    """A restart of the primary planned beside a pgpool in `pgpool_state` whose pgpool.conf has that failover
    command, guarded as the steps guard theirs (lib.pgpool_host.guard_restarts)."""
    params, recorded = RECORDINGS[lab]
    env = given(params, recorded["after"][43])
    conf = pgpool_host.conf(params, "pgpool.conf")
    nodes = "".join(f"backend_hostname{i} = '{h.address}'\nbackend_flag{i} = 'ALLOW_TO_FAILOVER'\n"
                    for i, h in enumerate(params.database_hosts))
    env.pgpool.facts.given({
        facts.unit_state(params.pgpool["service"]): facts.Output(True, f"{pgpool_state}\nenabled\n"),
        facts.FileFact(conf): facts.File(conf, f"{nodes}failover_command = '{failover_command}'\n")})
    step = ops.Step("restart").notify(ops.service(env.primary, "restart", params.postgres["service"]))
    return [line.split("$ ", 1)[1] for line in pgpool_host.guard_restarts(step, env).preview()]


@pytest.mark.parametrize("lab", RECORDINGS)
def test_a_planned_restart_of_a_server_is_no_failover_for_pgpool(lab):
    """pgpool, with a failover command, takes a restart for a failure once a client's session ends: the node is
    flagged DISALLOW_TO_FAILOVER (and pgpool reloads) before the restart, and ALLOW_TO_FAILOVER again after."""
    plan = planned_restart(lab, "active", "/etc/pgpool2/failover.sh %d %h")
    assert [line.split()[0] for line in plan] == ["sed", "pcp_reload_config", "systemctl", "sed", "pcp_reload_config"], plan
    assert "backend_flag0 = 'DISALLOW_TO_FAILOVER'" in plan[0] and "backend_flag1" not in plan[0]
    assert "systemctl restart" in plan[2] and "backend_flag0 = 'ALLOW_TO_FAILOVER'" in plan[3]
    # no failover command (Part 2 before Step 42), or no pgpool running: nothing to guard against
    assert [line.split()[0] for line in planned_restart(lab, "active", "")] == ["systemctl"]
    assert [line.split()[0] for line in planned_restart(lab, "inactive", "/etc/pgpool2/failover.sh")] == ["systemctl"]
