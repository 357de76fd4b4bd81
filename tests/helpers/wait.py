"""Polling with a deadline, for tests that wait on real processes."""
from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05):
    """Call ``predicate`` every ``step`` seconds until it returns something
    true (returned) or ``timeout`` passes (then its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()
