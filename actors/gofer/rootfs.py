"""The container's root filesystem view: built by the gofer, entered by the container init.

Three steps, in two processes (design.md §2, §6; notes pitfalls 9-11):

1. ``prepare_rootfs`` runs in the gofer, a single-threaded process that has
   already unshared its mount namespace: it makes the mounts private and
   binds the bundle's rootfs (or an overlay on it) onto ``mountpoint``.
2. ``mount_entries`` runs in the container init, in its own copy of the
   gofer's mount namespace and in the container's other namespaces (proc,
   sysfs, mqueue and cgroup show the mounter's), before pivot_root: every
   ``mounts`` entry in the order listed, then the devices, as runc does.
   Bind sources are cloned (open_tree) as they are mounted or, with a user
   namespace, beforehand with the host's rights (``keep_bind_sources``); the
   cgroup mount binds the container's own cgroup directories (``cgroup_binds``).
3. ``enter_rootfs`` pivots into the view (the gofer's namespace is not
   changed); ``finish_in_container`` and ``lock_down`` run as PID 1 after
   it: the /dev links, then maskedPaths, readonlyPaths and a read-only root.
"""

from __future__ import annotations

import codecs
import errno
import os
import re
import stat

from zentry.actors.gofer import devices, mounts
from zentry.actors.gofer.mounts import current_flags, parse_options
from zentry.bus.errors import ConfigError, SystemFailure
from zentry.sentry.abi import libc

L = libc

#: linux.rootfsPropagation -> flags applied (recursively) to the mountpoint;
#: runc and crun also take the "r" spellings, and so do we (same effect)
ROOTFS_PROPAGATION = {
    "private": L.MS_PRIVATE,
    "slave": L.MS_SLAVE,
    "shared": L.MS_SHARED,
    "unbindable": L.MS_UNBINDABLE,
    "rprivate": L.MS_PRIVATE,
    "rslave": L.MS_SLAVE,
    "rshared": L.MS_SHARED,
    "runbindable": L.MS_UNBINDABLE,
}


def _rootfs_path(config: dict, bundle_dir: str) -> str:
    root = config.get("root")
    path = root.get("path") if isinstance(root, dict) else None
    if not isinstance(path, str) or not path:
        raise ConfigError("config.json has no root.path")
    path = path if os.path.isabs(path) else os.path.join(bundle_dir, path)
    if not os.path.isdir(path):
        raise ConfigError(f'root.path "{path}" is not a directory')
    return path


def _mount_list(config: dict) -> list[dict]:
    entries = config.get("mounts") or []
    if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
        raise ConfigError("config.json mounts is not a list of objects")
    return entries


def _propagation(config: dict) -> int | None:
    value = (config.get("linux") or {}).get("rootfsPropagation")
    if value in (None, ""):
        return None
    if value not in ROOTFS_PROPAGATION:
        raise ConfigError(f"linux.rootfsPropagation {value!r} is not one of {', '.join(ROOTFS_PROPAGATION)}")
    return ROOTFS_PROPAGATION[value]


def _wants_devices(config: dict, entries: list[dict]) -> bool:
    """Devices are made unless /dev is bind-mounted from the host (then it has them)."""
    for entry in entries:
        if mounts.destination(entry) == "/dev" and mounts.is_bind(entry, parse_options(entry.get("options"))):
            return False
    return True


#: Annotation asking for the root to be an overlay with a tmpfs upper layer:
#: ``memory`` (tmpfs's default size) or ``memory:SIZE`` (``64m``, ``1g``…).
#: The container may write anywhere in its root; the bundle's rootfs is never
#: changed, and the writes live in memory until the container is deleted (as
#: runsc's ``--overlay2=root:memory``).
OVERLAY_ANNOTATION = "dev.zentry.rootfs.overlay"
_OVERLAY_SIZE = re.compile(r"[1-9][0-9]*[kmg]?")


def overlay_size(config: dict) -> str | None:
    """None: no overlay; "": tmpfs's default size; else the tmpfs ``size=``."""
    value = (config.get("annotations") or {}).get(OVERLAY_ANNOTATION)
    if value in (None, "", "none"):
        return None
    kind, colon, size = str(value).partition(":")
    if kind != "memory" or (colon and not _OVERLAY_SIZE.fullmatch(size)):
        raise ConfigError(f'annotation {OVERLAY_ANNOTATION}="{value}": use "memory" or "memory:SIZE" (e.g. memory:64m)')
    return size


def scratch_dir(mountpoint: str) -> str:
    """Where an overlay root keeps its tmpfs (upper and work directories)."""
    return mountpoint + ".overlay"


def _overlay_escape(path: str) -> str:
    # overlayfs splits its options at "," and lowerdir at ":"
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _mount_root(rootfs: str, mountpoint: str, size: str | None) -> None:
    if size is None:
        L.mount(rootfs, mountpoint, None, L.MS_BIND | L.MS_REC, None)
        return
    scratch = scratch_dir(mountpoint)
    os.makedirs(scratch, mode=0o700, exist_ok=True)
    L.mount("tmpfs", scratch, "tmpfs", L.MS_NOSUID | L.MS_NODEV, "mode=0700" + (f",size={size}" if size else ""))
    for sub in ("upper", "work"):
        os.mkdir(os.path.join(scratch, sub), 0o755)
    # the upper layer's root takes the rootfs root's owner and mode
    st = os.stat(rootfs)
    os.chown(os.path.join(scratch, "upper"), st.st_uid, st.st_gid)
    os.chmod(os.path.join(scratch, "upper"), stat.S_IMODE(st.st_mode))
    options = f"lowerdir={_overlay_escape(rootfs)},upperdir={_overlay_escape(scratch + '/upper')},workdir={_overlay_escape(scratch + '/work')}"
    L.mount("overlay", mountpoint, "overlay", 0, options)


def prepare_rootfs(config: dict, bundle_dir: str, mountpoint: str) -> None:
    """Build the container's root at ``mountpoint`` (gofer side): a bind of the
    bundle's rootfs (or an overlay on it), with linux.rootfsPropagation.

    The caller is alone in a mount namespace of its own: every mount made
    here stays in it. The ``mounts`` entries are made later, in the order
    listed, by the container's init (``mount_entries``), as runc makes them.
    Raises ConfigError for a bad config, SystemFailure when a mount fails.
    """
    rootfs = _rootfs_path(config, bundle_dir)
    overlay = overlay_size(config)
    mounts.check_destinations(_mount_list(config))
    propagation = _propagation(config)
    try:
        # Nothing we mount may leak to the host; a slave "/" still lets host
        # mounts appear in a slave or shared rootfs, as the spec describes.
        base = L.MS_SLAVE if propagation in (L.MS_SLAVE, L.MS_SHARED) else L.MS_PRIVATE
        L.mount(None, "/", None, L.MS_REC | base, None)
        os.makedirs(mountpoint, exist_ok=True)
        _mount_root(rootfs, mountpoint, overlay)
    except OSError as err:
        what = "mount an overlay of" if overlay is not None else "bind"
        raise SystemFailure(f'cannot {what} rootfs "{rootfs}" on "{mountpoint}": {err}') from err
    if propagation is not None:
        try:
            L.mount(None, mountpoint, None, L.MS_REC | propagation, None)
        except OSError as err:
            raise SystemFailure(f"cannot set rootfs propagation on {mountpoint}: {err}") from err


def clone_bind_sources(config: dict, bundle_dir: str) -> list[int | None]:
    """Per ``mounts`` entry, a detached copy of a bind's source (else None).

    Run while the host's paths are reachable with the host's rights, before
    a user namespace is entered (``keep_bind_sources``).
    """
    rootfs = _rootfs_path(config, bundle_dir)
    trees: list[int | None] = []
    try:
        for entry in _mount_list(config):
            trees.append(mounts.clone_source(entry, bundle_dir, rootfs))
    except BaseException:
        close_trees(trees)
        raise
    return trees


def close_trees(trees: list[int | None] | None) -> None:
    for fd in trees or []:
        if fd is not None:
            os.close(fd)


#: bind sources cloned before entering a user namespace (the init inherits them)
_kept_sources: list[int | None] | None = None


def keep_bind_sources(config: dict, bundle_dir: str, mountpoint: str) -> None:
    """Before entering a user namespace: ``clone_bind_sources`` now, for
    ``take_bind_sources`` in a forked child, and the mount points that lie in
    the bundle's rootfs made with the host's rights (the container's root
    may not be allowed to write there); those below an earlier entry are
    made in the container, on what that entry mounted."""
    global _kept_sources
    from zentry.actors.gofer.resolve import ensure_in_root

    sources = clone_bind_sources(config, bundle_dir)
    try:
        root_fd = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            earlier: list[str] = []
            for entry, tree in zip(_mount_list(config), sources):
                dest = mounts.destination(entry)
                if not any(dest == top or dest.startswith(top.rstrip("/") + "/") for top in earlier):
                    is_dir = tree is None or stat.S_ISDIR(os.fstat(tree).st_mode)
                    os.close(ensure_in_root(root_fd, dest, directory=is_dir))
                earlier.append(dest)
        finally:
            os.close(root_fd)
    except OSError as err:
        close_trees(sources)
        raise SystemFailure(f"cannot make the mount points in rootfs {mountpoint}: {err}") from err
    _kept_sources = sources


def take_bind_sources() -> list[int | None] | None:
    """The sources ``keep_bind_sources`` cloned in this process (or a parent), else None."""
    global _kept_sources
    kept, _kept_sources = _kept_sources, None
    return kept


def mount_entries(config: dict, bundle_dir: str, root: str, sources: list[int | None] | None,
                  cgroups: list[tuple[str, str]] | None) -> None:
    """Every ``mounts`` entry in the order listed, then the devices, below ``root``
    (the container's root, before pivot_root), as runc makes them.

    Run by the container's init, in the container's namespaces (proc, sysfs,
    mqueue and cgroup show the mounter's). ``sources``: ``take_bind_sources()``;
    None: each bind's source is cloned as it is mounted (the mount ids, and
    so /proc/self/mountinfo, then follow the order listed). ``cgroups``:
    ``cgroup_binds(config)``, read before a cgroup namespace.
    """
    rootfs = (config.get("root") or {}).get("path") or root
    label = (config.get("linux") or {}).get("mountLabel") or None
    entries = _mount_list(config)
    # A shared root (rootfsPropagation) is a peer of the gofer's: made private
    # while we mount, so nothing propagates back, then shared again (a new
    # peer group, as after runc's pivot).
    where = os.path.realpath(root)
    tops = [optional for point, optional in _mountinfo() if point == where]
    shared = bool(tops) and any(o.startswith("shared:") for o in tops[-1])
    if shared:
        L.mount(None, root, None, L.MS_PRIVATE, None)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, entry in enumerate(entries):
            if entry.get("type") in ("cgroup", "cgroup2") and not mounts.is_bind(entry, mounts.parse_options(entry.get("options"))):
                _mount_cgroup(root_fd, entry, cgroups)
                continue
            if sources is not None:
                tree, sources[i] = sources[i], None
            else:
                tree = mounts.clone_source(entry, bundle_dir, rootfs)
            try:
                mounts.mount_in_root(root_fd, entry, tree, rootfs, label)
            finally:
                if tree is not None:
                    os.close(tree)
        if _wants_devices(config, entries):
            devices.create_devices(root_fd, config, rootfs)
    finally:
        os.close(root_fd)
        close_trees(sources)
    if shared:
        L.mount(None, root, None, L.MS_SHARED, None)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    # codecs' builtin function, not str.decode("unicode_escape"): the codec
    # lookup imports a module, which a container init may no longer be able to do
    return codecs.unicode_escape_decode(field.encode())[0].encode("latin-1").decode(errors="surrogateescape")


def _mountinfo() -> list[tuple[str, list[str]]]:
    """(mount point, optional fields) of every mount, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), fields[6:sep]))
    return out


def enter_rootfs(mountpoint: str, *, user_ns: bool = False) -> None:
    """Make ``mountpoint`` the process's "/" (pivot_root; old root detached).

    The caller must be single-threaded, in a mount namespace that is its own
    copy of the gofer's (setns, then unshare(CLONE_NEWNS)).

    ``user_ns``: the copy belongs to the container's user namespace. Its
    mounts came from a more privileged namespace and are locked, and
    pivot_root refuses a locked new root, so the root is first bound onto
    itself (a mount made here is not locked; the locked ones below it stay
    locked). Its path may not be searchable by the container's root (the
    state directory is 0700), so the caller is already in it: it changed
    directory there before entering the user namespace, and unshare moved
    its cwd into the copy. The old root is left stacked on "/" for
    ``detach_old_root``: proc and sysfs can be mounted in a user namespace
    only while a fully visible instance (the host's, in the old root) is in
    the mount namespace.
    """
    try:
        mountpoint = os.path.realpath(mountpoint)
        if user_ns:
            _bind_cwd_onto_itself()
        else:
            os.chdir(mountpoint)
        tops = [optional for point, optional in _mountinfo() if point == mountpoint]
        # pivot_root refuses a shared new root; it becomes shared again (a new
        # peer group) once pivoted, which is what rootfsPropagation=shared asks.
        shared = bool(tops) and any(o.startswith("shared:") for o in tops[-1])
        if shared:
            L.mount(None, ".", None, L.MS_PRIVATE, None)
        # pivot_root(".", ".") stacks the old root on top of the new one;
        # detaching "." then drops it without needing a put_old directory.
        L.pivot_root(".", ".")
        if not user_ns:
            L.umount2(".", L.MNT_DETACH)
        os.chdir("/")
        if shared:
            L.mount(None, "/", None, L.MS_SHARED, None)
    except OSError as err:
        raise SystemFailure(f'cannot enter rootfs "{mountpoint}": {err}') from err


def _bind_cwd_onto_itself() -> None:
    """Recursively bind the current directory onto itself and move into the new mount.

    open_tree + move_mount rather than mount(".", "."): the new mount is
    reached through the tree's fd, without a path walk from a parent.
    """
    tree = mounts.clone_tree(".")
    try:
        mounts.attach_at(tree, ".")
        os.fchdir(tree)
    finally:
        os.close(tree)


def carry_root_into(mountpoint: str, ns_path: str) -> None:
    """Join the mount namespace at ``ns_path`` (linux.namespaces ``mount`` with a
    path) and attach there, at the same path, a copy of the root prepared at
    ``mountpoint``; ``enter_rootfs`` then pivots into it, in that namespace,
    as runc does (its other processes whose root was the old one follow the
    pivot: the kernel's rule). The path must exist in that namespace."""
    try:
        tree = mounts.clone_tree(mountpoint)
    except OSError as err:
        raise SystemFailure(f'cannot copy the container\'s root "{mountpoint}": {err}') from err
    try:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            L.setns(fd, L.CLONE_NEWNS)
        finally:
            os.close(fd)
        if not os.path.isdir(mountpoint):
            raise SystemFailure(f'cannot use mount namespace "{ns_path}": the container\'s root "{mountpoint}" is not in it')
        mounts.attach_at(tree, mountpoint)
    except OSError as err:
        raise SystemFailure(f'cannot join mount namespace "{ns_path}": {err}') from err
    finally:
        os.close(tree)


def detach_old_root() -> None:
    """Drop the old root that ``enter_rootfs(user_ns=True)`` left stacked on "/"."""
    try:
        os.chdir("/")
        # "/" resolves to the container's root; "." as a mount target to the
        # mount on top of it: the old root.
        L.umount2(".", L.MNT_DETACH)
    except OSError as err:
        raise SystemFailure(f"cannot detach the host's root from the container: {err}") from err


def own_cgroup_dirs() -> list[tuple[str, str]]:
    """(name, host directory) of this process's own cgroup in each cgroup v1 hierarchy.

    ``name`` is the hierarchy's directory under the host's /sys/fs/cgroup
    (``pids``, ``cpu,cpuacct``, ``systemd``), as runc names the binds. Read
    before the process enters a cgroup namespace (which rewrites both files).
    The v2 part of a hybrid host is left out, as runc leaves it out.
    """
    try:
        with open("/proc/cgroups") as f:
            known = {line.split()[0] for line in f if line.strip() and not line.startswith("#")}
        with open("/proc/self/cgroup") as f:
            own = {}
            for line in f:
                hid, controllers, path = line.rstrip("\n").split(":", 2)
                if hid != "0":
                    own[frozenset(controllers.split(","))] = path
        with open("/proc/self/mountinfo") as f:
            infos = [line.split() for line in f]
    except OSError as err:
        raise SystemFailure(f"cannot find the container's cgroups: {err}") from err
    out, seen = [], set()
    for fields in infos:
        sep = fields.index("-")
        if fields[sep + 1] != "cgroup":
            continue
        key = frozenset(o for o in fields[sep + 3].split(",") if o in known or o.startswith("name="))
        if key not in own or key in seen:
            continue
        seen.add(key)
        root, point = _unescape(fields[3]), _unescape(fields[4])
        rel = os.path.relpath(own[key], root)
        if rel == ".." or rel.startswith("../"):
            continue  # our cgroup is not below this mount of the hierarchy
        out.append((os.path.basename(point), os.path.normpath(os.path.join(point, rel))))
    return out


def cgroup_binds(config: dict) -> list[tuple[str, str]] | None:
    """``own_cgroup_dirs`` when the config mounts cgroups on a v1 (or hybrid)
    host, else None (nothing to bind: no cgroup mount, or a cgroup2 host).
    ``mount_entries`` binds them (a clone of each, made as it is mounted)."""
    if not any(entry.get("type") == "cgroup" for entry in _mount_list(config)):
        return None
    return own_cgroup_dirs() or None


def _has_v1_hierarchies() -> bool:
    with open("/proc/self/cgroup") as f:
        return any(not line.startswith("0:") for line in f if line.strip())


def _mount_cgroup(root_fd: int, entry: dict, dirs: list[tuple[str, str]] | None) -> None:
    """cgroup v2 as is; on a v1 (or hybrid) host, as runc: a tmpfs holding a bind of
    the container's own cgroup in each hierarchy (read-only unless the entry says
    rw), and a link per controller of a co-mounted hierarchy (cpu -> cpu,cpuacct)."""
    from zentry.actors.gofer.resolve import ensure_in_root, open_in_root

    dest = mounts.destination(entry)
    fstype = entry.get("type")
    opts = mounts.parse_options(entry.get("options"))
    fds: list[int] = []
    try:
        fds.append(ensure_in_root(root_fd, dest, directory=True))
        if dirs is None and fstype == "cgroup" and _has_v1_hierarchies():
            raise SystemFailure("the container's cgroups were not found before its mounts (cgroup_binds)")
        if fstype == "cgroup2" or dirs is None:
            L.mount("cgroup2", mounts.fd_path(fds[0]), "cgroup2", opts.flags, opts.data_string)
            return
        L.mount("tmpfs", mounts.fd_path(fds[0]), "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "mode=755")
        fds.append(open_in_root(root_fd, dest, os.O_RDONLY | os.O_DIRECTORY))
        top = fds[-1]
        for name, path in dirs:
            os.mkdir(name, 0o755, dir_fd=top)
            # a bind of our own cgroup, cloned by path (a cgroup namespace
            # changes what /proc shows, not what paths reach)
            tree = mounts.clone_tree(path)
            sub = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=top)
            try:
                mounts.attach(tree, sub)
            finally:
                os.close(sub)
                os.close(tree)
            sub = os.open(name, os.O_PATH | os.O_CLOEXEC, dir_fd=top)  # the bind, not the directory below it
            try:
                mounts.remount_bind(mounts.fd_path(sub), opts.flags & mounts.PER_MOUNT_FLAGS, opts.clear)
            finally:
                os.close(sub)
        for name, _ in dirs:
            for alias in name.split(",") if "," in name else []:
                try:
                    os.symlink(name, alias, dir_fd=top)
                except FileExistsError:
                    pass
        os.chmod(mounts.fd_path(top), 0o555)  # what runc's containers see
    except OSError as err:
        raise SystemFailure(f'cannot mount "{fstype}" on "{dest}" in the container: {mounts.error_reason(err)}') from err
    finally:
        for fd in fds:
            os.close(fd)


def mask_path(path: str) -> None:
    """Hide ``path``: /dev/null over a file, an empty read-only tmpfs over a directory."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            L.mount("tmpfs", path, "tmpfs", L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, None)
        else:
            L.mount("/dev/null", path, None, L.MS_BIND, None)
    except OSError as err:
        raise SystemFailure(f'cannot mask "{path}": {err}') from err


def readonly_path(path: str) -> None:
    """Make ``path`` (and what is mounted below it) read-only; a missing path is ignored."""
    try:
        L.mount(path, path, None, L.MS_BIND | L.MS_REC, None)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return
        raise SystemFailure(f'cannot make "{path}" read-only: {err}') from err
    try:
        mounts.remount_bind(path, L.MS_RDONLY)
    except OSError as err:
        raise SystemFailure(f'cannot make "{path}" read-only: {err}') from err


def finish_in_container(config: dict) -> None:
    """After the pivot: the /dev links into the container's /proc (runtime-linux.md).

    What runc does between its mounts and its lock-down (the console,
    hostname, sysctls, the cwd) comes next; then ``lock_down``.
    """
    devices.create_dev_symlinks()


def make_cwd(cwd: str) -> None:
    """Create process.cwd (as the container's root, before the root may turn read-only)."""
    try:
        os.makedirs(cwd, mode=0o755, exist_ok=True)
    except OSError as err:
        raise SystemFailure(f'cannot create the working directory "{cwd}": {err.strerror}') from err


def lock_down(config: dict) -> None:
    """readonlyPaths, maskedPaths and a read-only root: the last rootfs step, in runc's order."""
    linux = config.get("linux") or {}
    for path in linux.get("readonlyPaths") or []:
        readonly_path(path)
    for path in linux.get("maskedPaths") or []:
        mask_path(path)
    if (config.get("root") or {}).get("readonly"):
        try:
            L.mount(None, "/", None, L.MS_REMOUNT | L.MS_BIND | L.MS_RDONLY | current_flags("/"), None)
        except OSError as err:
            raise SystemFailure(f"cannot make the root filesystem read-only: {err}") from err


def cleanup(mountpoint: str) -> None:
    """Best effort: lazily unmount everything at and below ``mountpoint`` (and an
    overlay root's tmpfs), and remove the overlay's directory."""
    for where in (mountpoint, scratch_dir(mountpoint)):
        for _ in range(1000):  # stacked mounts are detached one at a time
            try:
                L.umount2(where, L.MNT_DETACH)
            except OSError:
                break
    try:
        os.rmdir(scratch_dir(mountpoint))
    except OSError:
        pass
