"""Skip conditions shared by the test tiers, each with a stated reason."""
from __future__ import annotations

import os
import shutil

import pytest

IS_ROOT = os.geteuid() == 0

requires_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root (namespaces, mounts, cgroups): run as uid 0")


def require_tool(name: str, why: str = "") -> str:
    """Path of the executable `name`, or skip the test saying it is missing."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (run .ci/install)"
        pytest.skip(f"{reason}: {why}" if why else reason)
    return path
