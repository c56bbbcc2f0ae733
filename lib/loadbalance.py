"""Step 38 done right: load balancing is per session, so measure many sessions, and choose how
many by exact binomial arithmetic.

pgpool picks a load-balance node when a session starts (statement_level_load_balance is off by
default), with probability weight / total weight. Over n sessions the count on a node is
binomial(n, share). The test accepts each node's count inside an interval that a correct setup
leaves with probability at most FALSE_FAIL / nodes (so, by the union bound, the whole test fails a
correct setup with probability at most FALSE_FAIL), and n is the smallest that makes a setup whose
weights are ignored (equal shares) pass with probability at most FALSE_PASS. Both figures are exact
sums over the binomial distribution, not normal approximations.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable

FALSE_FAIL = 1e-6        # a correct setup fails the test at most this often
FALSE_PASS = 1e-3        # a setup that ignores the weights passes at most this often
CONCURRENT = 8           # sessions open at a time (well below num_init_children)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 0.0 if k == 0 else -math.inf
    if p >= 1:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def pmf(n: int, p: float) -> list[float]:
    return [math.exp(_log_pmf(k, n, p)) for k in range(n + 1)]


def interval(n: int, p: float, alpha: float) -> tuple[int, int]:
    """The counts [lo, hi] a binomial(n, p) leaves with probability at most alpha (alpha/2 a side)."""
    probs = pmf(n, p)
    lo, below = 0, 0.0
    while lo < n and below + probs[lo] <= alpha / 2:
        below += probs[lo]
        lo += 1
    hi, above = n, 0.0
    while hi > lo and above + probs[hi] <= alpha / 2:
        above += probs[hi]
        hi -= 1
    return lo, hi


def inside(n: int, p: float, lo: int, hi: int) -> float:
    """P(lo <= X <= hi) for X ~ binomial(n, p)."""
    return min(1.0, sum(pmf(n, p)[lo:hi + 1]))


def shares(weights: list[float]) -> list[float]:
    total = sum(weights)
    return [w / total for w in weights]


@dataclass
class Plan:
    """How many sessions, each node's accepted counts, and what the test can and cannot tell."""
    sessions: int
    weights: list[float]
    intervals: list[tuple[int, int]]
    false_fail: float                       # bound: a correct setup fails
    ignored: list[float]                    # the alternative the sessions are chosen against
    false_pass: float                       # bound: that alternative passes

    def pass_chance(self, weights: list[float]) -> float:
        """An upper bound on passing when pgpool really splits by `weights`: every node must land
        inside, so no more than the least likely node's chance."""
        return min(inside(self.sessions, p, lo, hi) for p, (lo, hi) in zip(shares(weights), self.intervals))


def ignored_weights(weights: list[float]) -> list[float]:
    """What "the weights are not applied" looks like: equal shares; when the weights are equal
    already, the first node's doubled (the nearest wrong setting)."""
    if len(set(weights)) > 1:
        return [1.0] * len(weights)
    return [2.0 * weights[0], *weights[1:]]


def plan(weights: list[float], at_least: int = 0) -> Plan:
    """The fewest sessions (at least `at_least`) for which the bounds hold."""
    alpha = FALSE_FAIL / len(weights)
    wrong = ignored_weights(weights)
    n = max(at_least, 10)
    while True:
        intervals = [interval(n, p, alpha) for p in shares(weights)]
        candidate = Plan(n, weights, intervals, false_fail=0.0, ignored=wrong, false_pass=0.0)
        false_pass = candidate.pass_chance(wrong)
        if false_pass <= FALSE_PASS or n > 100_000:
            candidate.false_pass = false_pass
            candidate.false_fail = sum(1 - inside(n, p, lo, hi) for p, (lo, hi) in zip(shares(weights), intervals))
            return candidate
        n += max(1, n // 50)


def sample(connect: Callable, sessions: int, concurrent: int = 1) -> Counter:
    """Open `sessions` sessions, `concurrent` at a time; in each, ask which backend answered.
    The first session that fails fails the sample."""
    seen, _ = sample_despite(connect, sessions, concurrent, survivable=())
    return seen


def sample_despite(connect: Callable, sessions: int, concurrent: int,
                   survivable: tuple[type[Exception], ...]) -> tuple[Counter, list[Exception]]:
    """`sample`, going on past sessions that fail with a `survivable` error: the answers, and
    those errors. Any other error fails the sample."""
    seen: Counter = Counter()
    lock, survived, errors = threading.Lock(), [], []
    todo = iter(range(sessions))

    def worker():
        while True:
            with lock:
                if next(todo, None) is None or errors:
                    return
            try:
                with connect() as conn:
                    address = str(conn.execute("SELECT inet_server_addr()").fetchone()[0])
            # any exception: one left in a thread would be lost, and the caller would count what is left;
            # the first failure is re-raised below, and the other threads stop
            except Exception as e:
                with lock:
                    (survived if isinstance(e, survivable) else errors).append(e)
                if isinstance(e, survivable):
                    continue
                return
            with lock:
                seen[address] += 1
    threads = [threading.Thread(target=worker) for _ in range(max(1, concurrent))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return seen, survived


def expected_shares(hosts) -> dict[str, float]:
    total = sum(h.lb_weight for h in hosts)
    return {h.address: h.lb_weight / total for h in hosts}


def verdicts(counts: Counter, hosts, p: Plan) -> list[tuple[str, float, tuple[int, int], bool]]:
    """(host, expected share, accepted counts, within?) per backend."""
    return [(h.name, share, (lo, hi), lo <= counts.get(h.address, 0) <= hi)
            for h, share, (lo, hi) in zip(hosts, shares(p.weights), p.intervals)]


def ratio(weights: list[float]) -> str:
    return ":".join(f"{w:g}" for w in weights)


def heavier_standbys(weights: list[float]) -> list[float]:
    """A near miss to report the test's power against: every standby's weight half as large again
    (1:2 becomes 1:3)."""
    return [weights[0], *(1.5 * w for w in weights[1:])]


def what_it_tells(p: Plan) -> str:
    near = heavier_standbys(p.weights)
    return (f"{p.sessions} sessions: a correct setup fails this with probability at most {p.false_fail:.1e}; "
            f"with the weights ignored ({ratio(p.ignored)}) it would pass with probability at most "
            f"{p.false_pass:.1e}; a {ratio(near)} split would pass with probability at most {p.pass_chance(near):.2f}")


def chance_of_guides_split(hosts) -> float:
    """Probability that 3 sessions split exactly 1 (primary) : 2 (standby), as in the guide."""
    p = expected_shares(hosts)[hosts[0].address]
    return 3 * p * (1 - p) ** 2


def after_write_in_transaction(connect, sessions: int = 20) -> Counter:
    """A write (creating a temporary table) then a read in one transaction: pgpool keeps
    the read on the primary (disable_load_balance_on_write = 'transaction')."""
    seen: Counter = Counter()
    for _ in range(sessions):
        with connect() as conn:
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE lb_probe (x int) ON COMMIT DROP")
                seen[str(conn.execute("SELECT inet_server_addr()").fetchone()[0])] += 1
    return seen


def uncounted_at_most(sessions: int) -> int:
    """How many of `sessions` concurrent SELECTs select_cnt may miss before it means more than pgpool's
    unlocked counter: 2 %, ten times the worst seen."""
    return max(1, sessions // 50)
