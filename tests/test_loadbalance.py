"""Step 38's arithmetic (lib/loadbalance.py): exact binomial bounds, checked against simulation."""
from collections import Counter

import numpy as np
import pytest

from lib import loadbalance as lb
from lib.params import Host


def hosts(w0, w1):
    return [Host("primary", "vm1", "10.0.0.1", w0), Host("standby", "vm2", "10.0.0.2", w1)]


def test_at_the_guides_weights_573_sessions_meet_both_bounds():
    p = lb.plan([1, 2])
    assert p.sessions == 573 and p.intervals == [(136, 249), (324, 437)]
    assert p.false_fail <= lb.FALSE_FAIL and p.false_pass <= lb.FALSE_PASS and p.ignored == [1, 1]
    fewer = lb.plan([1, 2], at_least=1)
    assert fewer.sessions == 573                       # the fewest: the search starts low and stops at once
    assert lb.what_it_tells(p) == ("573 sessions: a correct setup fails this with probability at most 7.9e-07; "
                                   "with the weights ignored (1:1) it would pass with probability at most 9.8e-04; "
                                   "a 1:3 split would pass with probability at most 0.77")


def test_one_session_fewer_would_not_meet_the_bound_on_ignored_weights():
    p = lb.plan([1, 2])
    smaller = [lb.interval(560, s, lb.FALSE_FAIL / 2) for s in lb.shares([1, 2])]
    worse = lb.Plan(560, [1, 2], smaller, 0, [1, 1], 0).pass_chance([1, 1])
    assert worse > lb.FALSE_PASS >= p.false_pass


def test_the_bounds_hold_in_a_simulation():
    rng, p = np.random.default_rng(38), lb.plan([1, 2])
    (lo, hi), _ = p.intervals
    correct = rng.binomial(p.sessions, 1 / 3, 1_000_000)
    assert ((correct < lo) | (correct > hi)).sum() <= 5                  # expected about 0.4 in a million
    ignored = rng.binomial(p.sessions, 1 / 2, 1_000_000)
    passed = ((ignored >= lo) & (ignored <= hi)).mean()
    assert passed == pytest.approx(p.false_pass, rel=0.15)               # exact for two nodes
    near = rng.binomial(p.sessions, 1 / 4, 200_000)
    assert ((near >= lo) & (near <= hi)).mean() == pytest.approx(p.pass_chance([1, 3]), abs=0.01)


def test_a_correct_split_passes_and_ignored_weights_fail():
    p = lb.plan([1, 2])
    assert all(ok for *_, ok in lb.verdicts(Counter({"10.0.0.1": 191, "10.0.0.2": 382}), hosts(1, 2), p))
    assert not any(ok for *_, ok in lb.verdicts(Counter({"10.0.0.1": 287, "10.0.0.2": 286}), hosts(1, 2), p))


def test_equal_weights_are_tested_against_the_first_doubled():
    p = lb.plan([1, 1])
    assert p.ignored == [2, 1] and p.false_pass <= lb.FALSE_PASS


def test_more_nodes_share_the_false_fail_budget():
    p = lb.plan([1, 2, 2])
    assert len(p.intervals) == 3 and p.false_fail <= lb.FALSE_FAIL and p.false_pass <= lb.FALSE_PASS


class _Answers:
    """A session that answers with an address, or fails as a closed connection does."""
    def __init__(self, answer):
        self.answer = answer

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def execute(self, sql):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self

    def fetchone(self):
        return (self.answer,)


def test_sessions_run_concurrently_and_count_every_answer():
    answers = iter(["10.0.0.1", "10.0.0.2", "10.0.0.2"] * 100)
    seen = lb.sample(lambda: _Answers(next(answers)), 300, concurrent=8)
    assert seen == Counter({"10.0.0.1": 100, "10.0.0.2": 200})


def test_a_failed_session_fails_the_sample():
    def connect():
        raise ConnectionError("pgpool refused")
    with pytest.raises(ConnectionError, match="pgpool refused"):
        lb.sample(connect, 50, concurrent=4)


def test_the_guides_three_queries_split_1_to_2_by_chance_44_percent():
    assert lb.chance_of_guides_split(hosts(1, 2)) == pytest.approx(4 / 9)


def test_default_weights_are_the_guides():
    assert [h.lb_weight for h in hosts(None, None)] == [1, 2]


def test_sessions_closed_by_the_server_are_counted_and_the_sample_goes_on():
    closed = OSError("server closed the connection unexpectedly")
    answers = iter([closed, "10.0.0.1", "10.0.0.2", closed] + ["10.0.0.2"] * 100)
    seen, survived = lb.sample_despite(lambda: _Answers(next(answers)), 40, concurrent=4, survivable=(OSError,))
    assert survived == [closed, closed] and sum(seen.values()) == 38


def test_an_error_that_is_not_survivable_still_fails_the_sample():
    answers = iter(["10.0.0.1", ValueError("bad answer")] + ["10.0.0.1"] * 100)
    with pytest.raises(ValueError, match="bad answer"):
        lb.sample_despite(lambda: _Answers(next(answers)), 40, concurrent=1, survivable=(OSError,))
