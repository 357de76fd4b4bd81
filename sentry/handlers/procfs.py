"""Synthesized /proc files: meminfo, cpuinfo, stat, loadavg as the container's cgroup limits see them.

Inside a container /proc is the container's own procfs mount, but these four
files describe the host. The open handler (``fs``) asks ``render`` when the
path a tracee opens is one of ``SYNTHESIZED`` and hands it a read-only fd to a
memfd holding the text.
"""

from __future__ import annotations

import math
import os
import re

#: container path -> renderer name
SYNTHESIZED = {b"/proc/meminfo": "meminfo", b"/proc/cpuinfo": "cpuinfo", b"/proc/stat": "stat", b"/proc/loadavg": "loadavg"}


def _read(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


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


def loadavg(view) -> bytes:
    return _read("/proc/loadavg").encode()


RENDERERS = {"meminfo": meminfo, "cpuinfo": cpuinfo, "stat": stat, "loadavg": loadavg}


def render(path: bytes, view) -> bytes | None:
    """The synthesized content for a container path, or None when it is not synthesized."""
    name = SYNTHESIZED.get(path)
    return RENDERERS[name](view) if name else None


# --- /proc/PID/status of a tracee in a user namespace ------------------------------
#: /proc/N/status and /proc/N/task/M/status, as paths inside the container
STATUS_PATH = re.compile(rb"^/proc/\d+(?:/task/\d+)?/status$")
_ID_LINES = {b"Uid:": "uid", b"Gid:": "gid", b"Groups:": "gid"}
_OVERFLOW_ID = 65534


def _inverse_map(tid: int, kind: str) -> list[tuple[int, int, int]]:
    """(host start, container start, count) of the tracee's uid_map/gid_map, read from outside."""
    with open(f"/proc/{tid}/{kind}_map", "rb") as f:
        return [(int(o), int(i), int(n)) for i, o, n in (line.split() for line in f.read().splitlines() if line.strip())]


def status_for_tracee(fd: int, tid: int) -> int | None:
    """A memfd with the status text of ``fd`` as the tracee would read it, or None when it reads the same.

    The kernel prints the Uid/Gid/Groups of /proc/N/status in the user
    namespace of whoever *opened* the file: the sentry, which lives in the
    initial one. A tracee in a user namespace of its own would see host ids
    (100000 for its root); they are translated to its ids here (unmapped:
    the overflow id, as the kernel shows them). The text is a snapshot taken
    at open.
    """
    try:
        if os.readlink(f"/proc/{tid}/ns/user") == os.readlink("/proc/self/ns/user"):
            return None
        maps = {kind: _inverse_map(tid, kind) for kind in ("uid", "gid")}
        data = os.pread(fd, 1 << 16, 0)
    except OSError:
        return None

    def inside(kind: str, host_id: int) -> int:
        for outside, start, count in maps[kind]:
            if outside <= host_id < outside + count:
                return start + host_id - outside
        return _OVERFLOW_ID

    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        key, _, rest = line.partition(b"\t")
        kind = _ID_LINES.get(key)
        if kind is not None:
            # only the numbers change: the kernel's separators are kept as they are
            lines[n] = key + b"\t" + re.sub(rb"\d+", lambda m, kind=kind: b"%d" % inside(kind, int(m.group())), rest)
    mfd = os.memfd_create("zentry-proc-status", os.MFD_CLOEXEC)
    try:
        os.write(mfd, b"\n".join(lines))
        return os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(mfd)
