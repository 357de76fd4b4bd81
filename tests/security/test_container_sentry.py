"""The sentry as a container sees it: what `zentry run` must show (issue 4's "done when").

Each test runs a real container through the CLI and checks what the sentry
emulates, mediates or refuses, against what the host would do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.root


def run(zentry, bundle, cid: str) -> subprocess.CompletedProcess:
    return zentry("run", "--bundle", bundle, cid)


def test_uname_names_zentry_and_hostname_is_the_containers(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "uname -v; uname -n; cat /etc/hostname"], hostname="sbx")
    r = run(zentry, bundle, "u1")
    assert r.returncode == 0, r.stderr
    version, nodename, etc_hostname = r.stdout.splitlines()
    assert "zentry" in version
    assert version != os.uname().version
    assert nodename == "sbx"
    assert etc_hostname  # the rootfs file is readable through the mediated open


def test_symlink_out_of_the_root_does_not_escape(zentry, busybox_bundle, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-ONLY\n")
    bundle = busybox_bundle(["sh", "-c", f"cat /tmp/x; cat /tmp/y; cat /tmp/z; echo done"])
    rootfs = bundle / "rootfs"
    (rootfs / "tmp").mkdir(exist_ok=True)
    depth = "../" * 12
    os.symlink(f"{depth}{str(secret).lstrip('/')}", rootfs / "tmp" / "x")
    os.symlink(str(secret), rootfs / "tmp" / "y")
    os.symlink("/proc/1/root" + str(secret), rootfs / "tmp" / "z")
    r = run(zentry, bundle, "esc1")
    assert "HOST-ONLY" not in r.stdout
    assert r.stdout.strip().endswith("done")
    assert r.stderr.count("No such file or directory") + r.stderr.count("ELOOP") + r.stderr.count("Symbolic link loop") >= 2


def test_procfs_links_into_self_show_the_containers_own(zentry, busybox_bundle):
    # /proc/mounts -> self/mounts and /proc/net -> self/net: resolved by the
    # sentry, "self" must be the tracee (the sentry has no pid in the
    # container's procfs), as under runc.
    bundle = busybox_bundle(["sh", "-c", "cat /proc/mounts; echo ---; cat /proc/net/dev; echo ---; cd /proc && cat mounts | wc -l"])
    r = run(zentry, bundle, "pl1")
    assert r.returncode == 0, r.stderr
    mounts, netdev, count = r.stdout.split("---\n")
    assert "proc /proc proc" in mounts and " /dev " in mounts  # the container's mount table
    assert netdev.startswith("Inter-|")
    assert [line.split(":")[0].strip() for line in netdev.splitlines()[2:]] == ["lo"]  # its own network namespace
    assert int(count) == len(mounts.splitlines())


def test_own_root_cwd_and_exe_through_procfs_open_as_under_runc(zentry, busybox_bundle):
    # magic links the sentry follows for the tracee itself; another
    # process's stay refused (ELOOP)
    script = (
        "cd /etc; cat /proc/self/root/etc/hostname /proc/self/cwd/hostname;"
        " head -c 4 /proc/self/exe | od -An -c | tr -d ' \\n'; echo;"
        " cat /proc/1/root/etc/hostname 2>&1 | grep -c 'symbolic links'"
    )
    bundle = busybox_bundle(["sh", "-c", script])
    hostname = "through-own-links\n"
    (bundle / "rootfs" / "etc" / "hostname").write_text(hostname)
    r = run(zentry, bundle, "ol1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == hostname + hostname + "177ELF\n" + "1\n"


def test_named_pipes_block_as_under_runc(zentry, busybox_bundle):
    script = (
        "cd /tmp; mkfifo p q; (cat p > out &); sleep 0.2; echo via-fifo > p; echo rc=$?;"
        " sleep 0.2; cat out; (sleep 0.3; echo later > q) & cat q"
    )
    bundle = busybox_bundle(["sh", "-c", script], root={"readonly": False})
    r = run(zentry, bundle, "fifo1")
    assert (r.returncode, r.stdout) == (0, "rc=0\nvia-fifo\nlater\n"), r.stderr


def test_namespace_and_mount_syscalls_are_refused(zentry, busybox_bundle):
    script = (
        "unshare -U true 2>&1; echo unshare=$?; "
        "mount -t tmpfs none /mnt 2>&1; echo mount=$?; "
        "umount /proc 2>&1; echo umount=$?"
    )
    bundle = busybox_bundle(["sh", "-c", script])
    r = run(zentry, bundle, "deny1")
    out = r.stdout
    assert "unshare=0" not in out and "mount=0" not in out and "umount=0" not in out
    assert "Operation not permitted" in out


def test_free_shows_the_memory_limit(zentry, busybox_bundle):
    limit = 256 * 1024 * 1024
    bundle = busybox_bundle(["sh", "-c", "free -m | head -2; grep MemTotal /proc/meminfo"],
                            linux={"resources": {"memory": {"limit": limit}}})
    r = run(zentry, bundle, "mem1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    total_mb = int(lines[1].split()[1])
    assert total_mb == limit // (1024 * 1024)
    assert lines[2].split()[1] == str(limit // 1024)


def test_killing_the_sandbox_kills_the_container(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "fc1").returncode == 0
    # the sandbox actor (the sentry's host); `state`'s pid is the container's init
    with open(os.path.join(zentry.root, "fc1", "state.json")) as f:
        sandbox = json.load(f)["sandbox_pid"]
    ps = json.loads(zentry("ps", "--format", "json", "fc1").stdout)
    assert ps
    os.kill(sandbox, signal.SIGKILL)
    deadline = time.monotonic() + 10
    alive = ps
    while alive and time.monotonic() < deadline:
        alive = [p for p in ps if _alive(p)]
        time.sleep(0.05)
    assert not alive, f"container processes outlived their sandbox: {alive}"
    deadline = time.monotonic() + 10
    while json.loads(zentry("state", "fc1").stdout)["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(zentry("state", "fc1").stdout)["status"] == "stopped"
    assert zentry("delete", "fc1").returncode == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("extra_caps, expect", [((), "DENIED"), (("CAP_DAC_OVERRIDE",), "SECRET")])
def test_container_root_reads_other_users_files_only_with_dac_override(zentry, busybox_bundle, extra_caps, expect):
    """runc's default capability set has no CAP_DAC_OVERRIDE: container root cannot read another
    user's 0600 file. The sentry opens files for the container: it must not lend its own."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", *extra_caps]
    bundle = busybox_bundle(
        ["sh", "-c", "cat /private.txt 2>/dev/null || echo DENIED"],
        process={"capabilities": {k: caps for k in ("bounding", "effective", "permitted")}},
    )
    secret = bundle / "rootfs" / "private.txt"
    secret.write_text("SECRET\n")
    os.chown(secret, 1000, 1000)
    os.chmod(secret, 0o600)
    r = run(zentry, bundle, "dac" + str(len(extra_caps)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expect
