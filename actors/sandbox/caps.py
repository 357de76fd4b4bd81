"""Capabilities: names, the bounding set, and capset(2) (<linux/capability.h>)."""

from __future__ import annotations

from functools import lru_cache

from zentry.sentry.abi import libc

#: CAP_* name -> number, <linux/capability.h>
CAPS: dict[str, int] = {
    name: i
    for i, name in enumerate(
        [
            "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
            "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
            "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
            "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
            "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
        ]
    )
}

@lru_cache(maxsize=1)
def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values())


def _number(name: str) -> int | None:
    """The capability's number if this kernel has it, else None."""
    upper = name.upper()
    number = CAPS.get(upper if upper.startswith("CAP_") else "CAP_" + upper)
    return number if number is not None and number <= last_cap() else None


def unknown(capabilities: dict | None) -> list[str]:
    """Names in process.capabilities that are unknown or that this kernel lacks."""
    out: list[str] = []
    for names in (capabilities or {}).values():
        for name in names or []:
            if _number(name) is None and name not in out:
                out.append(name)
    return out


def mask(names: list[str] | None) -> int:
    """The bit mask of ``names``; unknown or unavailable ones are ignored, as runc
    does (config.check_config warns about them at create)."""
    bits = 0
    for name in names or []:
        number = _number(name)
        if number is not None:
            bits |= 1 << number
    return bits


def drop_bounding(capabilities: dict | None) -> None:
    """Drop every capability not in process.capabilities.bounding.

    Needs CAP_SETPCAP in the effective set: call before leaving uid 0.
    """
    bounding = mask((capabilities or {}).get("bounding"))
    for number in range(last_cap() + 1):
        if not bounding & (1 << number):
            libc.prctl(libc.PR_CAPBSET_DROP, number)


def apply(capabilities: dict | None) -> None:
    """Set effective/permitted/inheritable (capset), then the ambient set.

    Call after setresuid with PR_SET_KEEPCAPS (the permitted set survives)
    and after :func:`drop_bounding`.
    """
    caps = capabilities or {}
    top = last_cap()
    eff, perm, inh = mask(caps.get("effective")), mask(caps.get("permitted")), mask(caps.get("inheritable"))
    libc.thread_capset(eff, perm, inh)  # the init is single-threaded: its one thread is the process
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    # The kernel admits an ambient capability only if it is both permitted and
    # inheritable; like runc, others in the list are skipped, not fatal.
    ambient = mask(caps.get("ambient")) & perm & inh
    for number in range(top + 1):
        if ambient & (1 << number):
            libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_RAISE, number)
