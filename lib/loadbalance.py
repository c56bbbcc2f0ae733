"""Step 38 done right: load balancing is per session, so measure many sessions.

pgpool picks a load-balance node when a session starts (statement_level_load_balance is
off by default), with probability weight / total weight. Over n sessions the count on a
node is binomial; the check allows Z standard deviations, which a correct setup exceeds
with probability below 1e-6, while a wrong weight (say 1:1 instead of 1:2 at n=300,
a shift of 5.8 sd) fails.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable

Z = 5.0


def sample(connect: Callable, sessions: int) -> Counter:
    """Open `sessions` sessions; in each, ask which backend answered."""
    seen: Counter = Counter()
    for _ in range(sessions):
        with connect() as conn:
            seen[str(conn.execute("SELECT inet_server_addr()").fetchone()[0])] += 1
    return seen


def expected_shares(hosts) -> dict[str, float]:
    total = sum(h.lb_weight for h in hosts)
    return {h.address: h.lb_weight / total for h in hosts}


def tolerance(share: float, sessions: int) -> float:
    return Z * math.sqrt(share * (1 - share) / sessions)


def verdicts(counts: Counter, hosts, sessions: int) -> list[tuple[str, float, float, bool]]:
    """(host, expected share, allowed deviation, within?) per backend."""
    rows = []
    for h in hosts:
        expected = expected_shares(hosts)[h.address]
        observed = counts.get(h.address, 0) / sessions
        tol = tolerance(expected, sessions)
        rows.append((h.name, expected, tol, abs(observed - expected) <= tol))
    return rows


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
