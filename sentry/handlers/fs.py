"""The open family, observed: the kernel opens files as the container.

Opens are allowed in BPF (table ``TRACE`` rows); they reach the sentry only
in a container created with strace on, where each is decoded for the tap
(the path read from tracee memory) and answered
``SECCOMP_USER_NOTIF_FLAG_CONTINUE``: the kernel runs the call as the tracee,
with its own credentials, capabilities, namespaces, device cgroup and umask,
exactly as without the sentry. The views (``procfs``) are not opens the
sentry answers: they are files of the FUSE filesystem ``sentry.views``
binds over their paths.

CONTINUE is safe here (notes pitfall 6 allows it) because no decision rests
on the path read from tracee memory; for the same reason the path reported
on the tap is the path *as read*: a racing container can make it differ from
what the kernel opened.
"""

from __future__ import annotations

import os

from ..abi.seccomp import OPEN_HOW

AT_FDCWD = -100
#: answer "let the kernel run it" (SECCOMP_USER_NOTIF_FLAG_CONTINUE)
CONTINUE = (0, 0, 1)


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
    return observe_open(s, lst, nid, tid, _s32(a[0]), a[1], flags, mode, resolve)


def observe_open(s, lst, nid, tid, dirfd: int, path_addr: int, flags: int | None, mode, resolve=None):
    """Decode the call for the tap; CONTINUE."""
    try:
        path = s.mem.read_cstring(tid, path_addr)
    except OSError:
        path = None  # unreadable: the kernel gives the errno (EFAULT, ENAMETOOLONG)
    shown = path.decode(errors="replace") if path is not None else hex(path_addr)
    s.decoded = (dirfd, shown, flags, oct(mode or 0)) if resolve is None else (dirfd, shown, flags, oct(mode or 0), resolve)
    return CONTINUE
