"""A pooled sandbox sees what a zentry container of the same bundle and limits sees:
the /proc and /sys views rendered from its own cgroup (its template's FUSE
server renders for the caller's cgroup), and a time namespace of its own whose
boot clock starts with it. Each compared in the same test with a zentry
container (``zentry run -d``) of the same bundle and limits, and with the host."""

from __future__ import annotations

import json
import os

import psutil
import pytest

from helpers.pool import templates
from test_pool import client_of, make_agent  # noqa: F401  (fixtures)
from test_views import PS_MOUNTS, host_meminfo_total, with_mounts

pytestmark = pytest.mark.root

#: nproc (sched_getaffinity), online CPUs, MemTotal (kB), cpuinfo's and /proc/stat's CPUs, free's total
#: (sysinfo, which the sentry answers), the views' binds (the spawner binds the template's again)
READERS = ("nproc; cat /sys/devices/system/cpu/online; grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2;"
           " grep -c ^processor /proc/cpuinfo; grep -c '^cpu[0-9]' /proc/stat; free | grep Mem: | tr -s ' ' | cut -d' ' -f2;"
           " grep -c zentry-views /proc/self/mountinfo")


def _limits(memory: int, cpus: int | None) -> dict:
    resources = {"memory": {"limit": memory}}
    if cpus:
        resources["cpu"] = {"quota": cpus * 100_000, "period": 100_000}
    return {"resources": resources}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to tell a 1-CPU limit from the host")
def test_sandboxes_see_their_own_limits_as_a_zentry_container_does(make_agent, client_of, zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "1000000"])
    agent = make_agent({"small": {"bundle": str(bundle), "warm": 1, "max": 2, "memory": "48m", "cpus": 1},
                        "big": {"bundle": str(bundle), "warm": 1, "max": 2, "memory": "96m"}}).start()
    containers = {"zsmall": _limits(48 << 20, 1), "zbig": _limits(96 << 20, None)}
    try:
        seen = {}
        for cid, linux in containers.items():
            assert zentry("run", "-d", "--bundle", busybox_bundle(["sleep", "1000000"], linux=linux), cid).returncode == 0
            r = zentry("exec", cid, "sh", "-c", READERS)
            assert r.returncode == 0, r.stderr
            seen[cid] = r.stdout.split()
        client = client_of(agent.endpoint)
        with client.claim("small") as small, client.claim("big") as big:
            ours = {name: sb.exec(["sh", "-c", READERS]).stdout.decode().split() for name, sb in (("small", small), ("big", big))}
            # a second look is served from the views' cache of the sandbox's limits: the same
            assert small.exec(["sh", "-c", READERS]).stdout.decode().split() == ours["small"]
    finally:
        for cid in containers:
            zentry("delete", "-f", cid)
    n = len(os.sched_getaffinity(0))
    host = [str(n), f"0-{n - 1}", host_meminfo_total(), str(n), str(n)]
    assert ours["small"] == seen["zsmall"], (ours, seen)
    assert ours["big"] == seen["zbig"], (ours, seen)
    # the limits, not the host: 1 CPU's quota, 48 MiB (nproc is the cpuset's, the kernel's answer in both)
    assert ours["small"] == [str(n), "0", str(48 << 10), "1", "1", str(48 << 10), "5"], ours
    assert ours["big"] == [str(n), f"0-{n - 1}", str(96 << 10), str(n), str(n), str(96 << 10), "5"], ours
    assert ours["small"][1:5] != host[1:5] and ours["big"][2] != host[2]


#: the boot clock, procps ps's elapsed seconds of PID 1 (uptime - its start time), the namespace
CLOCKS = "cut -d' ' -f1 /proc/uptime; /procps-ps -o etimes= -p 1 | tr -d ' '; readlink /proc/self/ns/time"


def test_each_sandbox_has_a_time_namespace_starting_with_it(make_agent, client_of, zentry, busybox_bundle, tmp_path):
    import time

    bundle = with_mounts(busybox_bundle(["sleep", "1000000"]), PS_MOUNTS)
    agent = make_agent({"bb": {"bundle": str(bundle), "warm": 1, "max": 3}}).start()
    (_tid, spawner), = templates(agent.root).items()
    assert zentry("run", "-d", "--bundle", with_mounts(busybox_bundle(["sleep", "1000000"]), PS_MOUNTS), "tz").returncode == 0
    try:
        time.sleep(4)
        client = client_of(agent.endpoint)
        first = client.claim("bb")  # warm for 4 s
        old_up, old_etime, old_ns = first.exec(["sh", "-c", CLOCKS]).stdout.decode().split()
        first.release()
        agent.wait_warm(60)
        with client.claim("bb") as fresh, client.claim("bb") as other:  # started after the release, and now
            up, etime, ns = fresh.exec(["sh", "-c", CLOCKS]).stdout.decode().split()
            time.sleep(1.5)
            later = float(fresh.exec(["cut", "-d ", "-f1", "/proc/uptime"]).stdout)
            other_ns = other.exec(["readlink", "/proc/self/ns/time"]).stdout.decode().strip()
            r = zentry("exec", "tz", "sh", "-c", CLOCKS)
            assert r.returncode == 0, r.stderr
            z_up, z_etime, z_ns = r.stdout.split()
            template_ns = os.readlink(f"/proc/{spawner}/ns/time")
        template_age = time.time() - psutil.Process(spawner).create_time()
    finally:
        zentry("delete", "-f", "tz")
    # the clock counts from the sandbox's start: younger than the template (whose clock it shared
    # before), and it runs
    assert float(up) < template_age - 3, (up, template_age)
    assert float(old_up) > float(up) and 1.0 <= later - float(up) < 10, (old_up, up, later)
    # and as in a zentry container, the init started when the clock was at 1-2 s: ps's elapsed
    # time of PID 1 is the clock minus that
    for clock, elapsed in ((up, etime), (old_up, old_etime), (z_up, z_etime)):
        assert 0 <= float(clock) - int(elapsed) < 3.5, (up, etime, old_up, old_etime, z_up, z_etime)
    # each sandbox's own: not the host's, the template's, another sandbox's or the container's
    # (of those alive at once: a namespace's number is reused once it is gone)
    names = [ns, other_ns, z_ns, template_ns, os.readlink("/proc/self/ns/time")]
    assert len(set(names)) == 5, names
