"""Path resolution inside a container root: a path from the container never leaves it.

Every path is interpreted as if ``root`` were ``/``: ``..`` stops at the root,
absolute symlink targets restart at the root, and symlink chains are followed
(at most ``MAXSYMLINKS`` links, then ``ELOOP``) one component at a time through
file descriptors, so no intermediate string is ever handed to the kernel for a
whole-path lookup on the host.

- ``resolve_in_root`` returns the host path (for messages and tests).
- ``ensure_in_root`` returns an ``O_PATH`` fd of the object, creating what is
  missing; the gofer mounts on ``/proc/self/fd/N`` of that fd, never on a
  string it resolved earlier.
- ``open_in_root`` is the kernel's own version (``openat2`` with
  ``RESOLVE_IN_ROOT``), used to serve file requests from the container.
"""

from __future__ import annotations

import errno
import os
import stat

from zentry.sentry.abi import libc

#: Linux's own limit on symlinks followed in one lookup (MAXSYMLINKS).
MAXSYMLINKS = 40

_OPATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


def _walk(root_fd: int, path: str, create: str | None, mode: int) -> tuple[list[str], int]:
    """Follow ``path`` below ``root_fd``; returns (names inside the root, fd or -1).

    ``create``: None (nothing is created; a missing tail is appended lexically
    and the fd is -1), ``"dir"`` (missing components become directories) or
    ``"file"`` (missing parents become directories, a missing last component an
    empty regular file). The returned fd is an ``O_PATH`` fd the caller closes.
    """
    todo = _components(path)
    todo.reverse()  # a stack: the next component is todo[-1]
    names: list[str] = []
    fds: list[int] = [os.dup(root_fd)]  # fds[i] is the directory reached by names[:i]
    links = 0
    creations = 0
    try:
        while todo:
            comp = todo.pop()
            if comp == "..":
                if names:
                    names.pop()
                    os.close(fds.pop())
                continue
            parent = fds[-1]
            try:
                fd = os.open(comp, _OPATH, dir_fd=parent)
            except FileNotFoundError:
                if create is None:
                    names.append(comp)
                    for rest in reversed(todo):
                        if rest == "..":
                            if names:
                                names.pop()
                        else:
                            names.append(rest)
                    return names, -1
                creations += 1
                if creations > 4 * (MAXSYMLINKS + len(path)):
                    raise OSError(errno.ELOOP, f"cannot create {path!r} in root: it keeps changing") from None
                try:
                    if todo or create == "dir":
                        os.mkdir(comp, mode, dir_fd=parent)
                    else:
                        os.close(os.open(comp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent))
                except FileExistsError:
                    pass  # created meanwhile, or a dangling symlink: look again
                todo.append(comp)
                continue
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                links += 1
                if links > MAXSYMLINKS:
                    raise OSError(errno.ELOOP, f"too many levels of symbolic links resolving {path!r} in root")
                target = os.readlink(comp, dir_fd=parent)
                if target.startswith("/"):
                    while names:
                        names.pop()
                        os.close(fds.pop())
                todo.extend(reversed(_components(target)))
                continue
            if todo and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise OSError(errno.ENOTDIR, f"not a directory: {'/' + '/'.join(names + [comp])!r} resolving {path!r} in root")
            names.append(comp)
            fds.append(fd)
        return names, os.dup(fds[-1])
    finally:
        for fd in fds:
            os.close(fd)


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` interpreted inside ``root``; never outside ``root``.

    Symlinks are followed relative to ``root``; a missing tail is appended as
    is. Raises ``OSError`` (``ELOOP`` for a loop, ``ENOTDIR`` ...).
    """
    root = os.path.abspath(root)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        names, fd = _walk(root_fd, path, None, 0)
    finally:
        os.close(root_fd)
    if fd >= 0:
        os.close(fd)
    return os.path.join(root, *names) if names else root


def ensure_in_root(root_fd: int, path: str, directory: bool = True, mode: int = 0o755) -> int:
    """An ``O_PATH`` fd of ``path`` inside ``root_fd``, created if missing.

    Missing parents become directories (``mode``); a missing last component
    becomes a directory, or an empty file when ``directory`` is false. An
    existing object of either type is returned as it is.
    """
    return _walk(root_fd, path, "dir" if directory else "file", mode)[1]


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(root_fd, path, flags, RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS).

    The kernel resolves ``path`` as if ``root_fd`` were ``/`` (no ``..``,
    symlink or magic-link escape); ``O_CLOEXEC`` is always added.
    """
    return libc.openat2_resolve(
        root_fd, path, flags | os.O_CLOEXEC, mode, libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    )
