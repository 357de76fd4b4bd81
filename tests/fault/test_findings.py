"""Faults from the failure-path campaign (issue 12) that are not a kill at a
held point: each compared with runc in the same test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.root


@pytest.fixture
def runc(leak_guard):
    """`runc(*args)` on a private --root, removed (with what is left in it) at the end."""
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed (.ci/install)")
    root = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    leak_guard.add_private_root(root)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["runc", "--root", root, *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)

    yield run
    for cid in run("list", "-q").stdout.split():
        run("delete", "--force", cid)


def test_create_with_an_unwritable_pid_file_leaves_nothing(zentry, runc, busybox_bundle, tmp_path):
    """--pid-file in a missing directory: create fails and, as runc, leaves no container."""
    bundle = busybox_bundle(["sleep", "1000"], ociVersion="1.0.2")
    missing = tmp_path / "missing" / "pid"
    r_runc = runc("create", "--bundle", str(bundle), "--pid-file", str(missing), "pf")
    assert r_runc.returncode != 0
    assert runc("list", "-q").stdout.split() == []
    r = zentry("create", "--bundle", bundle, "--pid-file", missing, "pf")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and str(missing) in r.stderr
    assert zentry("list", "-q").stdout.split() == []
    assert zentry("delete", "--force", "pf").returncode == 0
    # no process, cgroup or state left: the leak guard (tests/conftest.py)
