"""The open family, mediated: the sentry opens the file for the tracee and injects the fd.

For open/openat/openat2/creat the sentry

1. reads the path (and openat2's ``open_how``) from tracee memory, then checks
   ``NOTIF_ID_VALID`` (the TID may have died and been reused meanwhile);
2. resolves it with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``
   anchored at the tracee's root, ``/proc/TID/root`` (pitfall 11: the
   container's own mounts are only visible there). A relative path is joined
   to the tracee's cwd (or dirfd) *as a path inside that root*, from
   ``readlink`` of ``/proc/TID/cwd`` and ``/proc/TID/root``; when that is not
   possible (cwd outside the root, deleted) the cwd itself is the anchor. Either
   way resolution can never leave the anchor: ``..`` and absolute symlinks
   stop there, and magic links (``/proc/N/fd/M``…) are refused (ELOOP);
3. opens as the tracee: its fsuid, fsgid and groups (``tracee.FsIdentity``),
   so a non-root container user gets the kernel's own permission checks;
4. answers with ``SECCOMP_IOCTL_NOTIF_ADDFD`` + ``ADDFD_FLAG_SEND`` (installs
   the fd and completes the call atomically), honouring O_CLOEXEC. The sentry
   never answers CONTINUE here: the decision read tracee memory (pitfall 6).

Special paths (lexically normalized, inside the container):
``/proc/{meminfo,cpuinfo,stat,loadavg}`` are synthesized (``procfs``);
``/proc/self/fd/N``, ``/dev/fd/N``, ``/dev/std{in,out,err}`` re-open the
tracee's own fd N as the kernel would, ``/proc/self/exe`` its executable;
``/proc/self/root/X`` and ``/proc/self/cwd/X`` are X from the tracee's root
and cwd; ``/proc/self`` and
``/proc/thread-self`` (and ``/proc/mounts`` and ``/proc/net``, procfs's links
into ``self``) are rewritten to the tracee's pid in its namespace.

Known differences from native (documented in docs/syscalls.md): the created
file's mode is masked by the sentry's umask as well as the tracee's; O_NOCTTY
is forced (the sentry must not acquire a terminal). A blocking open of a FIFO
waits for its other end in a thread (``fifo.py``): the sentry's loop never
blocks.
An ``O_PATH`` open/openat never reaches the sentry: the filter lets the kernel
run it (its flags are a register; see ``table.py``). Through openat2 (flags in
tracee memory) it fails with EBADF (``NOTIF_ADDFD`` cannot install an O_PATH file).
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import stat

from ..abi import libc
from ..abi.seccomp import OPEN_HOW, RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS
from . import fifo, procfs

AT_FDCWD = -100
O_TMPFILE = 0o20000000 | os.O_DIRECTORY
#: every flag open(2) knows (the kernel's VALID_OPEN_FLAGS); legacy open ignores the rest, openat2 refuses them
VALID_OPEN_FLAGS = (
    os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND
    | os.O_NONBLOCK | os.O_DSYNC | 0o20000 | os.O_DIRECT | 0o100000 | os.O_DIRECTORY | os.O_NOFOLLOW
    | os.O_NOATIME | os.O_CLOEXEC | os.O_PATH | 0o20000000 | 0o4000000
)
#: what open(2) keeps of the flags with O_PATH (the kernel's O_PATH_FLAGS)
O_PATH_FLAGS = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_PATH | os.O_CLOEXEC
#: resolve flags openat2 knows (RESOLVE_NO_XDEV .. RESOLVE_CACHED)
VALID_RESOLVE = 0x3F
_BASE_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS

_OWN_FD = re.compile(rb"^/(?:proc/(?:self|thread-self)|dev)/fd/(\d+)$")
_STD = {b"/dev/stdin": 0, b"/dev/stdout": 1, b"/dev/stderr": 2}
_PROC_SELF = re.compile(rb"^/proc/(self|thread-self)(/.*)?$")
#: procfs's own symlinks into "self" (/proc/mounts -> self/mounts, /proc/net ->
#: self/net): the sentry would resolve "self" as itself, which has no pid in
#: the container's procfs (ENOENT), so they are rewritten like /proc/self
_PROC_SELF_LINK = re.compile(rb"^/proc/(mounts|net)(/.*)?$")
#: the tracee's own root and cwd through procfs: magic links, which the
#: resolution below refuses, so they are followed here, as the kernel would
#: for the tracee (another process's stay refused)
_OWN_DIR = re.compile(rb"^/proc/(?:self|thread-self)/(root|cwd)(?:/(.*))?$")
_OWN_EXE = (b"/proc/self/exe", b"/proc/thread-self/exe")


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def open_(s, lst, nid, tid, a):
    """open(const char *path, int flags, mode_t mode)."""
    return mediate_open(s, lst, nid, tid, AT_FDCWD, a[0], a[1] & 0xFFFFFFFF, a[2], 0, legacy=True)


def openat(s, lst, nid, tid, a):
    """openat(int dirfd, const char *path, int flags, mode_t mode)."""
    return mediate_open(s, lst, nid, tid, _s32(a[0]), a[1], a[2] & 0xFFFFFFFF, a[3], 0, legacy=True)


def creat(s, lst, nid, tid, a):
    """creat(const char *path, mode_t mode) == open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)."""
    return mediate_open(s, lst, nid, tid, AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1], 0, legacy=True)


def openat2(s, lst, nid, tid, a):
    """openat2(int dirfd, const char *path, struct open_how *how, size_t size)."""
    size = a[3]
    if size < OPEN_HOW.size:
        return 0, errno.EINVAL
    if size > 4096:
        return 0, errno.E2BIG
    try:
        raw = s.mem.read(tid, a[2], size)
    except OSError:
        return 0, errno.EFAULT
    if size > OPEN_HOW.size and raw[OPEN_HOW.size:].strip(b"\0"):
        return 0, errno.E2BIG
    flags, mode, resolve = OPEN_HOW.unpack_from(raw)
    if flags >> 32 or resolve & ~VALID_RESOLVE:
        return 0, errno.EINVAL
    return mediate_open(s, lst, nid, tid, _s32(a[0]), a[1], flags, mode, resolve, legacy=False)


def _inner_path(base: bytes, root: bytes) -> bytes | None:
    """``base`` (a host-side readlink) as a path inside ``root``, or None if it is not inside."""
    if base.endswith(b" (deleted)") or not base.startswith(b"/"):
        return None
    if root == b"/":
        return base
    if base == root:
        return b"/"
    if base.startswith(root + b"/"):
        return base[len(root):]
    return None


def _root(lst, tid: int) -> tuple[int, bytes, bool]:
    """(O_PATH fd of the tracee's root, its readlink, whether the caller must close the fd)."""
    if lst.root_fd >= 0:
        return lst.root_fd, lst.root_link, False
    fd = os.open(b"/proc/%d/root" % tid, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        link = os.readlink(b"/proc/%d/root" % tid)
    except OSError:
        os.close(fd)
        raise
    if lst.root_fd == -1:  # first open of this container: cache (see chroot below)
        lst.root_fd, lst.root_link = fd, link
        return fd, link, False
    return fd, link, True


def chroot(s, lst, nid, tid, a):
    """chroot(path): the kernel does it (CONTINUE); the container's cached root is dropped first.

    Safe to CONTINUE: no decision is made on tracee memory, the sentry only
    stops assuming that every tracee of this listener shares one root.
    """
    if lst.root_fd >= 0:
        os.close(lst.root_fd)
    lst.root_fd, lst.root_link = -2, b""
    return CONTINUE


#: answer "let the kernel run it" (SECCOMP_USER_NOTIF_FLAG_CONTINUE)
CONTINUE = (0, 0, 1)


def mediate_open(s, lst, nid, tid, dirfd: int, path_addr: int, flags: int, mode: int, resolve: int, *, legacy: bool):
    handed = s.take_handoff_fd()
    if handed >= 0:
        # the C loop opened it as the tracee: a FIFO for a blocking read, to wait on
        fifo.wait_for_writer(s, lst, nid, handed, flags & os.O_CLOEXEC)
        return None
    try:
        path = s.mem.read_cstring(tid, path_addr)
    except OSError as err:
        return 0, err.errno or errno.EFAULT
    s.decoded = (dirfd, path.decode(errors="replace"), flags, oct(mode))
    if not s.id_valid(lst, nid):
        return None  # the thread is gone: nothing to answer
    t = s.tracees.get(tid)
    if not path:
        return 0, errno.ENOENT
    if legacy:
        flags &= VALID_OPEN_FLAGS
        if not (flags & os.O_CREAT or flags & O_TMPFILE == O_TMPFILE):
            mode = 0
        mode &= 0o7777
        if flags & os.O_PATH:  # as the kernel's build_open_how: the other flags are ignored
            flags &= O_PATH_FLAGS
    try:
        root_fd, root_link, close_root = _root(lst, tid)
    except OSError:
        return 0, errno.ENOENT
    try:
        return _open_in_root(s, lst, nid, t, root_fd, root_link, dirfd, path, flags, mode, resolve)
    finally:
        if close_root:
            os.close(root_fd)


def _open_in_root(s, lst, nid, t, root_fd, root_link, dirfd, path, flags, mode, resolve):
    tid = t.tid
    # Where the path starts, as a path inside the tracee's root (None: unknown).
    if path.startswith(b"/"):
        inner = path
    else:
        link = b"/proc/%d/cwd" % tid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (tid, dirfd)
        try:
            base = os.readlink(link)
        except OSError:
            return 0, errno.EBADF if dirfd != AT_FDCWD else errno.ENOENT
        where = _inner_path(base, root_link)
        inner = None if where is None else (where.rstrip(b"/") + b"/" + path)

    if inner is not None and (inner.startswith(b"/proc/") or inner.startswith(b"/dev/")):
        norm = posixpath.normpath(inner)
        own = _OWN_DIR.match(norm)
        if own:
            # /proc/self/root/X is X in the tracee's root (our anchor);
            # /proc/self/cwd/X is X from its cwd. Each turn strips a prefix.
            rest = own.group(2) or b"."
            again = b"/" + rest if own.group(1) == b"root" else rest
            return _open_in_root(s, lst, nid, t, root_fd, root_link, AT_FDCWD, again, flags, mode, resolve)
        special = _special(s, lst, nid, t, norm, flags, mode)
        if special is not None:
            return special
        link = _PROC_SELF_LINK.match(norm)
        if link:
            norm = b"/proc/self/" + link.group(1) + (link.group(2) or b"")
        m = _PROC_SELF.match(norm)
        if m:
            c = t.creds()
            pid = str(c.ns_tgid) if m.group(1) == b"self" else f"{c.ns_tgid}/task/{c.ns_tid}"
            inner = b"/proc/" + pid.encode() + (m.group(2) or b"")

    anchor_fd, own_anchor = root_fd, False
    if inner is not None:
        rel = inner
    else:
        rel = path
        anchor = b"/proc/%d/cwd" % tid if dirfd == AT_FDCWD else b"/proc/%d/fd/%d" % (tid, dirfd)
        try:
            anchor_fd, own_anchor = os.open(anchor, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), True
        except OSError as err:
            return 0, errno.ENOTDIR if err.errno == errno.ENOTDIR else errno.EBADF
    want_nonblock = flags & os.O_NONBLOCK
    # O_PATH takes no other flags in openat2 (EINVAL) and cannot block or acquire a terminal
    ours = os.O_CLOEXEC if flags & os.O_PATH else os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    how = OPEN_HOW.pack((flags | ours) & 0xFFFFFFFF, mode, resolve | _BASE_RESOLVE)
    switched = s.fsid.enter(t)
    try:
        for _ in range(8):  # openat2 IN_ROOT answers EAGAIN when a rename races its ".." walk
            try:
                fd = libc.openat2(anchor_fd, rel, how)
                break
            except OSError as err:
                if err.errno == errno.ENXIO and flags & os.O_ACCMODE == os.O_WRONLY and not want_nonblock:
                    # a FIFO without a reader: a blocking open waits for one (answered later)
                    fifo.wait_for_reader(s, lst, nid, t, anchor_fd, rel, how, flags & os.O_CLOEXEC)
                    return None
                if err.errno != errno.EAGAIN:
                    return 0, err.errno
        else:
            return 0, errno.EAGAIN
    finally:
        if switched:
            s.fsid.leave()
        if own_anchor:
            os.close(anchor_fd)
    try:
        if inner is not None and procfs.STATUS_PATH.match(inner) and flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_PATH:
            # ids printed as the opener (the sentry) sees them: shown as the tracee's
            translated = procfs.status_for_tracee(fd, tid)
            if translated is not None:
                os.close(fd)
                fd = translated
        if not want_nonblock and flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_PATH and stat.S_ISFIFO(os.fstat(fd).st_mode):
            # a FIFO read waits for a writer: answered later, with this very open
            fifo.wait_for_writer(s, lst, nid, os.dup(fd), flags & os.O_CLOEXEC)
            return None
        if not want_nonblock and not flags & os.O_PATH:
            # opened non-blocking so a FIFO cannot stall the sentry; give back what was asked
            # (for every file type: F_GETFL shows the flag, and it changes how leases act)
            os.set_blocking(fd, True)
        s.counts_mediated += 1
        return s.addfd(lst, nid, fd, flags & os.O_CLOEXEC)
    finally:
        os.close(fd)


def _special(s, lst, nid, t, inner: bytes, flags: int, mode: int):
    content = procfs.render(inner, lst.view)
    if content is not None:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            return 0, errno.EACCES
        mfd = os.memfd_create("zentry-proc", os.MFD_CLOEXEC)
        try:
            os.write(mfd, content)
            fd = os.open(f"/proc/self/fd/{mfd}", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(mfd)
        try:
            return s.addfd(lst, nid, fd, flags & os.O_CLOEXEC)
        finally:
            os.close(fd)
    m = _OWN_FD.match(inner)
    n = int(m.group(1)) if m else _STD.get(inner)
    if n is None and inner not in _OWN_EXE:
        return None
    # re-open the tracee's own fd N (or its executable), as the kernel does for
    # /proc/self/fd/N: as the tracee, so the file's own permissions decide
    link = f"/proc/{t.tid}/fd/{n}" if n is not None else f"/proc/{t.tid}/exe"
    sw = s.fsid.enter(t)
    try:
        fd = os.open(link, (flags | os.O_CLOEXEC | os.O_NOCTTY) & ~(os.O_CREAT | os.O_EXCL), mode)
    except OSError as err:
        return 0, err.errno
    finally:
        if sw:
            s.fsid.leave()
    try:
        return s.addfd(lst, nid, fd, flags & os.O_CLOEXEC)
    finally:
        os.close(fd)
