"""What the sentry knows about a trapped thread: its memory and its thread group.

Memory is read and written with process_vm_readv/writev by TID, so it is
always the thread's *current* address space (a cached ``/proc/TID/mem`` fd
would keep pointing at the image before an ``execve``, or at a vfork parent's).
The TID in a notification is trusted only together with ``NOTIF_ID_VALID``:
after every read (handlers) and before every write (``Sentry.write_tracee``).

``Tracees`` caches, per TID, a thread pidfd (``pidfd_open(tid, PIDFD_THREAD)``).
Every use first asks it for the thread's ids (``PIDFD_GET_INFO``, one ioctl):
a pidfd names one thread for ever, so if that thread has exited the ioctl fails
with ESRCH and the entry is evicted before its TID, maybe reused, can reach the
wrong process (pitfall 8). The ioctl also gives the thread group id the tap
reports.

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

    __slots__ = ("tid", "pidfd", "ids")

    def __init__(self, tid: int, pidfd: int) -> None:
        self.tid = tid
        self.pidfd = pidfd
        self.ids: tuple = ()

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
