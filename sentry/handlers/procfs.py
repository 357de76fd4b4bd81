"""The views the sentry makes itself: /proc and /sys files as the container's limits see them.

Inside a container /proc and /sys are the kernel's, and these files describe
the host: its memory, every CPU and its load. What programs size
themselves from (glibc's ``get_nprocs`` reads ``/sys/devices/system/cpu/online``,
``free`` reads ``/proc/meminfo``, JVMs and Node read ``/proc/cpuinfo`` and
``/proc/stat``) is rendered here from the container's own limits
(``ContainerView``): memory from its memory limit and usage, CPUs from its
cpuset cut to its CPU quota, and no host pid. (Uptime needs no view: the
container has a time namespace whose boot clock starts with it.)
``sentry.views`` serves them as files of a FUSE filesystem bound over
``VIEWS``' paths in the container's mount namespace, rendered at each open.
"""

from __future__ import annotations

import math
import os

#: container path -> renderer name (also the file's name in the views' filesystem)
VIEWS = {
    b"/proc/meminfo": "meminfo",
    b"/proc/cpuinfo": "cpuinfo",
    b"/proc/stat": "stat",
    b"/proc/loadavg": "loadavg",
    b"/sys/devices/system/cpu/online": "cpu_online",
}


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):  # procfs text comes a page or more at a time
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


def parse_cpulist(text: str) -> list[int]:
    """``0-2,5`` -> [0, 1, 2, 5] (the cpuset.cpus format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(cpus))


def visible_cpus(view) -> list[int]:
    """The host CPU numbers the container is shown: its cpuset, cut to its CPU quota."""
    host = sorted(os.sched_getaffinity(0)) or [0]
    cpus = [c for c in parse_cpulist(view.cpuset) if c in host] if view.cpuset else host
    cpus = cpus or host
    if view.cpu_quota_us and view.cpu_quota_us > 0 and view.cpu_period_us:
        cpus = cpus[: max(1, math.ceil(view.cpu_quota_us / view.cpu_period_us))]
    return cpus


def memory_total(view) -> int:
    """Bytes of RAM the container is shown: the smaller of its limit and the host's."""
    host = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if view.memory_limit_bytes and 0 < view.memory_limit_bytes < host:
        return view.memory_limit_bytes
    return host


#: meminfo keys that describe the host's memory, not the container's
_HOST_ONLY = frozenset({"SwapTotal", "SwapFree", "SwapCached", "Buffers", "Cached", "Shmem", "SReclaimable",
                        "Active(file)", "Inactive(file)"})


def meminfo(view) -> bytes:
    total_kb = memory_total(view) // 1024
    limited = total_kb * 1024 < os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    used_kb = (view.memory_usage_bytes() // 1024) if (limited and view.memory_usage_bytes) else None
    out = []
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if key == "MemTotal":
            line = f"MemTotal:       {total_kb:>8} kB"
        elif limited and key in ("MemFree", "MemAvailable") and fields:
            value = int(fields[0])
            if used_kb is not None:
                value = min(value, max(0, total_kb - used_kb))
            line = f"{key + ':':<16}{min(value, total_kb):>8} kB"
        elif limited and key in _HOST_ONLY:
            # Host page cache and swap are not the container's: shown as 0, so
            # that used = total - free - buffers - cache stays within the limit.
            line = f"{key + ':':<16}{0:>8} kB"
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def cpuinfo(view) -> bytes:
    cpus = visible_cpus(view)
    blocks = {}
    for block in _read("/proc/cpuinfo").strip().split("\n\n"):
        first = block.split("\n", 1)[0]
        if first.startswith("processor"):
            blocks[int(first.split(":")[1])] = block
    out = []
    for i, cpu in enumerate(cpus):
        block = blocks.get(cpu) or next(iter(blocks.values()), "processor\t: 0")
        lines = block.split("\n")
        lines[0] = f"processor\t: {i}"
        lines = [f"siblings\t: {len(cpus)}" if l.startswith("siblings") else f"cpu cores\t: {len(cpus)}" if l.startswith("cpu cores") else l for l in lines]
        out.append("\n".join(lines))
    return ("\n\n".join(out) + "\n\n").encode()


def stat(view) -> bytes:
    cpus = visible_cpus(view)
    per = {}
    rest = []
    total = None
    for line in _read("/proc/stat").splitlines():
        if line.startswith("cpu "):
            total = line
        elif line.startswith("cpu"):
            n, _, vals = line.partition(" ")
            per[int(n[3:])] = vals
        else:
            rest.append(line)
    lines = []
    sums = None
    for cpu in cpus:
        vals = [int(v) for v in per.get(cpu, "0 0 0 0 0 0 0 0 0 0").split()]
        sums = vals if sums is None else [a + b for a, b in zip(sums, vals)]
    lines.append("cpu  " + " ".join(str(v) for v in sums) if sums else (total or "cpu  0"))
    for i, cpu in enumerate(cpus):
        lines.append(f"cpu{i} {per.get(cpu, '0 0 0 0 0 0 0 0 0 0')}")
    return ("\n".join(lines + rest) + "\n").encode()


def _container_pids(view) -> list[int]:
    """The pids of the container's processes as its own pid namespace numbers them (its procfs)."""
    if not view.init_pid:
        return []
    try:
        return sorted(int(n) for n in os.listdir(f"/proc/{view.init_pid}/root/proc") if n.isdigit())
    except OSError:
        return []


def loadavg(view) -> bytes:
    """The host's three load averages (the kernel keeps no per-container ones); the
    runnable/total and last-pid fields from the container's own processes, never a host pid."""
    fields = _read("/proc/loadavg").split()
    pids = _container_pids(view)
    total = max(1, len(pids))
    return f"{fields[0]} {fields[1]} {fields[2]} 1/{total} {pids[-1] if pids else 1}\n".encode()


def cpu_online(view) -> bytes:
    """``0-N``: as many CPUs as the container is shown, numbered from 0 as in its cpuinfo and stat."""
    n = len(visible_cpus(view))
    return (b"0\n" if n == 1 else f"0-{n - 1}\n".encode())


RENDERERS = {"meminfo": meminfo, "cpuinfo": cpuinfo, "stat": stat, "loadavg": loadavg, "cpu_online": cpu_online}


def render(path: bytes, view) -> bytes | None:
    """The view's content for a container path, or None when the path is not a view."""
    name = VIEWS.get(path)
    return RENDERERS[name](view) if name else None
