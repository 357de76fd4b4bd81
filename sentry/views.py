"""The views, served live by a FUSE filesystem mounted over the container's /proc and /sys files.

What programs size themselves from (``/proc/meminfo``, ``cpuinfo``, ``stat``,
``loadavg``, ``/sys/devices/system/cpu/online``) describes the
host; ``procfs`` renders each from the container's limits. The files reach
the container the way LXCFS's do, without trapping a single open:

1. when the container init is ready (pivoted, /proc and /sys mounted, filter
   loaded, not yet exec'd), the sandbox opens ``/dev/fuse`` and starts a
   ``Server`` thread on it;
2. a helper forked from the sandbox joins the init's mount namespace and
   root, mounts the FUSE filesystem *detached* (``fsopen``/``fsmount``: it is
   never attached anywhere, so no temporary directory is needed, even on a
   read-only root), and bind-mounts each view file over its /proc or /sys
   path (``open_tree(OPEN_TREE_CLONE)`` + ``move_mount``), read-only, nosuid,
   nodev, noexec;
3. the helper exits. The binds exist only in the container's mount
   namespace (nothing is mounted on the host) and keep the superblock;
   exec'd processes join that namespace and see them. When the namespace
   dies, the kernel aborts the connection and the thread ends.

The filesystem is mounted by host root (the sandbox's user namespace), so it
works the same with a container user namespace: ``allow_other`` admits the
container's processes, and the files are owned by host root, as procfs's
are (``nobody`` as seen from a user namespace, as under runc).

A pool's template (docs/pools.md) is served with a ``view_for``: the
request's pid (the caller, as the host numbers it) picks the view, so each
of its sandboxes, whose mount tables carry the template's binds, is shown
its own cgroup's limits.

Each open renders the file once (the reads of one open see one snapshot, as
procfs's seq files give). Names and attributes are valid for 0 s, so every
path walk asks the server again: the LOOKUP's answer renders the content
the caller's OPEN then gets and reports its size, so reads through the page
cache see all of it (``sendfile``/``splice``, which busybox ``cat`` uses:
with ``FOPEN_DIRECT_IO`` and size 0, as procfs reports, the kernel's splice
reads the page cache and sees an empty file). Fail closed: if the sandbox dies, its ``/dev/fuse``
fd closes, the connection aborts, and reads fail (ENOTCONN) instead of
showing the host's values (the container is killed with its sandbox anyway).

The protocol is a small raw implementation (``<linux/fuse.h>``, 7.31):
INIT, LOOKUP, GETATTR, OPEN, READ, RELEASE, FLUSH, STATFS, FORGET; the rest
is answered ENOSYS (or EROFS for what would write).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
import time

from zentry.bus.log import get_logger

from .abi import libc
from .handlers import procfs

log = get_logger("zentry.sentry.views")

#: <linux/prctl.h>
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4

# --- <asm/unistd_64.h>, <linux/mount.h> -----------------------------------------
SYS_open_tree, SYS_move_mount, SYS_fsopen, SYS_fsconfig, SYS_fsmount = 428, 429, 430, 431, 432
FSOPEN_CLOEXEC = FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 0, 1, 6
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_FDCWD = -100
#: the binds' flags: read-only, and nothing a view could carry
MOUNT_ATTRS = libc.MOUNT_ATTR_RDONLY | libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV | libc.MOUNT_ATTR_NOEXEC

# --- <linux/fuse.h> ---------------------------------------------------------------
FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_SETATTR = 1, 2, 3, 4
FUSE_OPEN, FUSE_READ, FUSE_WRITE, FUSE_STATFS, FUSE_RELEASE = 14, 15, 16, 17, 18
FUSE_FLUSH, FUSE_INIT, FUSE_OPENDIR, FUSE_RELEASEDIR, FUSE_INTERRUPT = 25, 26, 27, 29, 36
FUSE_DESTROY, FUSE_BATCH_FORGET = 38, 42
#: opcodes that would change the filesystem: EROFS (as a read-only mount says)
_WRITES = frozenset({4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45, 47, 51})
#: opcodes the kernel sends without waiting for an answer
_NO_REPLY = frozenset({FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT})
FUSE_KERNEL_VERSION, FUSE_KERNEL_MINOR_VERSION = 7, 31
IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (the rest ignored)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... max_write time_gran max_pages map_alignment flags2 max_stack_depth unused
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # ino size blocks atime mtime ctime *nsec mode nlink uid gid rdev blksize flags
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid *_nsec (+ ATTR)
GETATTR_IN = struct.Struct("<IIQ")  # getattr_flags dummy fh
FUSE_GETATTR_FH = 1
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy (+ ATTR)
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQI")  # fh offset size (the rest ignored)
KSTATFS = struct.Struct("<QQQQQIIII24x")
#: the kernel refuses reads of /dev/fuse into smaller buffers than this (with max_write 4096)
READ_BUFFER = 132 * 1024
ROOT_ID = 1

#: the files: name in the filesystem -> (node id, container path)
FILES = {name: (ROOT_ID + 1 + i, path.decode()) for i, (path, name) in enumerate(procfs.VIEWS.items())}
_BY_ID = {node: name for name, (node, _path) in FILES.items()}


def _syscall(number: int, *args) -> int:
    return libc.raw_syscall(number, *args)


def mount_views(dev_fd: int, targets: dict[str, str], created=lambda: None) -> list[str]:
    """In the calling process's mount namespace: mount the views' filesystem (served on ``dev_fd``)
    detached, and bind each ``FILES`` name over ``targets[name]``. Targets that do not exist are
    skipped (a container without /sys). Returns the paths bound.

    ``created()`` is called once the connection exists (``dev_fd`` can be served from then on:
    before, reading it fails with EPERM); the binds then wait for the server's answers."""
    fs = _syscall(SYS_fsopen, b"fuse", FSOPEN_CLOEXEC)
    try:
        for key, value in ((b"source", b"zentry-views"), (b"fd", str(dev_fd).encode()), (b"rootmode", b"40000"),
                           (b"user_id", b"0"), (b"group_id", b"0")):
            _syscall(SYS_fsconfig, fs, FSCONFIG_SET_STRING, key, value, 0)
        for flag in (b"allow_other", b"default_permissions"):
            _syscall(SYS_fsconfig, fs, FSCONFIG_SET_FLAG, flag, None, 0)
        _syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, None, None, 0)
        mnt = _syscall(SYS_fsmount, fs, FSMOUNT_CLOEXEC, MOUNT_ATTRS)
    finally:
        os.close(fs)
    created()
    bound = []
    try:
        for name, target in targets.items():
            if not os.path.exists(target):
                continue
            tree = _syscall(SYS_open_tree, mnt, name.encode(), OPEN_TREE_CLONE | os.O_CLOEXEC)
            try:
                _syscall(SYS_move_mount, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
            finally:
                os.close(tree)
            bound.append(target)
    finally:
        os.close(mnt)
    return bound


class Server:
    """Serves one FUSE connection (one container's views) in a daemon thread."""

    def __init__(self, dev_fd: int, view, render=procfs.RENDERERS, view_for=None) -> None:
        self.fd = dev_fd
        self.view = view
        self.render = render
        #: ``view_for(pid)``: the view to render for the caller ``pid`` (host pid namespace), or None
        #: for ``view``; must be quick and never raise (a pool's template: its sandboxes' own limits)
        self.view_for = view_for
        self._open: dict[int, bytes] = {}
        #: (node, pid) -> the content rendered at that caller's last lookup (its open takes it)
        self._lookups: dict[tuple[int, int], bytes] = {}
        self._next_fh = 1
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"zentry-views-{view.container_id}", daemon=True)

    def start(self) -> "Server":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                try:
                    req = os.read(self.fd, READ_BUFFER)
                except OSError as err:
                    if err.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                        continue  # interrupted, or a request the kernel withdrew
                    if err.errno == errno.ENODEV:
                        return  # unmounted: the container's mount namespace is gone
                    raise
                self._handle(req)
        except BaseException as exc:
            self.error = exc
            log.warning("views of %s: %s", self.view.container_id, exc)
        finally:
            os.close(self.fd)

    def _reply(self, unique: int, err: int = 0, data: bytes = b"") -> None:
        try:
            os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size + len(data), -err, unique) + data)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # ENOENT: the request was interrupted meanwhile
                raise

    def _attr(self, node: int, size: int = 0) -> bytes:
        mode = 0o40555 if node == ROOT_ID else 0o100444
        return ATTR.pack(node, size, 0, 0, 0, 0, 0, 0, 0, mode, 2 if node == ROOT_ID else 1, 0, 0, 0, 4096, 0)

    def _render(self, node: int, pid: int) -> bytes:
        """``node``'s content as the caller ``pid`` is shown it."""
        view = self.view_for(pid) if self.view_for is not None else None
        return self.render[_BY_ID[node]](view or self.view)

    def _rendered(self, node: int, pid: int) -> bytes:
        """A fresh rendering for ``pid``, kept for its open of ``node`` that follows the lookup."""
        if len(self._lookups) > 1024:  # lookups never followed by an open (stat)
            self._lookups.clear()
        content = self._lookups[(node, pid)] = self._render(node, pid)
        return content

    def _handle(self, req: bytes) -> None:
        _len, op, unique, node, _uid, _gid, pid, _ext, _pad = IN_HEADER.unpack_from(req)
        body = memoryview(req)[IN_HEADER.size:]
        if op in _NO_REPLY:
            return
        if op == FUSE_INIT:
            major, minor, readahead, _flags = INIT_IN.unpack_from(body)
            if major != FUSE_KERNEL_VERSION:
                return self._reply(unique, errno.EPROTO)
            # no flags: no async reads, no caching hints; max_write 4096 (nothing is written)
            out = INIT_OUT.pack(FUSE_KERNEL_VERSION, min(minor, FUSE_KERNEL_MINOR_VERSION), readahead, 0, 1, 1, 4096, 1, 1, 0, 0, 0)
            return self._reply(unique, data=out)
        if op == FUSE_LOOKUP:
            entry = FILES.get(bytes(body).split(b"\0", 1)[0].decode(errors="replace")) if node == ROOT_ID else None
            if entry is None:
                return self._reply(unique, errno.ENOENT)
            # Every path walk asks again (entry and attributes valid 0 s): the answer carries the size
            # of the content this caller's open will then get, so that reads through the page cache
            # (sendfile, splice: busybox cat) see all of it.
            content = self._rendered(entry[0], pid)
            return self._reply(unique, data=ENTRY_OUT.pack(entry[0], 0, 0, 0, 0, 0) + self._attr(entry[0], len(content)))
        if op == FUSE_GETATTR:
            if node != ROOT_ID and node not in _BY_ID:
                return self._reply(unique, errno.ENOENT)
            flags, _dummy, fh = GETATTR_IN.unpack_from(body)
            size = 0
            if node != ROOT_ID:
                content = self._open.get(fh) if flags & FUSE_GETATTR_FH else None
                size = len(content if content is not None else self._rendered(node, pid))
            return self._reply(unique, data=ATTR_OUT.pack(0, 0, 0) + self._attr(node, size))
        if op == FUSE_OPEN:
            name = _BY_ID.get(node)
            if name is None:
                return self._reply(unique, errno.EISDIR if node == ROOT_ID else errno.ENOENT)
            fh = self._next_fh
            self._next_fh += 1
            self._open[fh] = self._lookups.pop((node, pid), None) or self._render(node, pid)
            return self._reply(unique, data=OPEN_OUT.pack(fh, 0, 0))
        if op == FUSE_READ:
            fh, offset, size = READ_IN.unpack_from(body)
            content = self._open.get(fh, b"")
            return self._reply(unique, data=content[offset:offset + size])
        if op == FUSE_RELEASE:
            (fh,) = struct.unpack_from("<Q", body)
            self._open.pop(fh, None)
            return self._reply(unique)
        if op in (FUSE_FLUSH, FUSE_RELEASEDIR):
            return self._reply(unique)
        if op == FUSE_STATFS:
            return self._reply(unique, data=KSTATFS.pack(0, 0, 0, len(FILES) + 1, 0, 4096, 255, 4096, 0))
        if op == FUSE_DESTROY:
            return self._reply(unique)
        return self._reply(unique, errno.EROFS if op in _WRITES else errno.ENOSYS)


def open_device() -> int:
    """A new FUSE connection: /dev/fuse opened close-on-exec (the sandbox's copy serves it)."""
    return os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)


def attach(init_pid: int, view, view_for=None) -> Server:
    """Serve ``view`` over a new FUSE connection and bind its files into ``init_pid``'s mount namespace.
    ``view_for``: see ``Server`` (a pool's template: each sandbox is shown its own cgroup's limits).

    Called by the sandbox (multi-threaded: the mounts are made by a forked helper,
    which alone can join another mount namespace). Raises OSError if the helper fails.
    """
    if os.readlink(f"/proc/{init_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
        # never on the host: the binds would cover the host's own /proc files
        raise OSError(errno.EINVAL, "the container shares the sandbox's mount namespace: no views mounted")
    dev = open_device()
    server = Server(dev, view, view_for=view_for)
    root = mntns = r = w = -1
    try:
        root = os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        mntns = os.open(f"/proc/{init_pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        r, w = os.pipe2(os.O_CLOEXEC)
        helper = os.fork()
        if helper == 0:
            code = 1
            try:
                os.close(r)
                libc.setns(mntns, libc.CLONE_NEWNS)
                os.fchdir(root)
                os.chroot(".")
                os.chdir("/")
                mount_views(dev, {name: path for name, (_node, path) in FILES.items()}, lambda: os.write(w, b"+"))
                code = 0
            except BaseException as exc:
                try:
                    os.write(w, str(exc).encode()[:4000])
                except OSError:
                    pass
            finally:
                os._exit(code)
        os.close(w)
        w = -1
        message = os.read(r, 1)
        if message == b"+":
            server.start()  # it owns ``dev`` from now on
            dev = -1
            message = b""
        while chunk := os.read(r, 4096):
            message += chunk
        _, status = os.waitpid(helper, 0)
        if status != 0:
            raise OSError(errno.EIO, f"cannot mount the views in the container: {message.decode(errors='replace') or status}")
    finally:
        for fd in (dev, root, mntns, r, w):
            if fd >= 0:
                os.close(fd)
    return server


def enter_time_namespace() -> None:
    """Make the children of the caller start a time namespace whose boot clock starts now.

    For the process that forks the container init (the intermediate), before
    the fork: ``unshare(CLONE_NEWTIME)`` applies to the children only, and the
    offsets must be written before any process is in the namespace. Inside,
    CLOCK_BOOTTIME (so ``/proc/uptime``) and the start times of
    ``/proc/PID/stat`` both count from the container's start, consistently,
    so procps ``ps`` computes right elapsed times (no view could: the kernel
    keeps start times from the host's boot). CLOCK_MONOTONIC is left
    alone. Needs CAP_SYS_ADMIN and CAP_SYS_TIME in the caller's user
    namespace (the container's root, with one). Called by the container's
    intermediate (``actors/sandbox/init.py``) unless the config has a time
    namespace of its own; an exec'd process joins it.
    """
    libc.unshare(libc.CLONE_NEWTIME)
    # the offset may not make the clock negative: a second short of now
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    seconds = max(0, int(now) - 1)
    # In a user namespace, changing ids made us non-dumpable: our /proc files
    # then belong to host root, whom we cannot write as. Dumpable for the write only.
    dumpable = libc.prctl(PR_GET_DUMPABLE)
    if not dumpable:
        libc.prctl(PR_SET_DUMPABLE, 1)
    try:
        with open("/proc/self/timens_offsets", "w") as f:
            f.write(f"boottime -{seconds} 0\n")
    finally:
        if not dumpable:
            libc.prctl(PR_SET_DUMPABLE, 0)
