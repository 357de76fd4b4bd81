"""Emulated syscalls: answered from the sentry's state, never run on the host (uname, sysinfo)."""

from __future__ import annotations

import ctypes
import os

from ..abi.seccomp import SYSINFO, UTSNAME, Sysinfo
from .procfs import memory_total

#: the version string uname(2) reports inside a sandbox
VERSION = b"#1 zentry sentry"

_HOST = os.uname()
_libc_sysinfo = ctypes.CDLL(None, use_errno=True).sysinfo


def utsname_bytes(view) -> bytes:
    """struct new_utsname for a container: host release, zentry version, container names."""
    return UTSNAME.pack(
        b"Linux",
        view.hostname.encode()[:64],
        _HOST.release.encode()[:64],
        VERSION,
        _HOST.machine.encode()[:64],
        (view.domainname or "(none)").encode()[:64],
    )


def uname(s, lst, nid, tid, args):
    """uname(struct utsname *buf)."""
    data = lst.utsname
    s.decoded = (hex(args[0]),)
    s.write_tracee(lst, nid, tid, args[0], data)
    return 0, 0


def boottime_offset(pid: int | None) -> int:
    """Seconds the boot clock of ``pid``'s time namespace is shifted by (0 for the host's)."""
    if not pid:
        return 0
    try:
        with open(f"/proc/{pid}/timens_offsets") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in ("boottime", "7"):  # 7: CLOCK_BOOTTIME
                    return int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def sysinfo_bytes(view) -> bytes:
    """As the kernel answers the container: its memory limit, and the uptime of
    its time namespace (the sentry runs in the host's)."""
    info = Sysinfo()
    if _libc_sysinfo(ctypes.byref(info)) != 0:
        raise OSError(ctypes.get_errno(), "sysinfo")
    unit = info.mem_unit or 1
    total = memory_total(view) // unit
    free = min(info.freeram, total)
    if view.memory_usage_bytes and total < info.totalram:
        free = min(free, max(0, total - view.memory_usage_bytes() // unit))
    limited = total < info.totalram
    return SYSINFO.pack(
        max(0, info.uptime + boottime_offset(view.init_pid)), *info.loads, total, free, 0 if limited else info.sharedram, 0 if limited else info.bufferram,
        0 if limited else info.totalswap, 0 if limited else info.freeswap,
        info.procs, 0, 0, 0, unit,
    )


def sysinfo(s, lst, nid, tid, args):
    """sysinfo(struct sysinfo *info)."""
    s.decoded = (hex(args[0]),)
    s.write_tracee(lst, nid, tid, args[0], sysinfo_bytes(lst.view))
    return 0, 0

