"""Kernel ABI of seccomp user notification and of the structs the sentry emulates.

Each struct is a ctypes definition whose docstring quotes the C definition and
names its header; ``tests/unit/test_sentry_abi.py`` checks the sizes against
the kernel's (``seccomp_notif`` is 80 bytes on x86_64). The hot loop does not
use these classes: it packs the same layouts with the precompiled
``struct.Struct`` objects below (``NOTIF``, ``RESP``, ``ADDFD``), which are
checked against the ctypes sizes too. Constants are grouped by header.
"""

from __future__ import annotations

import ctypes
import struct
from zentry.sentry.abi import libc

# --- <linux/seccomp.h> ----------------------------------------------------------
SECCOMP_SET_MODE_STRICT = 0
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_GET_NOTIF_SIZES = 3

SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1 << 2
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5

#: OCI ``linux.seccomp.flags`` names -> bits
FILTER_FLAGS: dict[str, int] = {
    "SECCOMP_FILTER_FLAG_TSYNC": SECCOMP_FILTER_FLAG_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": SECCOMP_FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
}

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000

SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1 << 0
SECCOMP_ADDFD_FLAG_SETFD = 1 << 0
SECCOMP_ADDFD_FLAG_SEND = 1 << 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1 << 0

# ioctl numbers: _IOWR('!', 0, seccomp_notif), _IOWR('!', 1, seccomp_notif_resp),
# _IOW('!', 2, __u64), _IOW('!', 3, seccomp_notif_addfd), _IOW('!', 4, __u64)
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104

# --- <linux/audit.h> ------------------------------------------------------------
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

# --- <linux/openat2.h> ----------------------------------------------------------
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# --- <linux/filter.h> -----------------------------------------------------------
BPF_MAXINSNS = 4096


class SeccompData(ctypes.Structure):
    """<linux/seccomp.h>::

        struct seccomp_data {
            int nr;
            __u32 arch;
            __u64 instruction_pointer;
            __u64 args[6];
        };
    """

    _fields_ = [
        ("nr", ctypes.c_int32),
        ("arch", ctypes.c_uint32),
        ("instruction_pointer", ctypes.c_uint64),
        ("args", ctypes.c_uint64 * 6),
    ]


class SeccompNotif(ctypes.Structure):
    """<linux/seccomp.h> (80 bytes on x86_64)::

        struct seccomp_notif {
            __u64 id;
            __u32 pid;
            __u32 flags;
            struct seccomp_data data;
        };
    """

    _fields_ = [("id", ctypes.c_uint64), ("pid", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("data", SeccompData)]


class SeccompNotifResp(ctypes.Structure):
    """<linux/seccomp.h> (24 bytes)::

        struct seccomp_notif_resp {
            __u64 id;
            __s64 val;
            __s32 error;
            __u32 flags;
        };
    """

    _fields_ = [("id", ctypes.c_uint64), ("val", ctypes.c_int64), ("error", ctypes.c_int32), ("flags", ctypes.c_uint32)]


class SeccompNotifAddfd(ctypes.Structure):
    """<linux/seccomp.h> (24 bytes)::

        struct seccomp_notif_addfd {
            __u64 id;
            __u32 flags;
            __u32 srcfd;
            __u32 newfd;
            __u32 newfd_flags;
        };
    """

    _fields_ = [
        ("id", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("srcfd", ctypes.c_uint32),
        ("newfd", ctypes.c_uint32),
        ("newfd_flags", ctypes.c_uint32),
    ]


class SeccompNotifSizes(ctypes.Structure):
    """<linux/seccomp.h>::

        struct seccomp_notif_sizes {
            __u16 seccomp_notif;
            __u16 seccomp_notif_resp;
            __u16 seccomp_data;
        };
    """

    _fields_ = [("seccomp_notif", ctypes.c_uint16), ("seccomp_notif_resp", ctypes.c_uint16), ("seccomp_data", ctypes.c_uint16)]


class SockFilter(ctypes.Structure):
    """<linux/filter.h> (8 bytes)::

        struct sock_filter {
            __u16 code;
            __u8  jt;
            __u8  jf;
            __u32 k;
        };
    """

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    """<linux/filter.h> (16 bytes on x86_64)::

        struct sock_fprog {
            unsigned short len;
            struct sock_filter *filter;
        };
    """

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


# struct open_how lives with openat2's binding in libc.py; re-exported here
# beside the other structs the sentry decodes.
OpenHow = libc.OpenHow


_UTS_LEN = 65  # __NEW_UTS_LEN + 1


class Utsname(ctypes.Structure):
    """<linux/utsname.h> (390 bytes)::

        struct new_utsname {
            char sysname[__NEW_UTS_LEN + 1];
            char nodename[__NEW_UTS_LEN + 1];
            char release[__NEW_UTS_LEN + 1];
            char version[__NEW_UTS_LEN + 1];
            char machine[__NEW_UTS_LEN + 1];
            char domainname[__NEW_UTS_LEN + 1];
        };
    """

    _fields_ = [(f, ctypes.c_char * _UTS_LEN) for f in ("sysname", "nodename", "release", "version", "machine", "domainname")]


class Sysinfo(ctypes.Structure):
    """<linux/sysinfo.h> (112 bytes on x86_64)::

        struct sysinfo {
            __kernel_long_t uptime;
            __kernel_ulong_t loads[3];
            __kernel_ulong_t totalram;
            __kernel_ulong_t freeram;
            __kernel_ulong_t sharedram;
            __kernel_ulong_t bufferram;
            __kernel_ulong_t totalswap;
            __kernel_ulong_t freeswap;
            __u16 procs;
            __u16 pad;
            __kernel_ulong_t totalhigh;
            __kernel_ulong_t freehigh;
            __u32 mem_unit;
            char _f[20-2*sizeof(__kernel_ulong_t)-sizeof(__u32)];
        };
    """

    _fields_ = [
        ("uptime", ctypes.c_long),
        ("loads", ctypes.c_ulong * 3),
        ("totalram", ctypes.c_ulong),
        ("freeram", ctypes.c_ulong),
        ("sharedram", ctypes.c_ulong),
        ("bufferram", ctypes.c_ulong),
        ("totalswap", ctypes.c_ulong),
        ("freeswap", ctypes.c_ulong),
        ("procs", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("totalhigh", ctypes.c_ulong),
        ("freehigh", ctypes.c_ulong),
        ("mem_unit", ctypes.c_uint32),
    ]


class Iovec(ctypes.Structure):
    """<bits/types/struct_iovec.h>: ``struct iovec { void *iov_base; size_t iov_len; };``"""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# --- the same layouts as struct formats, for the hot loop -------------------------
#: seccomp_notif: id, pid, flags, nr, arch, ip, args[6]
NOTIF = struct.Struct("=QIIiIQ6Q")
#: seccomp_notif_resp: id, val, error, flags
RESP = struct.Struct("=QqiI")
#: seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags
ADDFD = struct.Struct("=QIIII")
#: open_how: flags, mode, resolve
OPEN_HOW = struct.Struct("=QQQ")
#: new_utsname: six NUL-padded 65-byte strings
UTSNAME = struct.Struct("=65s65s65s65s65s65s")
#: sysinfo (with the 4 bytes of padding after ``pad`` and at the end spelled out)
SYSINFO = struct.Struct("=q3Q6QHH4x2QI4x")


def notif_id_valid(listener_fd: int, nid: int, buf: bytearray | None = None) -> bool:
    """SECCOMP_IOCTL_NOTIF_ID_VALID: whether notification ``nid`` is still pending
    (its thread alive, not interrupted). ``buf``: 8 bytes to reuse (the hot path's)."""
    import errno
    import fcntl

    if buf is None:
        buf = bytearray(8)
    buf[:] = nid.to_bytes(8, "little")
    try:
        fcntl.ioctl(listener_fd, SECCOMP_IOCTL_NOTIF_ID_VALID, buf, True)
        return True
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise
