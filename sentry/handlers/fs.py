"""The open family: the kernel opens files as the container; the sentry serves only its own files.

For open/openat/openat2/creat the sentry reads the path from tracee memory
and

* when it names one of the views the sentry makes itself (``procfs.VIEWS``:
  ``/proc/meminfo``, ``/proc/cpuinfo``, ``/proc/stat``, ``/proc/loadavg``,
  ``/proc/uptime``, ``/sys/devices/system/cpu/online``) and asks for them
  read-only, checks ``NOTIF_ID_VALID``, renders the text into a memfd and
  installs a read-only fd to it with ``SECCOMP_IOCTL_NOTIF_ADDFD`` +
  ``ADDFD_FLAG_SEND`` (the fd and the call's completion in one step);
* otherwise answers ``SECCOMP_USER_NOTIF_FLAG_CONTINUE``: the kernel runs the
  call as the tracee, with its own credentials, capabilities, namespaces,
  device cgroup and umask, exactly as without the sentry.

CONTINUE is safe here (notes pitfall 6 allows it) because no security
decision rests on the path read from tracee memory: it only chooses between
"the sentry serves its own file" and "the kernel does it". A thread that
changes the path between the sentry's read and the kernel's open gets the
file it named, with its own rights (at worst the host's ``/proc/meminfo``
instead of the view). For the same reason the path reported on the tap is
the path *as read*: a racing container can make it differ from what the
kernel opened.

A view is matched on the path string exactly as given, when it is absolute
(``/proc/meminfo``, not ``/proc/./meminfo`` nor ``meminfo`` from a cwd of
``/proc``): the native fast path (``_fast.c``) matches the same way. The
forms not matched get the kernel's own file. Writes, ``O_PATH``, ``O_CREAT``
and other flags a view cannot honour are continued (the kernel answers them
as for the real file); openat2 is continued whenever its ``open_how`` asks
for resolve flags.
"""

from __future__ import annotations

import os

from ..abi.seccomp import OPEN_HOW
from . import procfs

AT_FDCWD = -100
#: answer "let the kernel run it" (SECCOMP_USER_NOTIF_FLAG_CONTINUE)
CONTINUE = (0, 0, 1)
#: the kernel's O_LARGEFILE (glibc's os.O_LARGEFILE is 0 on x86_64; musl passes 0o100000)
O_LARGEFILE = 0o100000
#: flags a read-only open of a view may carry and still be served (the rest is continued)
_VIEW_FLAGS = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | O_LARGEFILE | os.O_NOFOLLOW | os.O_NOATIME


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def open_(s, lst, nid, tid, a):
    """open(const char *path, int flags, mode_t mode)."""
    return observe_open(s, lst, nid, tid, AT_FDCWD, a[0], a[1] & 0xFFFFFFFF, a[2])


def openat(s, lst, nid, tid, a):
    """openat(int dirfd, const char *path, int flags, mode_t mode)."""
    return observe_open(s, lst, nid, tid, _s32(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3])


def creat(s, lst, nid, tid, a):
    """creat(const char *path, mode_t mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)."""
    return observe_open(s, lst, nid, tid, AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1])


def openat2(s, lst, nid, tid, a):
    """openat2(int dirfd, const char *path, struct open_how *how, size_t size)."""
    flags = mode = resolve = None
    if a[3] >= OPEN_HOW.size:
        try:
            flags, mode, resolve = OPEN_HOW.unpack(s.mem.read(tid, a[2], OPEN_HOW.size))
        except OSError:
            pass  # the kernel will answer EFAULT itself
    if resolve:
        flags = None  # resolve flags change what a path means: always the kernel's
    return observe_open(s, lst, nid, tid, _s32(a[0]), a[1], flags, mode, resolve)


def observe_open(s, lst, nid, tid, dirfd: int, path_addr: int, flags: int | None, mode, resolve=None):
    """Serve a view (ADDFD) or CONTINUE; ``flags`` None: the call cannot be a view."""
    try:
        path = s.mem.read_cstring(tid, path_addr)
    except OSError:
        path = None  # unreadable: the kernel gives the errno (EFAULT, ENAMETOOLONG)
    shown = path.decode(errors="replace") if path is not None else hex(path_addr)
    s.decoded = (dirfd, shown, flags, oct(mode or 0)) if resolve is None else (dirfd, shown, flags, oct(mode or 0), resolve)
    if path is None or flags is None or flags & ~_VIEW_FLAGS & ~os.O_ACCMODE or flags & os.O_ACCMODE != os.O_RDONLY:
        return CONTINUE
    name = procfs.VIEWS.get(path)
    if name is None:
        return CONTINUE
    content = procfs.RENDERERS[name](lst.view)
    if not s.id_valid(lst, nid):
        return None  # the thread is gone: nothing to answer
    mfd = os.memfd_create("zentry-view", os.MFD_CLOEXEC)
    try:
        os.write(mfd, content)
        fd = os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(mfd)
    try:
        s.counts_served += 1
        return s.addfd(lst, nid, fd, flags & os.O_CLOEXEC)
    finally:
        os.close(fd)
