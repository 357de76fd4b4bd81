"""libc, loaded once: the raw Linux calls Python 3.11's os module lacks.

Every wrapper turns a -1 return into an OSError that names the call and its
arguments (pyroute2/psutil style), so a failure deep in container setup says
what was attempted: ``mount('proc', '/proc', 'proc', 0x0): [Errno 1] ...``.

Constants are grouped by the header that defines them.
"""

from __future__ import annotations

import ctypes
import os

# glibc's soname on every Linux zentry supports. ctypes.util.find_library
# would run `ldconfig -p` (a fork and exec, ~3 ms) on every CLI call.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

# --- <sched.h> / <linux/sched.h>: namespace clone flags ----------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

#: OCI namespace type -> (clone flag, /proc/PID/ns/<name>)
NAMESPACES: dict[str, tuple[int, str]] = {
    "mount": (CLONE_NEWNS, "mnt"),
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "user": (CLONE_NEWUSER, "user"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# --- <sys/mount.h> / <linux/mount.h> ----------------------------------------
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MS_LAZYTIME = 0x2000000

MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

# --- <linux/prctl.h> ---------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# --- <asm/unistd_64.h>: the few numbers called through syscall(2) here -------
SYS_pivot_root = 155
SYS_setns = 308
SYS_seccomp = 317
SYS_pidfd_open = 434
SYS_pidfd_send_signal = 424
SYS_openat2 = 437
SYS_close_range = 436
CLOSE_RANGE_CLOEXEC = 1 << 2
SYS_capset = 126
SYS_capget = 125


def _check(result: int, call: str, *args: object) -> int:
    if result == -1:
        err = ctypes.get_errno()
        shown = ", ".join(hex(a) if isinstance(a, int) and a > 9 else repr(a) for a in args)
        raise OSError(err, f"{call}({shown}): {os.strerror(err)}")
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return value if isinstance(value, bytes) else os.fsencode(value)


_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2)."""
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", source, target, fstype, flags, data)


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), "umount2", target, flags)


def unshare(flags: int) -> None:
    """unshare(2). Only correct in a single-threaded process (pitfall 9)."""
    _check(_libc.unshare(flags), "unshare", flags)


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2) on an open /proc/PID/ns/* (or pidfd)."""
    _check(_libc.syscall(SYS_setns, ctypes.c_int(fd), ctypes.c_int(nstype)), "setns", fd, nstype)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2)."""
    _check(_libc.syscall(SYS_pivot_root, _b(new_root), _b(put_old)), "pivot_root", new_root, put_old)


def sethostname(name: str) -> None:
    data = name.encode()
    _check(_libc.sethostname(data, len(data)), "sethostname", name)


def setdomainname(name: str) -> None:
    data = name.encode()
    _check(_libc.setdomainname(data, len(data)), "setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2)."""
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", option, arg2)


def pidfd_open(pid: int, flags: int = 0) -> int:
    """pidfd_open(2): a file descriptor that refers to a process."""
    return _check(_libc.syscall(SYS_pidfd_open, ctypes.c_int(pid), ctypes.c_uint(flags)), "pidfd_open", pid)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """pidfd_send_signal(2): signal the process a pidfd names (no pid reuse race)."""
    _check(
        _libc.syscall(SYS_pidfd_send_signal, ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0)),
        "pidfd_send_signal",
        pidfd,
        sig,
    )


def cloexec_from(first: int) -> None:
    """Mark every fd from ``first`` up close-on-exec (close_range(2), else one by
    one from /proc/self/fd): what a process must not pass to what it execs."""
    if _libc.syscall(SYS_close_range, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) == 0:
        return
    import fcntl

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            except OSError:
                pass  # the listing's own fd, gone already


def raw_syscall(number: int, *args: int | bytes | None) -> int:
    """syscall(2) with integer/pointer arguments; -1 becomes OSError."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc.syscall(ctypes.c_long(number), *cargs), f"syscall[{number}]", *args)


def libc() -> ctypes.CDLL:
    """The process-wide libc handle (for bindings that live next to their structs)."""
    return _libc


# --- additions for the gofer: openat2(2) and mount_setattr(2) ----------------
# <asm/unistd_64.h>
SYS_mount_setattr = 442

# <linux/fcntl.h>
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# <linux/openat2.h>: open_how.resolve bits
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20

# <linux/mount.h>: mount_attr.attr_set / attr_clr bits
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR__ATIME = 0x00000070
MOUNT_ATTR_RELATIME = 0x00000000
MOUNT_ATTR_NOATIME = 0x00000010
MOUNT_ATTR_STRICTATIME = 0x00000020
MOUNT_ATTR_NODIRATIME = 0x00000080
MOUNT_ATTR_NOSYMFOLLOW = 0x00200000

# <sys/mount.h>: flags missing above
MS_I_VERSION = 1 << 23


class OpenHow(ctypes.Structure):
    """``struct open_how`` from <linux/openat2.h> (24 bytes)::

        struct open_how {
            __u64 flags;
            __u64 mode;
            __u64 resolve;
        };
    """

    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class MountAttr(ctypes.Structure):
    """``struct mount_attr`` from <linux/mount.h> (MOUNT_ATTR_SIZE_VER0, 32 bytes)::

        struct mount_attr {
            __u64 attr_set;
            __u64 attr_clr;
            __u64 propagation;
            __u64 userns_fd;
        };
    """

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def openat2_resolve(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2) from plain arguments: open ``path`` relative to ``dirfd`` under ``resolve``.

    (``openat2`` below, added for the sentry, takes a prepared open_how.)
    """
    how = OpenHow(flags, mode, resolve)
    return _check(
        _libc.syscall(
            ctypes.c_long(SYS_openat2), ctypes.c_int(dirfd), _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
        ),
        "openat2",
        dirfd,
        path,
        flags,
        resolve,
    )


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int = 0, attr_clr: int = 0, propagation: int = 0) -> None:
    """mount_setattr(2): change the attributes of a mount (recursively with AT_RECURSIVE)."""
    attr = MountAttr(attr_set, attr_clr, propagation, 0)
    _check(
        _libc.syscall(
            ctypes.c_long(SYS_mount_setattr),
            ctypes.c_int(dirfd),
            _b(path),
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
        dirfd,
        path,
        flags,
        attr_set,
        attr_clr,
    )


# --- added for the sentry: tracee memory, per-thread capabilities ----------
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311

_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
_libc.process_vm_writev.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]


AT_FDCWD = -100
RENAME_NOREPLACE = 1 << 0


def rename_noreplace(src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): FileExistsError if ``dst`` exists (even as an empty directory)."""
    _check(
        _libc.renameat2(ctypes.c_int(AT_FDCWD), os.fsencode(src), ctypes.c_int(AT_FDCWD), os.fsencode(dst), ctypes.c_uint(RENAME_NOREPLACE)),
        "renameat2", src, dst,
    )


# --- <sys/inotify.h> -----------------------------------------------------------
IN_CREATE = 0x00000100
IN_MOVED_TO = 0x00000080
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC


def inotify_init1(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    """inotify_init1(2): a descriptor that turns readable when a watched directory changes."""
    return _check(_libc.inotify_init1(ctypes.c_int(flags)), "inotify_init1", flags)


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """inotify_add_watch(2); the watch descriptor (the same one again for a path already watched)."""
    return _check(_libc.inotify_add_watch(ctypes.c_int(fd), os.fsencode(path), ctypes.c_uint32(mask)), "inotify_add_watch", fd, path, mask)


class _CapHeader(ctypes.Structure):
    """struct __user_cap_header_struct { __u32 version; int pid; };"""

    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    """struct __user_cap_data_struct { __u32 effective, permitted, inheritable; };"""

    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def thread_capget(tid: int = 0) -> tuple[int, int, int]:
    """capget(2) of thread ``tid`` (0: the calling one): (effective, permitted, inheritable) as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, tid)
    data = (_CapData * 2)()
    _check(_libc.syscall(ctypes.c_long(SYS_capget), ctypes.byref(header), data), "capget")
    lo, hi = data[0], data[1]
    return (lo.effective | hi.effective << 32, lo.permitted | hi.permitted << 32, lo.inheritable | hi.inheritable << 32)


def thread_capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) of the calling thread only (raw syscall; capabilities are per thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(_libc.syscall(ctypes.c_long(SYS_capset), ctypes.byref(header), data), "capset")
