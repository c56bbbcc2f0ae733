"""The host firewall step (lib.system.firewall_step) against a host whose ufw answers as given:
a port is opened to the sources that need it, not to anyone, and only what is missing."""
from lib import ops, system
from lib import params as P
from lib.facts import Output
from lib.remote import Remote

PARAMS = P.load()


def UfwHost(status: str | None) -> Remote:
    """The primary, whose `ufw status` says `status` (None: no ufw)."""
    host = Remote(PARAMS, PARAMS.primary)
    host.facts.given({system.UFW_STATUS: Output(True, "absent\n" if status is None else status)})
    return host


ACTIVE = """Status: active

To                         Action      From
--                         ------      ----
22/tcp                     ALLOW       Anywhere
5432/tcp                   ALLOW       10.213.93.133
"""
SOURCES = ["10.213.93.133", "10.213.93.134"]


def test_only_the_missing_sources_are_let_in():
    step = system.firewall_step(ops.Step("t"), UfwHost(ACTIVE), 5432, SOURCES)
    assert step.preview() == ["vm1 (root) $ ufw allow from 10.213.93.134 to any port 5432 proto tcp && ufw reload"]


def test_nothing_to_do_when_every_source_is_let_in():
    status = ACTIVE + "5432/tcp                   ALLOW       10.213.93.134\n"
    step = system.firewall_step(ops.Step("t"), UfwHost(status), 5432, SOURCES)
    assert step.plan == [] and step.notes == [
        "vm1: ufw already allows 5432/tcp from 10.213.93.133, 10.213.93.134"]


def test_a_rule_open_to_anyone_does_not_count_for_a_source():
    status = "Status: active\n\nTo Action From\n5432/tcp                   ALLOW       Anywhere\n"
    step = system.firewall_step(ops.Step("t"), UfwHost(status), 5432, SOURCES[:1])
    assert step.preview() == ["vm1 (root) $ ufw allow from 10.213.93.133 to any port 5432 proto tcp && ufw reload"]


def test_without_ufw_the_step_names_what_it_would_run():
    step = system.firewall_step(ops.Step("t"), UfwHost(None), 9999, ["10.213.93.0/24"])
    assert step.plan == [] and "where ufw is active, this step runs `ufw allow from 10.213.93.0/24 to any port " \
                               "9999 proto tcp && ufw reload`" in step.notes[0]
