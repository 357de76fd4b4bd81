"""If an actor dies the sandbox converges: the container ends stopped and delete cleans everything."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from helpers.faults import gone, read_record
from helpers.wait import wait_for

pytestmark = pytest.mark.root




@pytest.mark.parametrize("victim", ["controller_pid", "gofer_pid", "sandbox_pid"])
def test_actor_killed_then_delete_cleans_up(zentry, busybox_bundle, victim):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "f1").returncode == 0
    rec = read_record(zentry.root, "f1")
    pids = [rec["controller_pid"], rec["gofer_pid"], rec["sandbox_pid"], rec["init_pid"]]
    os.kill(rec[victim], signal.SIGKILL)
    if victim != "gofer_pid":
        # without its controller or its sandbox the container cannot be running
        assert wait_for(lambda: json.loads(zentry("state", "f1").stdout)["status"] == "stopped")
    r = zentry("delete", "--force", "f1")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]
    assert zentry("list", "-q").stdout.strip() == ""


def test_sandbox_death_is_reported_as_stopped_with_status(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "f2").returncode == 0
    rec = read_record(zentry.root, "f2")
    os.kill(rec["sandbox_pid"], signal.SIGKILL)
    assert wait_for(lambda: json.loads(zentry("state", "f2").stdout)["status"] == "stopped")
    assert json.loads(zentry("wait", "f2").stdout)["exitStatus"] == 128 + signal.SIGKILL
    assert zentry("delete", "f2").returncode == 0


def test_create_killed_midway_leaves_nothing_after_delete_force(zentry, busybox_bundle, tmp_path):
    import subprocess

    from helpers.bundle import zentry_command

    marker = tmp_path / "hook-ran"
    bundle = busybox_bundle(["sleep", "60"], hooks={
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}; sleep 30"]}],
    })
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "create", "--bundle", str(bundle), "half"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        assert wait_for(marker.exists, timeout=30)
        rec = read_record(zentry.root, "half")
        proc.kill()  # SIGKILL: no cleanup of its own
        proc.wait()
        # the controller was bound to create and dies with it
        assert wait_for(lambda: gone(rec["controller_pid"]))
        assert json.loads(zentry("state", "half").stdout)["status"] == "stopped"
        r = zentry("delete", "--force", "half")
        assert r.returncode == 0, r.stderr
        pids = [rec["controller_pid"], rec["gofer_pid"], rec["sandbox_pid"], rec["init_pid"]]
        assert wait_for(lambda: all(gone(p) for p in pids if p)), [p for p in pids if p and not gone(p)]
        assert zentry("list", "-q").stdout.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _kill_create_before_state(zentry, bundle, cid: str, tries: int = 5) -> bool:
    """SIGKILL a `create` after it made <root>/<id> and before state.json; True if caught there."""
    import subprocess

    from helpers.bundle import zentry_command

    cdir = os.path.join(zentry.root, cid)
    for _ in range(tries):
        proc = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "create", "--bundle", str(bundle), cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.isdir(cdir) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.0005)
            proc.kill()
        finally:
            proc.wait()
        if os.path.isdir(cdir) and not os.path.exists(os.path.join(cdir, "state.json")):
            return True
        zentry("delete", "--force", cid)  # too late: it got further; clean and try again
    return False


def test_create_killed_before_its_state_file_is_reclaimed(zentry, busybox_bundle):
    """The leftover of a create killed before state.json: a new create of the id reclaims it."""
    bundle = busybox_bundle(["sleep", "60"])
    if not _kill_create_before_state(zentry, bundle, "early"):
        pytest.skip("could not stop create between its mkdir and its state file in 5 tries")
    leftover = os.path.join(zentry.root, "early")
    # invisible to list, and its actors died with the create (bound to it)
    assert zentry("list", "-q").stdout.strip() == ""
    r = zentry("create", "--bundle", bundle, "early")
    assert r.returncode == 0, r.stderr
    assert json.loads(zentry("state", "early").stdout)["status"] == "created"
    assert zentry("delete", "--force", "early").returncode == 0
    assert not os.path.exists(leftover)


def test_delete_force_removes_a_create_killed_before_its_state_file(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    if not _kill_create_before_state(zentry, bundle, "early2"):
        pytest.skip("could not stop create between its mkdir and its state file in 5 tries")
    r = zentry("delete", "early2")
    assert r.returncode != 0 and "does not exist" in r.stderr  # without --force: still an error, as runc
    assert not os.path.exists(os.path.join(zentry.root, "early2"))  # but the leftover is gone (runc does the same)
    assert zentry("delete", "--force", "early2").returncode == 0
