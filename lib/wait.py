"""Waiting for a condition instead of sleeping a fixed time."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(probe: Callable[[], T], *, timeout: float, interval: float = 0.05) -> tuple[T, float]:
    """Call `probe` until it returns something truthy or `timeout` seconds pass.
    Returns the last value and the seconds waited (the caller checks the value)."""
    start = time.monotonic()
    while True:
        value = probe()
        waited = time.monotonic() - start
        if value or waited >= timeout:
            return value, waited
        time.sleep(interval)
