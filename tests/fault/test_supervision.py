"""Who supervises whom now that the container's init is not the sandbox's child.

Rules (docs/architecture.md, "Supervision"): the controller and the sandbox
watch each other (and the gofer watches the controller, so that it does not
outlive it); when either dies the survivor kills the containers
(fail closed: the sandbox hosts the sentry, the controller is the only one
that can stop or delete them). `state` never says stopped while a
container process lives. A failed create leaves nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers.bundle import zentry_command
from helpers.faults import gone, read_record
from helpers.wait import wait_for

pytestmark = pytest.mark.root




def cgroup_dirs(cid: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/zentry/{cid}") + glob.glob(f"/sys/fs/cgroup/zentry/{cid}")


def status_never_lies(zentry, cid: str, init_pid: int, timeout: float = 15.0) -> str:
    """Poll `state` until it says stopped; each answer must be consistent with the init."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(zentry("state", cid).stdout)["status"]
        if status == "stopped":
            assert gone(init_pid), f"state says stopped while the init {init_pid} runs"
            return status
        time.sleep(0.05)
    return status


@pytest.mark.parametrize("victim", ["controller_pid", "sandbox_pid"])
@pytest.mark.parametrize("started", [False, True], ids=["created", "running"])
def test_controller_or_sandbox_death_kills_the_container(zentry, busybox_bundle, victim, started):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("create", "--bundle", bundle, "sv1").returncode == 0
    if started:
        assert zentry("start", "sv1").returncode == 0
    rec = read_record(zentry.root, "sv1")
    init = rec["init_pid"]
    assert not gone(init)
    os.kill(rec[victim], signal.SIGKILL)
    # fail closed: the survivor kills the container, and only then is it stopped
    assert status_never_lies(zentry, "sv1", init) == "stopped"
    assert wait_for(lambda: gone(init), timeout=10)
    if victim == "controller_pid":
        # nobody manages the sandbox any more: its other actors go too, without a delete
        survivors = [rec["gofer_pid"], rec["sandbox_pid"]]
        assert wait_for(lambda: all(gone(p) for p in survivors), timeout=10), [p for p in survivors if not gone(p)]
    r = zentry("delete", "--force", "sv1")
    assert r.returncode == 0, r.stderr
    pids = [rec["controller_pid"], rec["gofer_pid"], rec["sandbox_pid"], init]
    assert wait_for(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]
    assert cgroup_dirs("sv1") == []
    assert zentry("list", "-q").stdout.strip() == ""


def test_gofer_death_leaves_the_container_running_and_delete_cleans(zentry, busybox_bundle):
    # the container's mounts live in its own mount namespace: it runs on (documented)
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "sv2").returncode == 0
    rec = read_record(zentry.root, "sv2")
    os.kill(rec["gofer_pid"], signal.SIGKILL)
    assert wait_for(lambda: gone(rec["gofer_pid"]))
    assert json.loads(zentry("state", "sv2").stdout)["status"] == "running"
    assert not gone(rec["init_pid"])
    assert zentry("exec", "sv2", "true").returncode == 0
    assert zentry("delete", "--force", "sv2").returncode == 0
    assert wait_for(lambda: gone(rec["init_pid"]))
    assert cgroup_dirs("sv2") == []


def test_controller_killed_during_create_leaves_no_cgroup(zentry, busybox_bundle, tmp_path):
    marker = tmp_path / "hook-ran"
    bundle = busybox_bundle(["sleep", "60"], hooks={
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}; sleep 30"]}],
    })
    with open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "create", "--bundle", str(bundle), "sv3"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        assert wait_for(marker.exists, timeout=30)
        rec = read_record(zentry.root, "sv3")
        assert cgroup_dirs("sv3")
        os.kill(rec["controller_pid"], signal.SIGKILL)
        assert proc.wait(timeout=60) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pids = [rec["controller_pid"], rec["gofer_pid"], rec["sandbox_pid"], rec["init_pid"]]
    assert wait_for(lambda: all(gone(p) for p in pids if p)), [p for p in pids if p and not gone(p)]
    assert cgroup_dirs("sv3") == []
    assert zentry("list", "-q").stdout.strip() == ""
    assert os.listdir(zentry.root) == []


def test_cli_killed_in_a_create_runtime_hook_converges_without_delete(zentry, busybox_bundle, tmp_path):
    marker = tmp_path / "hook-ran"
    bundle = busybox_bundle(["sleep", "60"], hooks={
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}; sleep 30"]}],
    })
    proc = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "create", "--bundle", str(bundle), "sv4"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(marker.exists, timeout=30)
        rec = read_record(zentry.root, "sv4")
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the controller died with create; the sandbox then kills the init and stops, the gofer stops
    for pid in (rec["controller_pid"], rec["sandbox_pid"], rec["init_pid"], rec["gofer_pid"]):
        assert wait_for(lambda pid=pid: gone(pid), timeout=15), pid
    assert json.loads(zentry("state", "sv4").stdout)["status"] == "stopped"
    assert zentry("delete", "--force", "sv4").returncode == 0
    assert wait_for(lambda: gone(rec["gofer_pid"]))
    assert cgroup_dirs("sv4") == []


def test_create_with_an_unwritable_pid_file_leaves_nothing_as_runc(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    r = zentry("create", "--bundle", bundle, "--pid-file", "/nonexistent/dir/pid", "sv5")
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and "/nonexistent/dir/pid" in r.stderr and "Errno" not in r.stderr, r.stderr
    assert zentry("list", "-q").stdout.strip() == ""
    assert os.listdir(zentry.root) == []
    assert cgroup_dirs("sv5") == []
    if shutil.which("runc"):
        runc_root = str(tmp_path / "runc-root")
        r = subprocess.run(["runc", "--root", runc_root, "create", "--bundle", str(bundle), "--pid-file", "/nonexistent/dir/pid", "sv5r"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        try:
            assert r.returncode != 0
            assert subprocess.run(["runc", "--root", runc_root, "list", "-q"], capture_output=True, text=True).stdout.strip() == ""
        finally:
            subprocess.run(["runc", "--root", runc_root, "delete", "--force", "sv5r"], capture_output=True)


def test_a_killed_foreground_run_leaves_the_container_running_as_runc(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    runtimes = [("zentry", [*zentry_command(), "--root", str(zentry.root)])]
    if shutil.which("runc"):
        runtimes.append(("runc", ["runc", "--root", str(tmp_path / "runc-root")]))
    for name, argv in runtimes:
        cid = f"fg-{name}"
        proc = subprocess.Popen([*argv, "run", "--bundle", str(bundle), cid], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            state = lambda: json.loads(subprocess.run([*argv, "state", cid], capture_output=True, text=True).stdout or "{}")  # noqa: E731
            assert wait_for(lambda: state().get("status") == "running", timeout=30), name
            pid = state()["pid"]
            proc.kill()
            proc.wait()
            time.sleep(0.5)
            assert state().get("status") == "running" and not gone(pid), name
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            subprocess.run([*argv, "delete", "--force", cid], capture_output=True)
        assert wait_for(lambda: gone(pid)), name
    assert cgroup_dirs("fg-zentry") == []
