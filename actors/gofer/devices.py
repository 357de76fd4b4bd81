"""The container's /dev: default devices, linux.devices, and the /dev links.

Default devices (runtime-linux.md) and ``linux.devices`` entries are made
with mknod, as runc makes them, and fall back to a bind mount of the host's
node at the same path where mknod is refused; with a user namespace the
host's nodes are bound (as runc does there).
"""

from __future__ import annotations

import os
import posixpath
import stat

from zentry.actors.gofer.mounts import container_path, fd_path
from zentry.actors.gofer.resolve import ensure_in_root
from zentry.bus.errors import ConfigError, SystemFailure
from zentry.sentry.abi import libc

#: runtime-linux.md: every container gets these (ptmx is a link into /dev/pts)
DEFAULT_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty")

#: runtime-linux.md "Dev symbolic links": link -> target, made when /proc is mounted
DEV_SYMLINKS = (
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
)

_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def _bind_host_node(root_fd: int, path: str, host_path: str) -> None:
    fd = ensure_in_root(root_fd, path, directory=False)
    try:
        libc.mount(host_path, fd_path(fd), None, libc.MS_BIND, None)
    finally:
        os.close(fd)


def _parse_device(dev: dict) -> tuple[str, int, int, int, int, int]:
    """(path, S_IF* type, rdev, permission bits, uid, gid) of a linux.devices entry."""
    if not isinstance(dev, dict):
        raise ConfigError(f"linux.devices entry {dev!r} is not an object")
    path = dev.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"linux.devices entry {dev!r} has no path")
    if ".." in path.split("/"):
        # normalising would make "/dev/../../etc/x" the root's /etc/x
        raise ConfigError(f'device "{path}": a path with ".." components is not allowed')
    kind = _TYPES.get(dev.get("type"))
    if kind is None:
        raise ConfigError(f'device "{path}": type {dev.get("type")!r} is not one of c, b, u, p')
    if kind == stat.S_IFIFO:
        rdev = 0
    else:
        major, minor = dev.get("major"), dev.get("minor")
        if not isinstance(major, int) or not isinstance(minor, int):
            raise ConfigError(f'device "{path}": major and minor are required for type {dev["type"]}')
        rdev = os.makedev(major, minor)
    mode = dev.get("fileMode", 0o666)
    if not isinstance(mode, int):
        raise ConfigError(f'device "{path}": fileMode {mode!r} is not a number')
    return container_path(path), kind, rdev, mode & 0o7777, int(dev.get("uid", 0)), int(dev.get("gid", 0))


def make_device(root_fd: int, dev: dict, *, bind_only: bool = False) -> None:
    """Create one linux.devices entry inside the root (mknod, else bind from the host).

    ``bind_only`` (a container with a user namespace): the host's node is
    bound, as runc does there; a node made by mknod would be owned by ids
    the config gives as container ids.
    """
    path, kind, rdev, mode, uid, gid = _parse_device(dev)
    if bind_only:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise ConfigError(f'device "{path}": not on the host (a container with a user namespace gets the host\'s node bound)') from None
        if stat.S_IFMT(st.st_mode) != kind or (kind != stat.S_IFIFO and st.st_rdev != rdev):
            raise ConfigError(f'device "{path}": the host\'s node is not this device (a container with a user namespace gets the host\'s node bound)')
        _bind_host_node(root_fd, path, path)
        return
    parent, name = posixpath.split(path)
    dir_fd = ensure_in_root(root_fd, parent, directory=True)
    try:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if stat.S_IFMT(st.st_mode) == kind and (kind == stat.S_IFIFO or st.st_rdev == rdev):
                return
            raise ConfigError(f'device "{path}": a file that is not this device already exists there')
        try:
            os.mknod(name, kind | mode, rdev, dir_fd=dir_fd)
        except PermissionError:
            if not os.path.exists(path):
                raise
            _bind_host_node(root_fd, path, path)
            return
        os.chmod(name, mode, dir_fd=dir_fd)  # mknod applied the umask
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)


def _make_default_device(root_fd: int, path: str) -> None:
    """A default device as runc makes it outside a user namespace: a node (mknod,
    0666, root's) with the host's numbers; over a file that is something else,
    or where mknod is refused, the host's node bound."""
    rdev = os.stat(path).st_rdev
    dev = {"path": path, "type": "c", "major": os.major(rdev), "minor": os.minor(rdev), "fileMode": 0o666, "uid": 0, "gid": 0}
    try:
        make_device(root_fd, dev)
    except ConfigError:
        _bind_host_node(root_fd, path, path)


def create_devices(root_fd: int, config: dict, rootfs: str) -> None:
    """Default devices, linux.devices and /dev/ptmx inside the root at ``root_fd``."""
    devices = (config.get("linux") or {}).get("devices") or []
    if not isinstance(devices, list):
        raise ConfigError("linux.devices is not a list")
    listed = {container_path(d["path"]) for d in devices if isinstance(d, dict) and isinstance(d.get("path"), str)}
    bind_only = any(isinstance(ns, dict) and ns.get("type") == "user" for ns in (config.get("linux") or {}).get("namespaces") or [])
    for path in DEFAULT_DEVICES:
        if path in listed:
            continue
        try:
            if bind_only:
                _bind_host_node(root_fd, path, path)
            else:
                _make_default_device(root_fd, path)
        except OSError as err:
            raise SystemFailure(f'cannot create device "{path}" (rootfs {rootfs}): {err}') from err
    for dev in devices:
        try:
            make_device(root_fd, dev, bind_only=bind_only)
        except OSError as err:
            raise SystemFailure(f'cannot create device "{dev.get("path")}" (rootfs {rootfs}): {err}') from err
    dev_fd = ensure_in_root(root_fd, "/dev", directory=True)
    try:
        try:
            os.stat("ptmx", dir_fd=dev_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.symlink("pts/ptmx", "ptmx", dir_fd=dev_fd)
    except OSError as err:
        raise SystemFailure(f'cannot link "/dev/ptmx" (rootfs {rootfs}): {err}') from err
    finally:
        os.close(dev_fd)


def create_dev_symlinks() -> None:
    """/dev/fd, /dev/stdin... inside the container, once /proc is there (runtime-linux.md)."""
    if not os.path.isdir("/proc/self/fd") or not os.path.isdir("/dev"):
        return
    for link, target in DEV_SYMLINKS:
        if os.path.lexists(link):
            continue
        try:
            os.symlink(target, link)
        except OSError as err:
            raise SystemFailure(f'cannot link "{link}" to "{target}": {err}') from err


def bind_console(pty: str) -> None:
    """/dev/console: the container's terminal (a pty slave of its devpts) bound
    over an empty file, as runtime-linux.md asks when process.terminal is set."""
    try:
        if not os.path.lexists("/dev/console"):
            os.close(os.open("/dev/console", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
        libc.mount(pty, "/dev/console", None, libc.MS_BIND, None)
    except OSError as err:
        raise SystemFailure(f'cannot bind the terminal "{pty}" on "/dev/console": {err}') from err
