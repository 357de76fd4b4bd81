"""The starter config.json that ``zentry spec`` writes (as ``runc spec`` does).

Built from the meaning of each field in the OCI runtime spec: an interactive
shell in a read-only ``rootfs``, a private set of namespaces, the kernel
filesystems a Linux program expects, and the /proc and /sys entries that leak
or change host state hidden or made read-only.
"""

from __future__ import annotations

import copy
import os

#: the ociVersion zentry writes (the highest version it recognizes)
OCI_VERSION = "1.2.0"

#: the small capability set engines give by default to ``spec`` output
DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

# Files that expose host hardware, kernel memory or keys: hidden (a /dev/null
# or empty read-only tmpfs goes over them).
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
]

# Files that configure the host kernel when written: visible but read-only.
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=xterm",
]

_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        # gid=5 is the conventional "tty" group owning terminals.
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
]

_NAMESPACES = ["pid", "network", "ipc", "uts", "mount", "cgroup"]


def default_spec(args: list[str] | None = None, rootless: bool = False) -> dict:
    """A fresh config.json document; ``args`` replaces the default ``["sh"]``.

    ``rootless`` shapes it for an unprivileged caller: a user namespace that
    maps the caller's uid and gid to root, the host network (a new network
    namespace would need privileges), /sys bound from the host instead of a
    new sysfs (sysfs cannot be mounted without owning the network namespace),
    no cgroup mount or device cgroup rules (the caller cannot manage cgroups),
    and no ``gid=5`` on devpts (that group is not mapped).
    """
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        raise TypeError("args must be a list of strings")
    caps = list(DEFAULT_CAPABILITIES)
    spec: dict = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args else ["sh"],
            "env": list(_ENV),
            "cwd": "/",
            "capabilities": {
                "bounding": list(caps),
                "effective": list(caps),
                "permitted": list(caps),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "zentry",
        "mounts": copy.deepcopy(_MOUNTS),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in _NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }
    if rootless:
        _make_rootless(spec)
    return spec


def _make_rootless(spec: dict) -> None:
    linux = spec["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] not in ("network", "cgroup")]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
    linux.pop("resources", None)
    mounts = []
    for mount in spec["mounts"]:
        dest = mount["destination"]
        if dest == "/sys/fs/cgroup":
            continue
        if dest == "/sys":
            mount = {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            }
        elif dest == "/dev/pts":
            mount["options"] = [o for o in mount["options"] if not o.startswith("gid=")]
        mounts.append(mount)
    spec["mounts"] = mounts
