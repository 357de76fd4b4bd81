"""What podman learns from the pid the runtime reports (`--pid-file`), and the
defaults of the system containers.conf, checked for runc and the runtime
under test in the same test: `podman cp` enters that process's mount
namespace, `podman top` its pid namespace, `podman stats` reads its cgroup,
`podman inspect` shows it as .State.Pid; podman's default sysctls and
capabilities reach the container."""
from __future__ import annotations

import json
import os
import uuid

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.root]

# A lone `sleep` in its own cgroup uses well under this (runc: ~0.6 MB); a
# host-side supervisor (tens of MB, a dozen pids) is far above it.
SMALL_MEMORY = 5 * 1024 * 1024


def start_box(label, podman, rootfs, name="box"):
    res = podman("run", "-d", "--name", name, "--network", "none", "--rootfs", str(rootfs),
                 "/bin/sleep", "1000")
    assert res.returncode == 0, f"{label}: {res.stderr}"
    return name


def test_default_sysctls_and_capabilities_apply(podmen):
    # podman's containers.conf sets net.ipv4.ping_group_range=0 0 (the host
    # has its own value, untouched) and its default capability set.
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        host_before = f.read()
    seen = {}
    for label, podman, rootfs in podmen:
        res = podman("run", "--rm", "--network", "none", "--rootfs", str(rootfs), "/bin/sh", "-c",
                     "cat /proc/sys/net/ipv4/ping_group_range; grep CapEff /proc/self/status")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        sysctl, caps = res.stdout.splitlines()
        assert sysctl.split() == ["0", "0"], f"{label}: {res.stdout!r}"
        seen[label] = caps
    runc_caps = seen.pop("runc")
    for label, caps in seen.items():
        assert caps == runc_caps, f"{label}: {caps} (runc: {runc_caps})"
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        assert f.read() == host_before


def test_cp_in_and_out_is_the_container(podmen, tmp_path):
    name = f"zentry-e2e-cp-{uuid.uuid4().hex[:12]}"
    host_path = os.path.join("/", name)
    with open("/etc/hostname") as f:
        host_hostname = f.read()
    for label, podman, rootfs in podmen:
        box = start_box(label, podman, rootfs)
        src = tmp_path / f"in-{label[:4]}"
        src.write_text(f"copied in for {label}\n")
        try:
            res = podman("cp", str(src), f"{box}:/{name}")
            landed_on_host = os.path.lexists(host_path)
        finally:
            if os.path.lexists(host_path):  # a wrong runtime wrote the host's /
                os.unlink(host_path)
        assert res.returncode == 0, f"{label}: {res.stderr}"
        assert not landed_on_host, f"{label}: podman cp wrote {host_path} on the host"
        res = podman("exec", box, "cat", f"/{name}")
        assert (res.returncode, res.stdout) == (0, src.read_text()), f"{label}: {res}"

        out = tmp_path / f"hostname-{label[:4]}"
        res = podman("cp", f"{box}:/etc/hostname", str(out))
        assert res.returncode == 0, f"{label}: {res.stderr}"
        inside = podman("exec", box, "cat", "/etc/hostname").stdout
        assert out.read_text() == inside, f"{label}: podman cp read {out.read_text()!r}"
        assert inside != host_hostname, f"{label}: the container shows the host's hostname"


def test_top_lists_only_the_container(podmen):
    for label, podman, rootfs in podmen:
        box = start_box(label, podman, rootfs)
        res = podman("top", box, "pid", "args")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        rows = [line.split(None, 1) for line in res.stdout.strip().splitlines()[1:]]
        commands = [row[1].strip() for row in rows]
        assert commands == ["/bin/sleep 1000"], \
            f"{label}: podman top shows {len(commands)} processes: {commands[:5]}"
        assert rows[0][0] == "1", f"{label}: the sleep is pid {rows[0][0]} in its namespace"


def test_stats_are_the_containers_own(podmen):
    for label, podman, rootfs in podmen:
        box = start_box(label, podman, rootfs)
        res = podman("stats", "--no-stream", "--format", "json", box)
        assert res.returncode == 0, f"{label}: {res.stderr}"
        (stats,) = json.loads(res.stdout)
        assert 1 <= int(stats["pids"]) <= 2, f"{label}: {stats}"
        usage = parse_size(stats["mem_usage"].split("/")[0])
        assert usage < SMALL_MEMORY, f"{label}: {stats['mem_usage']}"


def parse_size(text: str) -> float:
    """podman's human sizes ("577.5kB", "25.28GB", "0B") in bytes (SI units)."""
    text = text.strip()
    for unit, factor in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1)):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * factor
    raise ValueError(f"not a podman size: {text!r}")


def test_inspect_pid_is_inside_the_container(podmen):
    for label, podman, rootfs in podmen:
        box = start_box(label, podman, rootfs)
        cid = podman("inspect", "--format", "{{.Id}}", box).stdout.strip()
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", box).stdout.strip())
        assert pid > 0, label
        res = podman("exec", box, "sh", "-c", "readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        container_ns = res.stdout.split()
        pid_ns = [os.readlink(f"/proc/{pid}/ns/{ns}") for ns in ("mnt", "pid")]
        assert pid_ns == container_ns, f"{label}: .State.Pid {pid} is in {pid_ns}, the container in {container_ns}"
        with open(f"/proc/{pid}/cgroup") as f:
            cgroups = dict(line.rstrip("\n").split(":", 2)[1:] for line in f)
        for controller in ("memory", "pids", "cpu,cpuacct" if "cpu,cpuacct" in cgroups else "cpuacct"):
            assert cgroups[controller].endswith(f"/libpod-{cid}"), \
                f"{label}: .State.Pid {pid} is in {controller} cgroup {cgroups[controller]}"
