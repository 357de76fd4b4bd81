"""The /proc and /sys views (a FUSE filesystem the sandbox serves), and opens the sentry never sees.

Real containers through the CLI, each compared with runc in the same test
where runc has an answer: runc shows the host's memory and CPUs; zentry
shows the container's limits, to the same readers (busybox's nproc, free,
cat; the host's own Python for ``os.cpu_count()``, bound read-only into the
container). Each test failed before the views were a filesystem: the views
were served only to trapped opens, and opens were trapped in every
container.
"""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
import textwrap
import time

import pytest

from helpers.runc_cli import runc_run
from helpers.wait import wait_for
from test_tap import TapProcess, delete_and_reap, events_of, status_of
from test_userns import userns_linux

pytestmark = pytest.mark.root

LIMITS = {"resources": {"memory": {"limit": 256 << 20}, "cpu": {"quota": 100000, "period": 100000, "cpus": "0"}}}
PY = os.path.realpath(sys.executable)
#: the host's Python and the libraries it needs, read-only, so that os.cpu_count() is CPython's own
PY_MOUNTS = [{"destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]}
             for dst, src in (("/usr/lib", "/usr/lib"), ("/lib", "/usr/lib"), ("/lib64", "/usr/lib64"), (sys.base_prefix, sys.base_prefix))]
VIEW_PATHS = ["/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/loadavg", "/sys/devices/system/cpu/online"]


def with_mounts(bundle, extra: list[dict]):
    """The bundle with ``extra`` mounts after the default ones."""
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    config["mounts"] = config.get("mounts", []) + extra
    path.write_text(json.dumps(config))
    return bundle




def host_meminfo_total() -> str:
    with open("/proc/meminfo") as f:
        return f.readline().split()[1]


READERS = ("nproc; {py} -S -c 'import os; print(os.cpu_count())'; cat /sys/devices/system/cpu/online;"
           " free | grep Mem: | tr -s ' ' | cut -d' ' -f2; cat /proc/meminfo | head -1 | tr -s ' ' | cut -d' ' -f2;"
           " grep -c ^processor /proc/cpuinfo; grep -c '^cpu[0-9]' /proc/stat; cat /proc/loadavg | wc -w;"
           " cut -d' ' -f1 /proc/uptime")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell a 1-CPU limit from the host")
def test_readers_see_the_containers_limits_where_runc_shows_the_hosts(zentry, busybox_bundle, tmp_path):
    bundle = with_mounts(busybox_bundle(["sh", "-c", READERS.format(py=PY)], linux=LIMITS), PY_MOUNTS)
    z = zentry("run", "--bundle", bundle, "v1")
    r = runc_run(bundle, "v1", tmp_path)
    assert z.returncode == 0 and r.returncode == 0, (z.stderr, r.stderr)
    zl, rl = z.stdout.split(), r.stdout.split()
    assert len(zl) == len(rl) == 9, (z.stdout, r.stdout)
    # nproc is sched_getaffinity: the cpuset, the kernel's answer under both
    assert zl[0] == rl[0] == "1"
    # os.cpu_count() (glibc reads /sys/devices/system/cpu/online), online, free, MemTotal, cpuinfo, /proc/stat
    assert zl[1:8] == ["1", "0", str(256 << 10), str(256 << 10), "1", "1", "5"], z.stdout
    n = str(os.cpu_count())
    assert rl[1:8] == [n, f"0-{os.cpu_count() - 1}", host_meminfo_total(), host_meminfo_total(), n, n, "5"], r.stdout
    # uptime counts from the container's start (runc: the host's boot): its time namespace, no view
    assert float(zl[8]) < 60 < float(rl[8])


def test_exec_sees_the_views_and_no_view_is_mounted_on_the_host(zentry, busybox_bundle):
    connections = set(os.listdir("/sys/fs/fuse/connections")) if os.path.isdir("/sys/fs/fuse/connections") else None
    bundle = busybox_bundle(["sleep", "30"], linux=LIMITS)
    assert zentry("run", "--detach", "--bundle", bundle, "v2").returncode == 0
    try:
        r = zentry("exec", "v2", "sh", "-c", "grep MemTotal /proc/meminfo; grep zentry-views /proc/self/mountinfo")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["MemTotal:", str(256 << 10), "kB"]
        binds = {line.split()[4]: line.split()[5] for line in lines[1:]}
        assert sorted(binds) == sorted(VIEW_PATHS) and all(o.startswith("ro,nosuid,nodev,noexec") for o in binds.values()), lines
        with open("/proc/self/mountinfo") as f:
            assert "zentry-views" not in f.read()  # only in the container's mount namespace
        # a write is refused, as the read-only files of procfs refuse it
        r = zentry("exec", "v2", "sh", "-c", "echo x > /proc/meminfo")
        assert r.returncode != 0
    finally:
        zentry("delete", "-f", "v2")
    with open("/proc/self/mountinfo") as f:
        assert "zentry-views" not in f.read()
    if connections is not None:  # the connection ended with the container's mount namespace
        assert wait_for(lambda: set(os.listdir("/sys/fs/fuse/connections")) <= connections, timeout=5)


def test_in_a_user_namespace_with_a_read_only_root(zentry, busybox_bundle):
    script = ("grep MemTotal /proc/meminfo; cat /sys/devices/system/cpu/online; id -u;"
              " stat -c %u:%g:%a /proc/meminfo /proc/version /sys/devices/system/cpu/online /sys/devices/system/cpu/possible")
    bundle = busybox_bundle(["sh", "-c", script], root={"path": "rootfs", "readonly": True}, linux=userns_linux(**LIMITS))
    z = zentry("run", "--bundle", bundle, "v3")
    assert z.returncode == 0, z.stderr
    lines = z.stdout.splitlines()
    assert lines[:3] == [f"MemTotal:         {256 << 10} kB", "0", "0"], z.stdout
    # owned by host root, unmapped in the namespace: as the kernel's own procfs and sysfs files beside them
    assert lines[3] == lines[4] and lines[5] == lines[6] and lines[3].startswith("65534:65534:"), z.stdout


def test_opens_reach_the_sentry_only_in_a_container_created_with_strace(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "30"])
    tap = TapProcess(zentry, "--format", "json", "--kind", "syscall", "--timeout", "60")
    try:
        time.sleep(1.0)
        assert zentry("run", "--detach", "--bundle", bundle, "plain").returncode == 0
        # strace switched on at run time: trapped calls (uname) are seen, opens are not trapped at all
        assert zentry("debug", "--strace", "on", "plain").returncode == 0
        assert zentry("exec", "plain", "sh", "-c", "uname -n >/dev/null; cat /etc/passwd /proc/meminfo >/dev/null").returncode == 0
        assert zentry("--strace", "run", "--detach", "--bundle", bundle, "traced").returncode == 0
        assert wait_for(lambda: status_of(zentry, "traced") == "running")
        assert zentry("exec", "traced", "cat", "/etc/group").returncode == 0
        out, _ = tap.stop(grace=1.0)
    finally:
        tap.kill()
        reaped = [delete_and_reap(zentry, cid) for cid in ("plain", "traced")]
    evs = [e["body"] | {"cid": e["topic"].split(".")[0]} for e in events_of(out)]
    plain = [e for e in evs if e["cid"] == "plain"]
    assert any(e["syscall"] == "uname" for e in plain), plain
    assert not [e for e in plain if e["syscall"] in ("open", "openat", "openat2", "creat")], plain
    traced = [e["args"][1] for e in evs if e["cid"] == "traced" and e["syscall"] == "openat"]
    assert "/etc/group" in traced, traced
    assert all(reaped)


FAIL_CLOSED = """
import os, signal, tempfile
from zentry.sentry import views
from zentry.sentry.abi import libc
from zentry.sentry.kernel import ContainerView

libc.unshare(libc.CLONE_NEWNS)
libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
target = tempfile.NamedTemporaryFile(prefix="zentry-view-target")
view = ContainerView("fc", "h", memory_limit_bytes=256 << 20)
dev = views.open_device()
server = []

def serve():  # the server in a process of its own, as the sandbox is the container's
    pid = os.fork()
    if pid == 0:
        views.Server(dev, view)._run()
        os._exit(0)
    server.append(pid)

views.mount_views(dev, {"meminfo": target.name}, serve)
os.close(dev)
with open(target.name) as f:
    print(f.readline().split()[1])
os.kill(server[0], signal.SIGKILL)
os.waitpid(server[0], 0)
try:
    with open(target.name) as f:
        print("read", f.read()[:20])
except OSError as err:
    print("error", err.errno)
"""


def test_the_views_fail_closed_when_their_server_dies():
    r = subprocess.run([sys.executable, "-P", "-c", textwrap.dedent(FAIL_CLOSED)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    import errno

    assert r.stdout.split("\n")[:2] == [str(256 << 10), f"error {errno.ENOTCONN}"], r.stdout


TIME_NS = """
import os, time
from zentry.sentry import views

pid = os.fork()
if pid == 0:  # the intermediate
    views.enter_time_namespace()
    init = os.fork()
    if init == 0:
        time.sleep(0.3)
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
        print(up, start)
        os._exit(0)
    os.waitpid(init, 0)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_time_namespace_starts_uptime_and_start_times_together():
    # the function the intermediate calls, on its own
    r = subprocess.run([sys.executable, "-P", "-c", TIME_NS], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    up, start = (float(v) for v in r.stdout.split())
    with open("/proc/uptime") as f:
        host_up = float(f.read().split()[0])
    assert up < 10 < host_up  # counts from the namespace's start
    assert 0 <= start <= up  # and so does the process's start time: ps's elapsed = up - start >= 0


#: procps ps (the host's, its libraries as PY_MOUNTS binds them): elapsed = uptime - start time
PS_MOUNTS = PY_MOUNTS + [{"destination": "/procps-ps", "type": "bind", "source": "/usr/bin/ps", "options": ["bind", "ro"]}]
CLOCKS = ("cut -d' ' -f1 /proc/uptime; /procps-ps -o etimes= -C sleep | head -1 | tr -d ' ';"
          " uptime | grep -o 'up [^,]*'; readlink /proc/self/ns/time")


def test_uptime_and_ps_elapsed_times_count_from_the_containers_start(zentry, busybox_bundle, tmp_path):
    """The container's time namespace: /proc/uptime, sysinfo (busybox uptime) and the
    start times ps subtracts from them agree, in the kernel; an exec'd process shares
    the clock. Under runc all count from the host's boot (consistent too, but large)."""
    bundle = with_mounts(busybox_bundle(["sh", "-c", "sleep 30 & sleep 2; " + CLOCKS]), PS_MOUNTS)
    z = zentry("run", "--bundle", bundle, "tm1")
    r = runc_run(bundle, "tm1", tmp_path)
    assert z.returncode == 0 and r.returncode == 0, (z.stderr, r.stderr)
    (zup, zetime, zsys, zns), (rup, retime, rsys, rns) = z.stdout.split("\n")[:4], r.stdout.split("\n")[:4]
    assert float(zup) < 60 < float(rup), (z.stdout, r.stdout)
    # ps: elapsed = uptime - start time; a process started after the container is younger than its uptime
    assert 1 <= int(zetime) <= float(zup) + 1, (z.stdout, r.stdout)
    assert 1 <= int(retime) < 60, r.stdout
    # busybox uptime (sysinfo, which the sentry answers): minutes since the container's start
    assert re.fullmatch(r"up +\d+ min", zsys), (zsys, rsys)
    assert zns != rns == os.readlink("/proc/self/ns/time")
    # an exec'd process joins the container's time namespace
    bundle = busybox_bundle(["sleep", "30"])
    assert zentry("run", "--detach", "--bundle", bundle, "tm2").returncode == 0
    try:
        r = zentry("exec", "tm2", "sh", "-c", "cut -d' ' -f1 /proc/uptime; readlink /proc/self/ns/time; readlink /proc/1/ns/time")
        assert r.returncode == 0, r.stderr
        up, mine, init = r.stdout.split()
        assert float(up) < 60 and mine == init != os.readlink("/proc/self/ns/time"), r.stdout
    finally:
        zentry("delete", "-f", "tm2")
