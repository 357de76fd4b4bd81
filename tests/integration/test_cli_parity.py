"""The runc command line, beside runc in the same test: update's flags, ps's arguments, kill's signals, ids.

Each test runs one container under runc and one under zentry with the same
bundle and compares what a script driving either CLI observes (exit status,
output shape, the cgroup files a flag writes).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid

import pytest

from helpers.runc_cli import Runc

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")]

V1 = os.path.isdir("/sys/fs/cgroup/memory") and not os.path.exists("/sys/fs/cgroup/cgroup.controllers")


@pytest.fixture
def runc():
    r = Runc()
    yield r
    r.close()


@pytest.fixture
def cgroup_parent():
    """A private absolute cgroup parent; removed from every hierarchy afterwards."""
    name = f"zentry-cli-{uuid.uuid4().hex[:8]}"
    yield f"/{name}"
    for top in os.listdir("/sys/fs/cgroup"):
        path = os.path.join("/sys/fs/cgroup", top, name)
        if os.path.isdir(path):
            for sub in sorted(os.listdir(path)):
                if os.path.isdir(os.path.join(path, sub)):
                    os.rmdir(os.path.join(path, sub))
            os.rmdir(path)


def _both(zentry, runc, bundle_z, bundle_r, cid: str) -> None:
    assert zentry("run", "-d", "--bundle", bundle_z, cid).returncode == 0
    r = runc("run", "-d", "--bundle", bundle_r, cid)
    assert r.returncode == 0, r.stderr


def _stop(zentry, runc, cid: str) -> None:
    zentry("delete", "--force", cid)
    runc("delete", "--force", cid)


def _v1(path: str, controller: str, name: str) -> str:
    with open(os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"), name)) as f:
        return f.read().strip()


@pytest.mark.skipif(not V1, reason="the comparison reads cgroup v1 files")
def test_update_flags_and_sizes_as_runc(zentry, runc, busybox_bundle, cgroup_parent):
    paths = {"zentry": f"{cgroup_parent}/z", "runc": f"{cgroup_parent}/r"}
    bz = busybox_bundle(["sleep", "60"], linux={"cgroupsPath": paths["zentry"]})
    br = busybox_bundle(["sleep", "60"], linux={"cgroupsPath": paths["runc"]})
    _both(zentry, runc, bz, br, "upd")
    try:
        files = [("memory", "memory.limit_in_bytes"), ("memory", "memory.soft_limit_in_bytes"),
                 ("cpuset", "cpuset.cpus"), ("cpuset", "cpuset.mems"), ("pids", "pids.max"),
                 ("cpu", "cpu.shares"), ("cpu", "cpu.cfs_quota_us"), ("cpu", "cpu.cfs_period_us")]
        if os.path.exists(f"/sys/fs/cgroup/memory{paths['runc']}/memory.memsw.limit_in_bytes"):
            files.append(("memory", "memory.memsw.limit_in_bytes"))

        def observed(who: str) -> dict:
            return {name: _v1(paths[who], ctrl, name) for ctrl, name in files}

        steps = [
            ["--memory", "64m", "--memory-swap", "128M", "--memory-reservation", "32mb", "--cpuset-cpus", "0",
             "--cpuset-mems", "0", "--pids-limit", "50", "--cpu-share", "512", "--cpu-quota", "20000",
             "--cpu-period", "100000"],
            ["--memory", "1.5g", "--memory-swap", "2g"],   # grows: memsw must be written first
            ["--memory", "100000000"],                     # plain bytes
            ["--pids-limit", "0", "--cpu-quota", "0"],     # zero: unchanged
            ["--memory", "-1", "--pids-limit", "-1", "--cpu-quota", "-1"],
        ]
        for flags in steps:
            rz = zentry("update", *flags, "upd")
            rr = runc("update", *flags, "upd")
            assert (rz.returncode, rr.returncode) == (0, 0), (flags, rz.stderr, rr.stderr)
            assert observed("zentry") == observed("runc"), flags
        # --resources from stdin, as podman sends it; zeros are "unchanged" there too
        doc = json.dumps({"memory": {"limit": 48 << 20, "reservation": 0, "swap": 96 << 20},
                          "cpu": {"shares": 256, "quota": 0, "period": 0, "cpus": "", "mems": ""},
                          "pids": {"limit": 77},
                          "devices": [{"allow": False, "access": "rwm"}],  # runc's update leaves devices alone
                          "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]})
        devices = _v1(paths["zentry"], "devices", "devices.list")
        rz = zentry("update", "-r", "-", "upd", input=doc)
        rr = runc("update", "-r", "-", "upd", input=doc)
        assert (rz.returncode, rr.returncode) == (0, 0), (rz.stderr, rr.stderr)
        assert observed("zentry") == observed("runc")
        assert observed("zentry")["memory.limit_in_bytes"] == str(48 << 20)
        assert _v1(paths["zentry"], "devices", "devices.list") == devices
        # zentry's record keeps the whole memory section (swap survives a later limit-only update)
        state = json.loads(open(os.path.join(zentry.root, "upd", "state.json")).read())
        assert state["config"]["linux"]["resources"]["memory"]["limit"] == 48 << 20
        # refused by both: one line, status 1, nothing changed
        before = observed("zentry")
        for bad in (["--memory", "64x"], ["--memory", "lots"], ["--cpu-period", "-5"], ["--cpu-quota", "1.5"],
                    ["-r", "-"]):
            rz = zentry("update", *bad, "upd", input="{\"memory\": {\"limit\": \"big\"}}" if bad == ["-r", "-"] else None)
            rr = runc("update", *bad, "upd", input="{\"memory\": {\"limit\": \"big\"}}" if bad == ["-r", "-"] else None)
            assert rr.returncode == 1 and rz.returncode == 1, (bad, rz.stderr, rr.stderr)
            lines = rz.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("zentry: ") and "Error" not in lines[0], rz.stderr
        assert observed("zentry") == before
    finally:
        _stop(zentry, runc, "upd")


def test_ps_runs_ps_with_the_arguments_given_as_runc(zentry, runc, busybox_bundle):
    bz = busybox_bundle(["sleep", "61"])
    br = busybox_bundle(["sleep", "61"])
    _both(zentry, runc, bz, br, "psc")
    try:
        for ps_args in ([], ["-ef"], ["-o", "pid,stime,time,comm"], ["aux"]):
            rz = zentry("ps", "psc", *ps_args)
            rr = runc("ps", "psc", *ps_args)
            assert (rz.returncode, rr.returncode) == (0, 0), (ps_args, rz.stderr, rr.stderr)
            lz, lr = rz.stdout.splitlines(), rr.stdout.splitlines()
            assert lz[0].split() == lr[0].split(), ps_args          # ps's own header
            assert len(lz) == len(lr) == 2, (rz.stdout, rr.stdout)  # the one sleep, nothing of the host
            assert ("sleep" in lz[1]) == ("sleep" in lr[1])
            header = lz[0].split()
            if "STIME" in header:  # ps's clock time (14:02, Dec05), not an epoch
                stime = lz[1].split()[header.index("STIME")]
                assert not stime.isdigit() or len(stime) < 9, stime
            if header[-2:] == ["TIME", "CMD"]:
                assert ":" in lz[1].split()[header.index("TIME")]
        jz, jr = json.loads(zentry("ps", "-f", "json", "psc").stdout), json.loads(runc("ps", "-f", "json", "psc").stdout)
        assert len(jz) == len(jr) == 1 and all(isinstance(p, int) for p in jz)
        # ps refusing its arguments: both fail
        rz, rr = zentry("ps", "psc", "--no-such-ps-flag"), runc("ps", "psc", "--no-such-ps-flag")
        assert rz.returncode == rr.returncode == 1
        assert len(rz.stderr.strip().splitlines()) == 1
    finally:
        _stop(zentry, runc, "psc")


def _wait_stopped(cli, cid: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = cli("state", cid)
        if r.returncode == 0 and json.loads(r.stdout)["status"] == "stopped":
            return True
        time.sleep(0.05)
    return False


def test_kill_signal_forms_as_runc(zentry, runc, busybox_bundle):
    loop = ["sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.2; done"]  # pid 1 ignores what it has no handler for
    bz = busybox_bundle(loop)
    br = busybox_bundle(loop)
    _both(zentry, runc, bz, br, "sig")
    try:
        # signals a sleep survives, in every form runc takes; 0 only checks it is there
        for form in ("0", "SIGCONT", "CONT", "cont", "18", "SIGWINCH", "28"):
            rz, rr = zentry("kill", "sig", form), runc("kill", "sig", form)
            assert (rz.returncode, rr.returncode) == (0, 0), (form, rz.stderr, rr.stderr)
        for bad in ("SIGNOPE", "NOPE", "-1", "1.5", "SIG"):
            rz, rr = zentry("kill", "sig", bad), runc("kill", "sig", bad)
            assert rr.returncode != 0 and rz.returncode == 1, (bad, rz.stderr, rr.stderr)
            assert len(rz.stderr.strip().splitlines()) == 1
        for cli in (zentry, runc):
            assert json.loads(cli("state", "sig").stdout)["status"] == "running"
        rz, rr = zentry("kill", "sig", ""), runc("kill", "sig", "")  # empty: the default, SIGTERM
        assert (rz.returncode, rr.returncode) == (0, 0)
        assert _wait_stopped(zentry, "sig") and _wait_stopped(runc, "sig")
        assert json.loads(zentry("state", "sig").stdout).get("exitStatus", 7) == 7
        # signal 0 to a stopped container: an error in both
        rz, rr = zentry("kill", "sig", "0"), runc("kill", "sig", "0")
        assert rz.returncode != 0 and rr.returncode != 0
    finally:
        _stop(zentry, runc, "sig")


@pytest.mark.parametrize("cid", ["nu-ünï", "a" * 303, "a/b", "..", "a b", "ünï"])
def test_ids_runc_refuses_are_refused(zentry, runc, busybox_bundle, cid):
    bundle = busybox_bundle(["true"])
    rr = runc("create", "--bundle", bundle, cid)
    rz = zentry("create", "--bundle", bundle, cid)
    assert rr.returncode != 0
    assert rz.returncode == 1
    lines = rz.stderr.strip().splitlines()
    assert len(lines) == 1 and "invalid container id" in lines[0], rz.stderr
    assert "Errno" not in lines[0]
    assert os.listdir(zentry.root) == []
    rz = zentry("state", cid)
    assert rz.returncode == 1 and "invalid container id" in rz.stderr


def test_longest_id_works(zentry, busybox_bundle):
    from zentry.actors.state import MAX_ID_LENGTH

    cid = "l" * MAX_ID_LENGTH
    bundle = busybox_bundle(["true"])
    r = zentry("create", "--bundle", bundle, cid)
    assert r.returncode == 0, r.stderr
    assert zentry("delete", "--force", cid).returncode == 0
    r = zentry("create", "--bundle", bundle, cid + "l")
    assert r.returncode == 1 and f"at most {MAX_ID_LENGTH}" in r.stderr
