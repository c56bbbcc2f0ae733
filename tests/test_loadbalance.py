from collections import Counter

import pytest

from lib import loadbalance as lb
from lib.params import Host


def hosts(w0, w1):
    return [Host("primary", "vm1", "10.0.0.1", w0), Host("standby", "vm2", "10.0.0.2", w1)]


def test_a_correct_split_passes_and_a_wrong_weight_fails():
    seen = Counter({"10.0.0.1": 100, "10.0.0.2": 200})
    assert all(ok for *_, ok in lb.verdicts(seen, hosts(1, 2), 300))
    assert not any(ok for *_, ok in lb.verdicts(seen, hosts(1, 1), 300))     # 1:1 expected, 1:2 seen


def test_tolerance_is_five_standard_deviations():
    assert lb.tolerance(2 / 3, 300) == pytest.approx(5 * (2 / 9 / 300) ** 0.5)
    assert lb.tolerance(2 / 3, 300) == pytest.approx(0.136, abs=1e-3)


def test_the_guides_three_queries_split_1_to_2_by_chance_44_percent():
    assert lb.chance_of_guides_split(hosts(1, 2)) == pytest.approx(4 / 9)


def test_default_weights_are_the_guides():
    assert [h.lb_weight for h in hosts(None, None)] == [1, 2]
