"""What the sentry knows about a trapped thread: its memory and its credentials.

Memory is read and written with process_vm_readv/writev by TID, so it is
always the thread's *current* address space (a cached ``/proc/TID/mem`` fd
would keep pointing at the image before an ``execve``, or at a vfork parent's).
The TID in a notification is trusted only together with ``NOTIF_ID_VALID``:
after every read (handlers) and before every write (``Sentry.write_tracee``).

``Tracees`` caches, per TID, a thread pidfd (``pidfd_open(tid, PIDFD_THREAD)``).
Every use first asks it for the thread's ids (``PIDFD_GET_INFO``, one ioctl):
a pidfd names one thread for ever, so if that thread has exited the ioctl fails
with ESRCH and the entry is evicted before its TID, maybe reused, can reach the
wrong process (pitfall 8). The ioctl returns the fsuid/fsgid the sentry opens
files as; groups come from ``/proc/TID/status``, re-read only when ids change.

Needs thread pidfds with PIDFD_GET_INFO (Linux 6.13+); ``supported()`` says
whether this kernel has them.

Everything here belongs to the sentry thread; nothing is thread-safe.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from zentry.bus.value import Value

from .abi import libc

PATH_MAX = 4096
PAGE = 4096
_libc = libc.libc()


class Iovec(ctypes.Structure):
    """``struct iovec { void *iov_base; size_t iov_len; };`` (<bits/types/struct_iovec.h>)"""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Memory:
    """Tracee memory through process_vm_readv/writev and preallocated iovecs."""

    def __init__(self) -> None:
        self.buf = ctypes.create_string_buffer(PATH_MAX + PAGE)
        self._base = ctypes.addressof(self.buf)
        self._local = Iovec(self._base, 0)
        self._remote = (Iovec * 2)()
        self._lptr = ctypes.byref(self._local)
        self._rptr = ctypes.byref(self._remote)
        self._readv = _libc.process_vm_readv
        self._writev = _libc.process_vm_writev

    def read(self, tid: int, addr: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``addr``; OSError(EFAULT) when not all are readable."""
        if not 0 < size <= len(self.buf) or not 0 <= addr < 1 << 64:
            raise OSError(errno.EFAULT, "bad address")
        self._local.iov_len = size
        self._remote[0].iov_base = addr
        self._remote[0].iov_len = size
        if self._readv(tid, self._lptr, 1, self._rptr, 1, 0) != size:
            raise OSError(errno.EFAULT, "bad address")
        return ctypes.string_at(self._base, size)

    def read_cstring(self, tid: int, addr: int, limit: int = PATH_MAX) -> bytes:
        """The NUL-terminated string at ``addr``: EFAULT if unreadable, ENAMETOOLONG without a NUL.

        The part up to the end of addr's page and the rest are two iovecs, so
        a string that ends just before an unmapped page is still read (partial
        transfers happen at iovec granularity).
        """
        if not 0 < addr < 1 << 64:
            raise OSError(errno.EFAULT, "bad address")
        first = min(limit, PAGE - (addr % PAGE))
        self._local.iov_len = limit
        self._remote[0].iov_base = addr
        self._remote[0].iov_len = first
        self._remote[1].iov_base = addr + first
        self._remote[1].iov_len = limit - first
        n = self._readv(tid, self._lptr, 1, self._rptr, 2 if limit > first else 1, 0)
        if n <= 0:
            raise OSError(errno.EFAULT, "bad address")
        data = ctypes.string_at(self._base, n)
        end = data.find(b"\0")
        if end < 0:
            raise OSError(errno.ENAMETOOLONG if n >= limit else errno.EFAULT, "unterminated string")
        return data[:end]

    def write(self, tid: int, addr: int, data: bytes) -> None:
        """Write all of ``data`` at ``addr``; OSError(EFAULT) otherwise."""
        size = len(data)
        if not 0 < addr < 1 << 64:
            raise OSError(errno.EFAULT, "bad address")
        ctypes.memmove(self._base, data, size)
        self._local.iov_len = size
        self._remote[0].iov_base = addr
        self._remote[0].iov_len = size
        if self._writev(tid, self._lptr, 1, self._rptr, 1, 0) != size:
            raise OSError(errno.EFAULT, "bad address")


class Creds(Value):
    """The filesystem identity of a thread, and its pid as its own pid namespace sees it."""

    __slots__ = ("fsuid", "fsgid", "groups", "cap_eff", "ns_tgid", "ns_tid", "tgid")

    def __init__(self, fsuid: int, fsgid: int, groups: tuple[int, ...], cap_eff: int, ns_tgid: int, ns_tid: int, tgid: int = 0) -> None:
        self.fsuid = fsuid
        self.fsgid = fsgid
        self.groups = groups
        self.cap_eff = cap_eff
        self.ns_tgid = ns_tgid
        self.ns_tid = ns_tid
        self.tgid = tgid

    @property
    def is_root(self) -> bool:
        return self.fsuid == 0 and self.fsgid == 0


def _field(status: bytes, key: bytes) -> list[bytes]:
    start = status.find(key)
    if start < 0:
        return []
    start += len(key)
    end = status.find(b"\n", start)
    return status[start:end].split()


def parse_status(status: bytes) -> Creds:
    """Creds from the text of /proc/TID/status."""
    uid = _field(status, b"\nUid:")
    gid = _field(status, b"\nGid:")
    groups = tuple(int(g) for g in _field(status, b"\nGroups:"))
    cap = _field(status, b"\nCapEff:")
    nstgid = _field(status, b"\nNStgid:")
    nspid = _field(status, b"\nNSpid:")
    return Creds(
        fsuid=int(uid[3]),
        fsgid=int(gid[3]),
        groups=groups,
        cap_eff=int(cap[0], 16) if cap else 0,
        ns_tgid=int(nstgid[-1]) if nstgid else 0,
        ns_tid=int(nspid[-1]) if nspid else 0,
        tgid=int((_field(status, b"\nTgid:") or [b"0"])[0]),
    )


#: capabilities that bypass file permission checks on open: CAP_DAC_OVERRIDE,
#: CAP_DAC_READ_SEARCH, CAP_FOWNER (O_NOATIME, and owner checks)
DAC_CAPS = (1 << 1) | (1 << 2) | (1 << 3)


def cap_eff_of(tid: int) -> int:
    """The thread's effective capabilities, asked now (capget by tid; they change with
    capset and execve without its ids changing)."""
    return libc.thread_capget(tid)[0]


class FsIdentity:
    """Switches the calling thread's file identity to a tracee's and back.

    setfsuid/setfsgid/setgroups as raw syscalls change only this thread (glibc's
    wrappers would broadcast to every thread of the sandbox). Leaving fsuid 0
    drops CAP_DAC_OVERRIDE & co. from this thread's effective set; returning
    restores them, so a non-root tracee gets the kernel's own permission checks.

    A root tracee keeps fsuid 0, but it may lack the capabilities that make
    root's opens bypass permissions: runc's default set has none of them, so
    container root cannot read another user's 0600 file. This thread then
    drops the ones the tracee lacks (capset, this thread only) for the open.
    """

    def __init__(self) -> None:
        self._groups = tuple(os.getgroups())
        self._uid = os.geteuid()
        self._gid = os.getegid()
        self._caps = libc.thread_capget()
        self._userns = os.stat("/proc/thread-self/ns/user").st_ino
        self._dropped = False

    def enter(self, t: "Tracee") -> bool:
        """Become thread ``t`` for file access; False when nothing had to change."""
        if t.fsuid == 0 and self._uid == 0:
            # in another user namespace (root mapped to host root) its capabilities hold
            # there, not in ours, where the sentry opens: none of them are lent
            foreign = os.stat(f"/proc/{t.tid}/ns/user").st_ino != self._userns
            drop = DAC_CAPS & self._caps[0] & ~(0 if foreign else cap_eff_of(t.tid))
            if t.fsgid == self._gid and not drop:
                return False  # root with root's file capabilities: groups do not matter
            libc.thread_setgroups(t.creds().groups)  # without DAC_OVERRIDE, groups decide too
            libc.thread_setfsgid(t.fsgid)
            if drop:
                eff, perm, inh = self._caps
                libc.thread_capset(eff & ~drop, perm, inh)
                self._dropped = True
            return True
        c = t.creds()
        libc.thread_setgroups(c.groups)
        libc.thread_setfsgid(t.fsgid)
        libc.thread_setfsuid(t.fsuid)
        return True

    def leave(self) -> None:
        libc.thread_setfsuid(self._uid)
        libc.thread_setfsgid(self._gid)
        libc.thread_setgroups(self._groups)
        if self._dropped:
            libc.thread_capset(*self._caps)
            self._dropped = False


# --- <linux/pidfd.h> -----------------------------------------------------------------
PIDFD_THREAD = os.O_EXCL
PIDFD_INFO_PID = 1 << 0
PIDFD_INFO_CREDS = 1 << 1
#: _IOWR(PIDFS_IOCTL_MAGIC=0xFF, 11, struct pidfd_info) with the 64-byte VER0 struct:
#: struct pidfd_info { __u64 mask; __u64 cgroupid; __u32 pid, tgid, ppid, ruid, rgid,
#:                     euid, egid, suid, sgid, fsuid, fsgid; __s32 exit_code; };
PIDFD_GET_INFO = 0xC040FF0B
PIDFD_INFO = struct.Struct("=QQ11Ii")
_INFO_REQUEST = PIDFD_INFO.pack(PIDFD_INFO_PID | PIDFD_INFO_CREDS, *([0] * 13))


class Tracee:
    """One trapped thread: its pidfd and its ids."""

    __slots__ = ("tid", "pidfd", "ids", "_creds", "_creds_ids")

    def __init__(self, tid: int, pidfd: int) -> None:
        self.tid = tid
        self.pidfd = pidfd
        self.ids: tuple = ()
        self._creds: Creds | None = None
        self._creds_ids: tuple = ()

    def creds(self) -> Creds:
        """fsuid/fsgid from the last PIDFD_GET_INFO; groups (and ns pids) from status when ids changed."""
        if self._creds is None or self._creds_ids != self.ids:
            with open(f"/proc/{self.tid}/status", "rb") as f:
                self._creds = parse_status(f.read())
            self._creds_ids = self.ids
        return self._creds

    @property
    def fsuid(self) -> int:
        return self.ids[9]

    @property
    def fsgid(self) -> int:
        return self.ids[10]

    @property
    def tgid(self) -> int:
        return self.ids[1]

    def close(self) -> None:
        try:
            os.close(self.pidfd)
        except OSError:
            pass


class Tracees:
    """TID -> ``Tracee``, validated through the thread pidfd on every ``get``."""

    MAX = 4096

    def __init__(self) -> None:
        self._by_tid: dict[int, Tracee] = {}
        self._info = bytearray(PIDFD_INFO.size)

    def _refresh(self, t: Tracee) -> bool:
        info = self._info
        info[:] = _INFO_REQUEST
        try:
            fcntl.ioctl(t.pidfd, PIDFD_GET_INFO, info, True)
        except OSError:
            return False  # ESRCH: that thread is gone
        t.ids = PIDFD_INFO.unpack_from(info)[2:13]
        return True

    def get(self, tid: int) -> Tracee:
        """The live thread ``tid``; OSError(ESRCH) when it no longer exists."""
        t = self._by_tid.get(tid)
        if t is not None:
            if self._refresh(t):
                return t
            self.evict(tid)
        if len(self._by_tid) >= self.MAX:
            self.clear()
        t = Tracee(tid, libc.pidfd_open(tid, PIDFD_THREAD))
        if not self._refresh(t):
            t.close()
            raise OSError(errno.ESRCH, f"thread {tid} is gone")
        self._by_tid[tid] = t
        return t

    def evict(self, tid: int) -> None:
        t = self._by_tid.pop(tid, None)
        if t is not None:
            t.close()

    def clear(self) -> None:
        for tid in list(self._by_tid):
            self.evict(tid)

    def __len__(self) -> int:
        return len(self._by_tid)


def supported() -> bool:
    """Whether this kernel has thread pidfds with PIDFD_GET_INFO (6.13+)."""
    try:
        fd = libc.pidfd_open(os.getpid(), PIDFD_THREAD)
    except OSError:
        return False
    try:
        buf = bytearray(_INFO_REQUEST)
        fcntl.ioctl(fd, PIDFD_GET_INFO, buf, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
