"""Capabilities: names, the bounding set, and capset(2) (<linux/capability.h>)."""

from __future__ import annotations


from zentry.bus.errors import ConfigError
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

def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values())


def mask(names: list[str] | None) -> int:
    bits = 0
    for name in names or []:
        number = CAPS.get(name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper())
        if number is None:
            raise ConfigError(f"unknown capability {name!r}")
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
