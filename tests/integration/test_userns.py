"""User namespaces (config-linux.md): mappings, ids seen inside and outside, mounts, exec, joining by path.

Real containers through the CLI, as root. The container's root maps to host
uid/gid 100000 (a range of 65536), so what the host sees of the container's
processes and files can be told apart from host root's. The leak guard
(tests/conftest.py) checks that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_errors import check_error, zentry_with_log

pytestmark = pytest.mark.root

HOST_BASE = 100000
SIZE = 65536
MAPPING = [{"containerID": 0, "hostID": HOST_BASE, "size": SIZE}]
NAMESPACES = ["pid", "network", "ipc", "uts", "mount", "cgroup", "user"]


def userns_linux(**extra) -> dict:
    return {"namespaces": [{"type": t} for t in NAMESPACES], "uidMappings": MAPPING, "gidMappings": MAPPING, **extra}


def status_ids(pid: int) -> dict[str, list[int]]:
    """Uid/Gid lines of /proc/PID/status, as the host sees them."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                out[key] = [int(v) for v in value.split()]
    return out


def container_pids(zentry, cid: str) -> list[int]:
    r = zentry("ps", "--format", "json", cid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def started(zentry, bundle, cid: str) -> int:
    """Create and start a container running ``sleep``; its init's host pid."""
    r = zentry("create", "--bundle", bundle, cid)
    assert r.returncode == 0, r.stderr
    r = zentry("start", cid)
    assert r.returncode == 0, r.stderr
    pids = container_pids(zentry, cid)
    assert len(pids) == 1, pids
    return pids[0]


def test_container_root_is_the_mapped_host_uid(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"], linux=userns_linux())
    pid = started(zentry, bundle, "u1")
    try:
        # outside: the host sees the mapped ids, and a user namespace of its own
        assert status_ids(pid) == {"Uid": [HOST_BASE] * 4, "Gid": [HOST_BASE] * 4}
        assert os.readlink(f"/proc/{pid}/ns/user") != os.readlink("/proc/self/ns/user")
        with open(f"/proc/{pid}/uid_map") as f:
            assert f.read().split() == ["0", str(HOST_BASE), str(SIZE)]
        # inside: root, and the same mappings
        r = zentry("exec", "u1", "sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; grep -E '^(Uid|Gid):' /proc/1/status")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[:2] == ["0", "0"]
        assert [l.split() for l in lines[2:4]] == [["0", str(HOST_BASE), str(SIZE)]] * 2
        # /proc/N/status (opened by the kernel as the container) shows the container's ids, not the host's
        assert [l.split() for l in lines[4:]] == [["Uid:", "0", "0", "0", "0"], ["Gid:", "0", "0", "0", "0"]]
        # ps, pause, resume and kill act on it as on any container
        assert zentry("pause", "u1").returncode == 0
        assert json.loads(zentry("state", "u1").stdout)["status"] == "paused"
        assert zentry("resume", "u1").returncode == 0
        assert zentry("kill", "u1", "KILL").returncode == 0
        deadline = time.monotonic() + 10
        while json.loads(zentry("state", "u1").stdout)["status"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(zentry("state", "u1").stdout)["status"] == "stopped"
    finally:
        assert zentry("delete", "--force", "u1").returncode == 0


def test_run_sees_its_mounts_and_ids(zentry, busybox_bundle):
    script = (
        "id -u; cat /proc/self/uid_map;"
        " test -e /proc/1/ns/user && echo proc-ok;"  # proc of the container's pid namespace
        " test -d /sys/kernel && echo sysfs-ok;"
        " echo x > /dev/null && head -c 4 /dev/zero | wc -c;"
        " stat -c '%u:%g' /dev /dev/shm;"  # tmpfs belong to the container's root
        " hostname"
    )
    bundle = busybox_bundle(["sh", "-c", script], hostname="inside", linux=userns_linux())
    r = zentry("run", "--bundle", bundle, "u2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(HOST_BASE), str(SIZE)]
    assert lines[2:] == ["proc-ok", "sysfs-ok", "4", "0:0", "0:0", "inside"]


def test_bind_mounts_keep_host_ownership(zentry, busybox_bundle, tmp_path):
    share = tmp_path / "share"
    (share / "w").mkdir(parents=True)
    os.chown(share / "w", HOST_BASE, HOST_BASE)  # the container's root owns this one
    secret = share / "secret"
    secret.write_text("host secret\n")
    os.chmod(secret, 0o600)  # host root's, unreadable to the container's root as under runc
    script = "cat /share/secret; echo cat=$?; echo made > /share/w/made && echo write-ok; stat -c '%u' /share/secret"
    bundle = busybox_bundle(
        ["sh", "-c", script],
        linux=userns_linux(),
        mounts=[*_spec_mounts(busybox_bundle),
                {"destination": "/share", "type": "bind", "source": str(share), "options": ["rbind", "rw"]}],
    )
    r = zentry("run", "--bundle", bundle, "u3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "host secret" not in r.stdout
    assert "Permission denied" in r.stderr
    assert lines[0] == "cat=1"
    assert lines[1] == "write-ok"
    assert lines[2] == "65534"  # host root is not mapped: the overflow uid
    made = os.stat(share / "w" / "made")
    assert (made.st_uid, made.st_gid) == (HOST_BASE, HOST_BASE)


def _spec_mounts(busybox_bundle) -> list[dict]:
    """The default mounts of a bundle (to append one)."""
    probe = busybox_bundle(["true"], name="probe")
    return json.loads((probe / "config.json").read_text())["mounts"]


def test_listed_device_is_the_hosts_node(zentry, busybox_bundle):
    # mknod is not possible for a container's root in a user namespace: the
    # host's node is bound, as runc does (/dev/kmsg: c 1 11).
    if not os.path.exists("/dev/kmsg"):
        pytest.skip("the host has no /dev/kmsg")
    dev = {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o600, "uid": 0, "gid": 0}
    bundle = busybox_bundle(["sh", "-c", "stat -c '%F %t:%T %u' /dev/kmsg"], linux=userns_linux(devices=[dev]))
    r = zentry("run", "--bundle", bundle, "u4")
    assert r.returncode == 0, r.stderr
    # the host's node, owned by host root (unmapped: the overflow uid)
    assert r.stdout.split() == ["character", "special", "file", "1:b", "65534"]


@pytest.fixture
def shared_dir():
    """A host directory the container's root may write to (tmp_path's parents are 0700)."""
    path = tempfile.mkdtemp(prefix="zentry-userns-", dir="/tmp")
    os.chmod(path, 0o755)
    os.chown(path, HOST_BASE, HOST_BASE)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_container_hooks_run_as_the_containers_root(zentry, busybox_bundle, shared_dir):
    out = shared_dir
    bundle = busybox_bundle(
        ["sh", "-c", "cat /dev/shm/started"],
        linux=userns_linux(),
        hooks={
            # in the container's namespaces, before pivot_root: the host's paths
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", f"id -u > {out}/created"]}],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "id -u > /dev/shm/started"]}],
        },
    )
    r = zentry("run", "--bundle", bundle, "u10")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"
    assert (out / "created").read_text().strip() == "0"
    assert os.stat(out / "created").st_uid == HOST_BASE


@pytest.fixture
def user_ns_holder():
    """A process in a new user namespace mapped 0 -> 200000 (size 65536); yields its pid."""
    proc = subprocess.Popen(["unshare", "--user", "sleep", "300"], stdin=subprocess.DEVNULL)
    try:
        ours = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{proc.pid}/ns/user") == ours:
            assert time.monotonic() < deadline, "unshare --user did not make a user namespace"
            time.sleep(0.01)
        for kind in ("uid", "gid"):
            with open(f"/proc/{proc.pid}/{kind}_map", "w") as f:
                f.write(f"0 200000 {SIZE}\n")
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_join_user_namespace_by_path(zentry, busybox_bundle, user_ns_holder):
    path = f"/proc/{user_ns_holder}/ns/user"
    namespaces = [{"type": t} for t in NAMESPACES if t != "user"] + [{"type": "user", "path": path}]
    bundle = busybox_bundle(["sh", "-c", "id -u; cat /proc/self/uid_map; readlink /proc/self/ns/user"],
                            linux={"namespaces": namespaces})
    r = zentry("run", "--bundle", bundle, "u5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "200000", str(SIZE)]
    assert lines[2] == os.readlink(path)


def test_joined_user_namespace_with_other_mappings_is_refused(zentry, busybox_bundle, user_ns_holder, tmp_path):
    path = f"/proc/{user_ns_holder}/ns/user"
    namespaces = [{"type": t} for t in NAMESPACES if t != "user"] + [{"type": "user", "path": path}]
    bundle = busybox_bundle(["true"], linux={"namespaces": namespaces, "uidMappings": MAPPING, "gidMappings": MAPPING})
    log = tmp_path / "log.json"
    check_error(zentry_with_log(zentry, log, "run", "--bundle", bundle, "u6"), log, "do not match")
    assert zentry("list", "-q").stdout.strip() == ""


def test_exec_joins_the_user_namespace_first(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"], linux=userns_linux())
    pid = started(zentry, bundle, "u7")
    try:
        r = zentry("exec", "u7", "sh", "-c", "readlink /proc/self/ns/user; readlink /proc/1/ns/user; id -u")
        assert r.returncode == 0, r.stderr
        mine, init, uid = r.stdout.split()
        assert mine == init == os.readlink(f"/proc/{pid}/ns/user")
        assert uid == "0"
        # a non-root user of the container is its mapped host uid too
        proc = subprocess.Popen(
            [*_cli(zentry), "exec", "--user", "1000:1000", "u7", "sleep", "30"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 15
            while len(pids := container_pids(zentry, "u7")) < 2:
                assert time.monotonic() < deadline, "the exec'd process did not appear"
                time.sleep(0.05)
            other = next(p for p in pids if p != pid)
            assert status_ids(other) == {"Uid": [HOST_BASE + 1000] * 4, "Gid": [HOST_BASE + 1000] * 4}
        finally:
            assert zentry("kill", "--all", "u7", "KILL").returncode == 0
            proc.wait(30)
    finally:
        assert zentry("delete", "--force", "u7").returncode == 0


def _cli(zentry) -> list[str]:
    from helpers.bundle import zentry_command

    return [*zentry_command(), "--root", str(zentry.root)]


@pytest.mark.parametrize(
    "linux, needle",
    [
        ({"uidMappings": None, "gidMappings": None}, "needs both uidMappings and gidMappings"),
        ({"gidMappings": None}, "needs both uidMappings and gidMappings"),
        ({"uidMappings": [{"containerID": 1, "hostID": HOST_BASE, "size": 10}]}, "uid 0 (the container's root) is not mapped"),
    ],
)
def test_user_namespace_without_mappings_is_refused(zentry, busybox_bundle, tmp_path, linux, needle):
    bundle = busybox_bundle(["true"], linux={**userns_linux(), **linux})
    log = tmp_path / "log.json"
    check_error(zentry_with_log(zentry, log, "create", "--bundle", bundle, "u8"), log, needle)
    assert zentry("list", "-q").stdout.strip() == ""
    assert not os.listdir(zentry.root)


def test_rootless_spec_runs_as_root(zentry, busybox_rootfs, tmp_path):
    # `runc spec --rootless` output runs as root too: a user namespace mapping
    # the caller (root) to the container's root, the host's network and /sys.
    bundle = tmp_path / "rootless"
    bundle.mkdir()
    busybox_rootfs(os.path.join("rootless", "rootfs"))
    assert zentry("spec", "--rootless", cwd=bundle).returncode == 0
    config = json.loads((bundle / "config.json").read_text())
    assert {"type": "user"} in config["linux"]["namespaces"]
    config["process"].update(terminal=False, args=["sh", "-c", "id -u; cat /proc/self/uid_map; test -d /sys/class && echo sys-ok"])
    (bundle / "config.json").write_text(json.dumps(config))
    r = zentry("run", "--bundle", bundle, "u9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", "0", "1"]
    assert lines[2] == "sys-ok"


def test_features_lists_the_user_namespace(zentry):
    r = zentry("features")
    assert r.returncode == 0, r.stderr
    linux = json.loads(r.stdout)["linux"]
    assert "user" in linux["namespaces"]
    # idmapped mounts ("idmap" mount option) are refused by zentry: not claimed
    assert linux["mountExtensions"]["idmap"]["enabled"] is False
    assert "idmap" not in json.loads(r.stdout)["mountOptions"]


def test_root_mapped_to_host_root_gets_no_file_capabilities_through_the_sentry(zentry, busybox_bundle):
    """Container root mapped to host root, with CAP_DAC_OVERRIDE in its own user namespace: the
    capability does not cover a file of an unmapped owner (the kernel's rule, so runc's). The
    kernel opens as the container (the sentry continues the call): none of the sentry's capabilities apply."""
    # root is host root; the other ids (gid 5 for devpts…) map elsewhere, and host uid 1000 is unmapped
    identity = [{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": HOST_BASE + 1, "size": SIZE - 1}]
    caps = ["CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_KILL"]
    bundle = busybox_bundle(
        ["sh", "-c", "cat /private.txt 2>/dev/null || echo DENIED; cat /rootonly.txt"],
        linux=userns_linux(uidMappings=identity, gidMappings=identity),
        process={"capabilities": {k: caps for k in ("bounding", "effective", "permitted")}},
    )
    private = bundle / "rootfs" / "private.txt"
    private.write_text("SECRET\n")
    os.chown(private, 1000, 1000)
    os.chmod(private, 0o600)
    own = bundle / "rootfs" / "rootonly.txt"
    own.write_text("ROOT-OWN\n")
    os.chmod(own, 0o600)
    r = zentry("run", "--bundle", bundle, "uid0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["DENIED", "ROOT-OWN"]
