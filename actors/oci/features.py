"""The OCI "Features structure" that ``zentry features`` prints.

It says what zentry recognizes, independent of what this host offers
(features.md): versions, hooks, mount options, namespaces, capabilities,
cgroup managers, seccomp. The seccomp part comes from the sentry when that
module is installed (``zentry.sentry.oci.supported()``), so the document never
claims more than the filter compiler knows.
"""

from __future__ import annotations

import copy

from .config import HOOK_KINDS, NAMESPACE_TYPES, OCI_VERSION_MAX, OCI_VERSION_MIN

#: every capability of Linux 6.x, in kernel number order (<linux/capability.h>)
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]

# Mount flags of mount(2)/mount_setattr(2) and their recursive "r" forms;
# filesystem data options (mode=, size=...) are not listed, as features.md asks.
_FLAG_OPTIONS = [
    "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
    "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime",
    "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime",
    "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro",
    "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "silent",
    "slave", "strictatime", "suid", "symfollow", "sync", "unbindable",
]
_RECURSIVE_OPTIONS = [
    "ratime", "rdev", "rdiratime", "rexec", "rnoatime", "rnodev", "rnodiratime",
    "rnoexec", "rnorelatime", "rnostrictatime", "rnosuid", "rnosymfollow",
    "rrelatime", "rro", "rrw", "rstrictatime", "rsuid", "rsymfollow",
]
MOUNT_OPTIONS = sorted(set(_FLAG_OPTIONS + _RECURSIVE_OPTIONS + ["tmpcopyup"]))

# Used when the sentry's own description is not installed: what the OCI
# seccomp profile compiler accepts on x86_64, claiming no optional flags.
_FALLBACK_SECCOMP = {
    "enabled": True,
    "actions": [
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_LOG",
        "SCMP_ACT_TRAP",
    ],
    "operators": [
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_LE",
        "SCMP_CMP_LT",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_CMP_NE",
    ],
    "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
    "knownFlags": [],
    "supportedFlags": [],
}

#: config.json annotations that change how zentry places a container (pods)
UNSAFE_ANNOTATIONS = [
    "io.kubernetes.cri.container-type",
    "io.kubernetes.cri.sandbox-id",
    "io.kubernetes.cri-o.ContainerType",
    "io.kubernetes.cri-o.SandboxID",
]


def _version(v: tuple[int, int, int]) -> str:
    return ".".join(map(str, v))


def _zentry_version() -> str:
    from zentry.cmd import VERSION

    return VERSION

    try:
        return metadata.version("zentry")
    except metadata.PackageNotFoundError:
        return "unknown"


def seccomp_features() -> dict:
    """The seccomp section: the sentry's own answer, or the static fallback."""
    try:
        from zentry.sentry.oci import supported  # written alongside; may be absent
    except ImportError:
        return copy.deepcopy(_FALLBACK_SECCOMP)
    return dict(supported())


def features() -> dict:
    """The Features structure (features.md, features-linux.md) as a dict."""
    return {
        "ociVersionMin": _version(OCI_VERSION_MIN),
        "ociVersionMax": _version(OCI_VERSION_MAX),
        "hooks": list(HOOK_KINDS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": sorted(NAMESPACE_TYPES),
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": seccomp_features(),
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
            "netDevices": {"enabled": False},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            "io.zentry.version": _zentry_version(),
            "io.zentry.syscall-interception": "seccomp-user-notify",
        },
        "potentiallyUnsafeConfigAnnotations": list(UNSAFE_ANNOTATIONS),
    }
