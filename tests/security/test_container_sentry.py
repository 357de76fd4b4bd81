"""The sentry as a container sees it: what `zentry run` must show (issue 4's "done when").

Each test runs a real container through the CLI and checks what the sentry
emulates, continues or refuses, against what the host (or runc) does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers.runc_cli import runc_run

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
    assert etc_hostname  # the rootfs file is readable (the open is continued: the kernel's)


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


def test_own_root_cwd_and_exe_through_procfs_open_as_under_runc(zentry, busybox_bundle, tmp_path):
    # magic links are the kernel's, followed for the container as under runc
    script = (
        "cd /etc; cat /proc/self/root/etc/hostname /proc/self/cwd/hostname;"
        " head -c 4 /proc/self/exe | od -An -c | tr -d ' \\n'; echo;"
        " cat /proc/1/root/etc/hostname"
    )
    bundle = busybox_bundle(["sh", "-c", script])
    hostname = "through-own-links\n"
    (bundle / "rootfs" / "etc" / "hostname").write_text(hostname)
    z, r = both(zentry, bundle, "ol1", tmp_path)
    assert z.returncode == 0, z.stderr
    assert z.stdout == r.stdout == hostname + hostname + "177ELF\n" + hostname


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


# --- the kernel opens files as the container (design §5, 2026-12-05) ---------------------
# Each test runs the same bundle under zentry and under runc and compares; each
# failed while the sentry opened files with its own identity.




def both(zentry, bundle, cid, tmp_path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    z = run(zentry, bundle, cid)
    r = runc_run(bundle, cid, tmp_path)
    return z, r


def test_kmsg_and_kallsyms_as_under_runc(zentry, busybox_bundle, tmp_path):
    # CAP_SYSLOG is checked at open (kmsg) and at read (kallsyms addresses): the container's, not the sentry's.
    # The shell only opens /proc/kmsg (a read would consume the host's kernel log).
    script = "(exec 3</proc/kmsg) 2>/dev/null && echo kmsg-opened || echo kmsg-refused; head -1 /proc/kallsyms | cut -d' ' -f1"
    z, r = both(zentry, busybox_bundle(["sh", "-c", script]), "kmsg1", tmp_path)
    assert z.stdout == r.stdout == "kmsg-refused\n0000000000000000\n", (z.stderr, r.stderr)


def test_a_device_the_device_cgroup_denies_cannot_be_opened(zentry, busybox_bundle, tmp_path):
    # the node is in the rootfs (a device listed in linux.devices would be allowed by the runtime)
    bundle = busybox_bundle(
        ["sh", "-c", "(exec 3</fuse) 2>&1 | grep -o 'Operation not permitted' || echo opened"],
        linux={"resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    )
    os.mknod(bundle / "rootfs" / "fuse", 0o666 | 0o020000, os.makedev(10, 229))
    z, r = both(zentry, bundle, "dev1", tmp_path)
    assert z.stdout == r.stdout == "Operation not permitted\n", (z.stderr, r.stderr)


def test_proc_sys_net_is_the_containers_and_a_write_stays_there(zentry, busybox_bundle, tmp_path):
    knob = "/proc/sys/net/unix/max_dgram_qlen"
    host_value = open(knob).read()
    bundle = busybox_bundle(["sh", "-c", f"echo 4321 > {knob}; cat {knob}"], linux={"readonlyPaths": []})
    z, r = both(zentry, bundle, "net1", tmp_path)
    assert z.stdout == r.stdout == "4321\n", (z.stderr, r.stderr)
    assert open(knob).read() == host_value  # the container's network namespace changed, not the host's


def test_logs_through_proc_1_fd_1_dev_stdout_symlinks_and_umask(zentry_root, busybox_bundle, tmp_path):
    from helpers.bundle import zentry_command

    script = ("rm -f /tmp/log /tmp/p /tmp/g; echo one > /proc/1/fd/1; ln -s /dev/stdout /tmp/log; echo two > /tmp/log;"
              " umask 077; echo > /tmp/p; umask 002; echo > /tmp/g; stat -c %a /tmp/p /tmp/g;"
              " (echo x > /dev/tty) 2>&1 | grep -c 'No such device or address'")
    bundle = busybox_bundle(["sh", "-c", script], root={"path": "rootfs", "readonly": False})
    # stdout a pipe, as a log collector's (the zentry fixture's files would be truncated by ">")
    z = subprocess.run([*zentry_command(), "--root", str(zentry_root), "run", "--bundle", str(bundle), "log1"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=bundle)
    r = runc_run(bundle, "log1", tmp_path)
    assert z.stdout == r.stdout == "one\ntwo\n600\n664\n1\n", (z.stderr, r.stderr)


def test_the_views_show_the_containers_limits(zentry, busybox_bundle, tmp_path):
    script = ("nproc; cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo;"
              " free | grep Mem: | tr -s ' ' | cut -d' ' -f2; cut -d' ' -f1 /proc/uptime; cut -d' ' -f5 /proc/loadavg")
    bundle = busybox_bundle(["sh", "-c", script], linux={"resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 100000, "period": 100000, "cpus": "0"}}})
    z, r = both(zentry, bundle, "view1", tmp_path)
    assert z.returncode == 0 and len(z.stdout.split()) == 6, (z.stdout, z.stderr)
    nproc, online, ncpu, total, uptime, lastpid = z.stdout.split()
    assert nproc == r.stdout.split()[0] == "1"  # sched_getaffinity: the kernel's (the cpuset), as under runc
    assert (online, ncpu, total) == ("0", "1", str(256 << 10))
    assert float(uptime) < 60 and int(lastpid) < 100  # since the container started; a pid of its own namespace


def test_dev_tty_under_exec_t_opens_as_under_runc(zentry_root, busybox_bundle, tmp_path):
    import shutil

    from helpers.bundle import zentry_command
    from helpers.engines import run_in_pty

    runc = shutil.which("runc")
    if runc is None:
        pytest.skip("runc is not installed")
    bundle = busybox_bundle(["sleep", "60"])
    script = "(exec 3</dev/tty) && echo tty-read-ok; echo via-tty > /dev/tty"
    out = {}
    for name, argv in (("zentry", [*zentry_command(), "--root", str(zentry_root)]), ("runc", [runc, "--root", str(tmp_path / "runc-root")])):
        started = subprocess.run([*argv, "run", "-d", "--bundle", str(bundle), "tty1"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=bundle, timeout=60)
        assert started.returncode == 0, name
        try:
            r = run_in_pty([*argv, "exec", "-t", "tty1", "sh", "-c", script], timeout=30)
            out[name] = (r.returncode, r.output)
        finally:
            subprocess.run([*argv, "delete", "-f", "tty1"], capture_output=True, timeout=30)
    assert out["zentry"] == out["runc"] == (0, "tty-read-ok\r\nvia-tty\r\n")
