"""Multi-container sandboxes: containerd's CRI annotations put a container into its pod's sandbox."""

from __future__ import annotations

import json
import os
import time

import pytest

pytestmark = pytest.mark.root

CRI = {"io.kubernetes.cri.container-type": "container"}


def _wait_dead(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still alive")


def test_member_joins_the_pod_sandbox(zentry, busybox_bundle, tmp_path):
    pause = busybox_bundle(["sleep", "60"], name="pause", annotations={"io.kubernetes.cri.container-type": "sandbox"})
    assert zentry("create", "--bundle", pause, "pod1").returncode == 0
    assert zentry("start", "pod1").returncode == 0
    pod = json.loads(zentry("state", "pod1").stdout)

    member = busybox_bundle(
        ["sh", "-c", "echo member-out; hostname; exit 6"],
        name="member",
        annotations={**CRI, "io.kubernetes.cri.sandbox-id": "pod1"},
        linux={"namespaces": [{"type": "pid"}, {"type": "mount"},
                              {"type": "network", "path": f"/proc/{pod['pid']}/ns/net"},
                              {"type": "ipc", "path": f"/proc/{pod['pid']}/ns/ipc"},
                              {"type": "uts", "path": f"/proc/{pod['pid']}/ns/uts"}]},
    )
    pid_file = tmp_path / "member.pid"
    out = tmp_path / "member.out"
    err = tmp_path / "member.err"
    with open(out, "w") as f, open(err, "w") as e:
        import subprocess

        from helpers.bundle import zentry_command

        # files, not pipes: the member keeps its create's stdio (as with runc)
        r = subprocess.run([*zentry_command(), "--root", str(zentry.root), "create", "--bundle", str(member),
                            "--pid-file", str(pid_file), "m1"], stdout=f, stderr=e, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, err.read_text()
    st = json.loads(zentry("state", "m1").stdout)
    assert st["sandbox"] == "pod1" and st["status"] == "created"
    waiter = int(pid_file.read_text())
    assert waiter != pod["pid"]  # the member's own waitable process
    # one sandbox: no second sandbox actor was started for the member
    assert json.loads(zentry("list", "--format", "json").stdout)[0]["sandbox"] == "pod1"
    assert zentry("start", "m1").returncode == 0
    _wait_dead(waiter)
    assert json.loads(zentry("wait", "m1").stdout)["exitStatus"] == 6
    text = out.read_text().split()
    assert text[0] == "member-out"  # the member's stdout is its own create's
    pod_host = zentry("exec", "pod1", "hostname").stdout.strip()
    assert text[1] == pod_host  # the uts namespace joined by path is the pod's
    # the pod goes on after its member ended; deleting the member leaves it
    assert zentry("delete", "m1").returncode == 0
    assert json.loads(zentry("state", "pod1").stdout)["status"] == "running"
    assert zentry("delete", "--force", "pod1").returncode == 0
    assert zentry("list", "-q").stdout.strip() == ""


def test_foreground_run_of_a_member_ends_with_its_container(zentry, busybox_bundle):
    """A member's foreground run waits only for what is its own: the pod's actors
    serve the pod on, and waiting for them to exit cost it a 10 s timeout."""
    pause = busybox_bundle(["sleep", "60"], name="pause", annotations={"io.kubernetes.cri.container-type": "sandbox"})
    assert zentry("run", "-d", "--bundle", pause, "pod2").returncode == 0
    member = busybox_bundle(["sh", "-c", "exit 3"], name="member",
                            annotations={**CRI, "io.kubernetes.cri.sandbox-id": "pod2"})
    try:
        began = time.monotonic()
        r = zentry("run", "--bundle", member, "m2")
        took = time.monotonic() - began
        assert r.returncode == 3, r.stderr
        assert took < 7, f"the member's run took {took:.1f} s"  # 10 s and more when it waited for the pod's actors
        assert zentry("state", "m2").returncode != 0  # deleted at its end
        assert json.loads(zentry("state", "pod2").stdout)["status"] == "running"
    finally:
        zentry("delete", "--force", "m2")
        assert zentry("delete", "--force", "pod2").returncode == 0
    assert zentry("list", "-q").stdout.strip() == ""
