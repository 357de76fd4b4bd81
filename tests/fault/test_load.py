"""Parallel lifecycle load, the short version (bench/load.py runs >= 1000 cycles):
8 clients at once, every create/start/wait/delete as told, nothing left."""

from __future__ import annotations

import os

import pytest

from helpers.bundle import zentry_command
from helpers.load import run_load

pytestmark = pytest.mark.root

CLIENTS = 8
CYCLES = int(os.environ.get("ZENTRY_LOAD_CYCLES", "3"))  # per client


def test_parallel_clients_cycle_without_failures_or_leaks(zentry, busybox_bundle):
    bundle = busybox_bundle(["/bin/true"])
    result = run_load(zentry_command(), str(zentry.root), str(bundle), clients=CLIENTS, cycles=CYCLES)
    assert result.cycles == CLIENTS * CYCLES
    assert result.failures == []
    assert zentry("list", "-q").stdout.split() == []
    # leaks (processes, mounts, cgroups, files under --root): the leak guard, tests/conftest.py
