"""OCI mount entries: option parsing, and performing one mount with its flags.

``parse_options`` turns the OCI option strings into mount(2) flags, the
propagation changes to apply afterwards, recursive attributes for
mount_setattr(2), and the filesystem data string (every unknown option).

Targets are always ``/proc/self/fd/N`` of an ``O_PATH`` fd that was resolved
inside the root (resolve.py), and the fd is opened again after a mount, since
the old one names the covered directory, not the new mount on top of it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
from typing import NamedTuple

from zentry.bus.errors import ConfigError, SystemFailure, Unsupported, os_error_message
from zentry.sentry.abi import libc

L = libc

#: option -> (sets the flag?, MS_* flag). "defaults" changes nothing.
FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "defaults": (False, 0),
    "ro": (True, L.MS_RDONLY),
    "rw": (False, L.MS_RDONLY),
    "nosuid": (True, L.MS_NOSUID),
    "suid": (False, L.MS_NOSUID),
    "nodev": (True, L.MS_NODEV),
    "dev": (False, L.MS_NODEV),
    "noexec": (True, L.MS_NOEXEC),
    "exec": (False, L.MS_NOEXEC),
    "sync": (True, L.MS_SYNCHRONOUS),
    "async": (False, L.MS_SYNCHRONOUS),
    "dirsync": (True, L.MS_DIRSYNC),
    "remount": (True, L.MS_REMOUNT),
    "mand": (True, L.MS_MANDLOCK),
    "nomand": (False, L.MS_MANDLOCK),
    "noatime": (True, L.MS_NOATIME),
    "atime": (False, L.MS_NOATIME),
    "nodiratime": (True, L.MS_NODIRATIME),
    "diratime": (False, L.MS_NODIRATIME),
    "relatime": (True, L.MS_RELATIME),
    "norelatime": (False, L.MS_RELATIME),
    "strictatime": (True, L.MS_STRICTATIME),
    "nostrictatime": (False, L.MS_STRICTATIME),
    "lazytime": (True, L.MS_LAZYTIME),
    "nolazytime": (False, L.MS_LAZYTIME),
    "iversion": (True, L.MS_I_VERSION),
    "noiversion": (False, L.MS_I_VERSION),
    "silent": (True, L.MS_SILENT),
    "loud": (False, L.MS_SILENT),
    "nosymfollow": (True, L.MS_NOSYMFOLLOW),
    "symfollow": (False, L.MS_NOSYMFOLLOW),
}

#: propagation option -> flags for mount(NULL, target, NULL, flags)
PROPAGATION_OPTIONS: dict[str, int] = {
    "private": L.MS_PRIVATE,
    "rprivate": L.MS_PRIVATE | L.MS_REC,
    "shared": L.MS_SHARED,
    "rshared": L.MS_SHARED | L.MS_REC,
    "slave": L.MS_SLAVE,
    "rslave": L.MS_SLAVE | L.MS_REC,
    "unbindable": L.MS_UNBINDABLE,
    "runbindable": L.MS_UNBINDABLE | L.MS_REC,
}

#: recursive option -> (attr_set, attr_clr) for mount_setattr(AT_RECURSIVE)
RECURSIVE_OPTIONS: dict[str, tuple[int, int]] = {
    "rro": (L.MOUNT_ATTR_RDONLY, 0),
    "rrw": (0, L.MOUNT_ATTR_RDONLY),
    "rnosuid": (L.MOUNT_ATTR_NOSUID, 0),
    "rsuid": (0, L.MOUNT_ATTR_NOSUID),
    "rnodev": (L.MOUNT_ATTR_NODEV, 0),
    "rdev": (0, L.MOUNT_ATTR_NODEV),
    "rnoexec": (L.MOUNT_ATTR_NOEXEC, 0),
    "rexec": (0, L.MOUNT_ATTR_NOEXEC),
    "rnosymfollow": (L.MOUNT_ATTR_NOSYMFOLLOW, 0),
    "rsymfollow": (0, L.MOUNT_ATTR_NOSYMFOLLOW),
    "rnodiratime": (L.MOUNT_ATTR_NODIRATIME, 0),
    "rdiratime": (0, L.MOUNT_ATTR_NODIRATIME),
    # the atime mode is one field: clearing _ATIME then setting one value
    "rnoatime": (L.MOUNT_ATTR_NOATIME, L.MOUNT_ATTR__ATIME),
    "ratime": (L.MOUNT_ATTR_RELATIME, L.MOUNT_ATTR__ATIME),
    "rrelatime": (L.MOUNT_ATTR_RELATIME, L.MOUNT_ATTR__ATIME),
    "rnostrictatime": (L.MOUNT_ATTR_RELATIME, L.MOUNT_ATTR__ATIME),
    "rstrictatime": (L.MOUNT_ATTR_STRICTATIME, L.MOUNT_ATTR__ATIME),
    "rnorelatime": (L.MOUNT_ATTR_STRICTATIME, L.MOUNT_ATTR__ATIME),
}

#: flags a bind mount gets only through a second, remounting mount(2) call
PER_MOUNT_FLAGS = (
    L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC | L.MS_NOATIME | L.MS_NODIRATIME
    | L.MS_RELATIME | L.MS_STRICTATIME | L.MS_NOSYMFOLLOW
)
_ATIME_FLAGS = L.MS_NOATIME | L.MS_RELATIME | L.MS_STRICTATIME

#: statvfs f_flag bits (ST_*, <sys/statvfs.h>) -> MS_* flags
_ST_TO_MS = {
    os.ST_RDONLY: L.MS_RDONLY,
    os.ST_NOSUID: L.MS_NOSUID,
    os.ST_NODEV: L.MS_NODEV,
    os.ST_NOEXEC: L.MS_NOEXEC,
    os.ST_NOATIME: L.MS_NOATIME,
    os.ST_NODIRATIME: L.MS_NODIRATIME,
    os.ST_RELATIME: L.MS_RELATIME,
    0x100: L.MS_NOSYMFOLLOW,  # ST_NOSYMFOLLOW
}

class MountOptions(NamedTuple):
    """The OCI ``options`` of one mount, sorted by how they reach the kernel."""

    flags: int = 0  #: MS_* flags to set
    clear: int = 0  #: MS_* flags the options explicitly clear ("rw", "suid"...)
    propagation: tuple[int, ...] = ()  #: MS_SHARED/... (with MS_REC) applied after mounting
    bind: bool = False  #: "bind" or "rbind" given
    recursive: bool = False  #: "rbind" given
    attr_set: int = 0  #: MOUNT_ATTR_* set recursively (rro, rnosuid...)
    attr_clr: int = 0  #: MOUNT_ATTR_* cleared recursively
    tmpcopyup: bool = False  #: copy the covered directory's content into the new tmpfs
    data: tuple[str, ...] = ()  #: filesystem options ("size=64m", "mode=755", unknown ones)

    @property
    def data_string(self) -> str | None:
        return ",".join(self.data) or None


def parse_options(options: list[str] | None) -> MountOptions:
    """Sort OCI mount options; unknown ones become filesystem data, in order."""
    flags = clear = attr_set = attr_clr = 0
    propagation: list[int] = []
    data: list[str] = []
    bind = recursive = tmpcopyup = False
    for opt in options or ():
        if not isinstance(opt, str):
            raise ConfigError(f"mount option {opt!r} is not a string")
        if opt in FLAG_OPTIONS:
            sets, flag = FLAG_OPTIONS[opt]
            if flag & _ATIME_FLAGS and sets:
                # one atime mode wins: the last one given
                flags &= ~_ATIME_FLAGS
            if sets:
                flags |= flag
                clear &= ~flag
            else:
                flags &= ~flag
                clear |= flag
        elif opt in PROPAGATION_OPTIONS:
            propagation.append(PROPAGATION_OPTIONS[opt])
        elif opt in ("bind", "rbind"):
            bind = True
            recursive = recursive or opt == "rbind"
        elif opt in RECURSIVE_OPTIONS:
            s, c = RECURSIVE_OPTIONS[opt]
            attr_set = (attr_set & ~c) | s
            attr_clr = (attr_clr & ~s) | c
        elif opt == "tmpcopyup":
            tmpcopyup = True
        elif opt in ("idmap", "ridmap"):
            raise Unsupported(f'mount option "{opt}": idmapped mounts are not supported by zentry')
        else:
            data.append(opt)
    return MountOptions(
        flags=flags,
        clear=clear,
        propagation=tuple(propagation),
        bind=bind,
        recursive=recursive,
        attr_set=attr_set,
        attr_clr=attr_clr,
        tmpcopyup=tmpcopyup,
        data=tuple(data),
    )


def container_path(path: str) -> str:
    """``path`` as a normalised absolute container path (relative means below "/")."""
    return posixpath.normpath("/" + path.lstrip("/"))  # normpath keeps a leading "//"


def destination(entry: dict) -> str:
    """The mount's destination as a normalised absolute container path."""
    dest = entry.get("destination") if isinstance(entry, dict) else None
    if not isinstance(dest, str) or not dest:
        raise ConfigError(f"mount {entry!r} has no destination")
    return container_path(dest)


def is_bind(entry: dict, opts: MountOptions) -> bool:
    return opts.bind or entry.get("type") == "bind"


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


#: what may be mounted below /proc (as runc allows: lxcfs-style files)
PROC_FILES = frozenset({
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps", "/proc/uptime",
    "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev", "/proc/sys/kernel/ns_last_pid",
})


def check_destinations(entries: list[dict]) -> None:
    """runc's rule for /proc: only a proc file system on /proc itself, and below it
    only the files of ``PROC_FILES`` (what lxcfs provides)."""
    for i, entry in enumerate(entries):
        dest = destination(entry)
        if dest == "/proc" and entry.get("type") != "proc":
            raise ConfigError(f'mounts[{i}]: only a proc file system may be mounted on "/proc"')
        if _under(dest, "/proc") and dest != "/proc" and dest not in PROC_FILES:
            raise ConfigError(f'mounts[{i}]: "{dest}" cannot be mounted because it is inside /proc')


def selinux_data(data: str | None, label: str | None) -> str | None:
    """Append ``context="label"`` (linux.mountLabel) when SELinux is enabled here."""
    if not label or not os.path.exists("/sys/fs/selinux/enforce"):
        return data
    ctx = f'context="{label}"'
    return f"{data},{ctx}" if data else ctx


def current_flags(target: str) -> int:
    """The per-mount MS_* flags of the mount at ``target`` (from statvfs)."""
    st_flags = os.statvfs(target).f_flag
    flags = 0
    for st_bit, ms_bit in _ST_TO_MS.items():
        if st_flags & st_bit:
            flags |= ms_bit
    if not flags & (L.MS_NOATIME | L.MS_RELATIME):
        flags |= L.MS_STRICTATIME
    return flags


def remount_bind(target: str, set_flags: int, clear_flags: int = 0) -> None:
    """Change a bind mount's per-mount flags, keeping the ones not mentioned.

    Keeping the current flags (nosuid, nodev, the atime mode...) matters: in
    a user namespace they are locked and a remount that drops them is EPERM.
    """
    flags = current_flags(target)
    if set_flags & _ATIME_FLAGS:
        flags &= ~_ATIME_FLAGS
    flags = (flags | set_flags) & ~clear_flags & PER_MOUNT_FLAGS
    if clear_flags & _ATIME_FLAGS and not flags & _ATIME_FLAGS:
        flags |= L.MS_RELATIME
    L.mount(None, target, None, L.MS_REMOUNT | L.MS_BIND | flags, None)


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def finish_mount(target: str, opts: MountOptions) -> None:
    """Propagation changes and recursive attributes, after the mount exists."""
    for prop in opts.propagation:
        L.mount(None, target, None, prop, None)
    if opts.attr_set or opts.attr_clr:
        fd = os.open(target, os.O_PATH | os.O_CLOEXEC)
        try:
            L.mount_setattr(fd, "", L.AT_EMPTY_PATH | L.AT_RECURSIVE, opts.attr_set, opts.attr_clr)
        finally:
            os.close(fd)


def tmpfs_data(fstype: str | None, opts: MountOptions, mount_point_mode: int) -> str | None:
    """The data string; a tmpfs without ``mode=`` takes the mode of its mount
    point (made 0755 when missing), as with runc, not tmpfs's own 1777."""
    data = opts.data_string
    if fstype != "tmpfs" or any(d.startswith("mode=") for d in opts.data):
        return data
    mode = f"mode={mount_point_mode:04o}"
    return f"{mode},{data}" if data else mode


def bind_source(entry: dict, bundle_dir: str) -> str:
    source = entry.get("source")
    if not isinstance(source, str) or not source:
        raise ConfigError(f'bind mount on "{destination(entry)}" has no source')
    return source if os.path.isabs(source) else os.path.join(bundle_dir, source)


def clone_source(entry: dict, bundle_dir: str, rootfs: str) -> int | None:
    """A detached copy (open_tree) of a bind entry's source, None for other entries.

    Made where the host's paths are reachable with the host's rights (in a
    user namespace the container's root may not be able to reach them), and
    attached by ``mount_in_root`` later, in the container's mount namespace.
    """
    opts = parse_options(entry.get("options"))
    if not is_bind(entry, opts):
        return None
    source = bind_source(entry, bundle_dir)
    try:
        return clone_tree(source, recursive=opts.recursive)
    except FileNotFoundError as err:
        raise ConfigError(f'cannot bind-mount "{source}" on "{destination(entry)}" (rootfs {rootfs}): source does not exist') from err
    except OSError as err:
        raise SystemFailure(f'cannot bind-mount "{source}" on "{destination(entry)}" (rootfs {rootfs}): {err}') from err


#: <asm/unistd_64.h>, <linux/mount.h>: open_tree(2) and move_mount(2)
SYS_OPEN_TREE, SYS_MOVE_MOUNT = 428, 429
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH = 0x4, 0x40
AT_FDCWD = -100


def clone_tree(path: str, *, recursive: bool = True) -> int:
    """A detached copy of the mount (tree) at ``path``: open_tree(OPEN_TREE_CLONE), close-on-exec."""
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | (L.AT_RECURSIVE if recursive else 0)
    return L.raw_syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(path), flags)


def attach_at(tree: int, path: str) -> None:
    """Attach the detached mount ``tree`` at ``path`` (not a /proc/self/fd link: see ``attach``)."""
    L.raw_syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, os.fsencode(path), MOVE_MOUNT_F_EMPTY_PATH)


def attach(tree: int, target_fd: int) -> None:
    """Attach the detached mount ``tree`` (open_tree) on the file ``target_fd`` names
    (the fd itself: move_mount does not follow a /proc/self/fd link)."""
    L.raw_syscall(SYS_MOVE_MOUNT, tree, b"", target_fd, b"", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH)


def mount_in_root(root_fd: int, entry: dict, source_tree: int | None, rootfs: str, label: str | None = None) -> None:
    """Perform one mount entry below ``root_fd`` (the container's "/", not yet pivoted).

    ``source_tree``: a bind's source from ``clone_source``. proc, sysfs and
    mqueue show the namespaces of the process that mounts them: the caller
    is in the container's.
    """
    from zentry.actors.gofer.resolve import ensure_in_root, open_in_root

    dest = destination(entry)
    fstype = entry.get("type") or None
    opts = parse_options(entry.get("options"))
    bind = is_bind(entry, opts)
    source = entry.get("source") or fstype
    what = source if bind else fstype or source
    fds: list[int] = []
    try:
        if bind:
            if source_tree is None:
                raise SystemFailure(f'bind mount on "{dest}": its source was not prepared (clone_source)')
            is_dir = stat.S_ISDIR(os.fstat(source_tree).st_mode)
        else:
            is_dir = True
        fds.append(ensure_in_root(root_fd, dest, directory=is_dir))
        mount_point_mode = stat.S_IMODE(os.fstat(fds[-1]).st_mode)
        target = fd_path(fds[-1])
        if bind:
            attach(source_tree, fds[-1])
        elif fstype in ("proc", "sysfs"):
            L.mount(source, target, fstype, opts.flags, opts.data_string)  # no SELinux label there
        else:
            if opts.tmpcopyup:
                fds.append(os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            data = selinux_data(tmpfs_data(fstype, opts, mount_point_mode), label)
            L.mount(source, target, fstype, opts.flags, data)
        fds.append(open_in_root(root_fd, dest, os.O_PATH))
        target = fd_path(fds[-1])
        if bind and (opts.flags | opts.clear) & PER_MOUNT_FLAGS:
            remount_bind(target, opts.flags, opts.clear)
        if opts.tmpcopyup and not bind:
            shutil.copytree(fd_path(fds[1]), target, symlinks=True, dirs_exist_ok=True)
        finish_mount(target, opts)
    except OSError as err:
        raise SystemFailure(f'cannot mount "{what}" on "{dest}" (rootfs {rootfs}): {error_reason(err)}') from err
    finally:
        for fd in fds:
            os.close(fd)


def error_reason(err: OSError) -> str:
    """Why a mount step failed, in the kernel's words (``no such device``):
    the libc wrapper names the call and its arguments, which the message's
    own context already says better."""
    if not err.errno:
        return os_error_message(err)
    reason = os.strerror(err.errno)
    return reason[0].lower() + reason[1:]
