"""The gofer: builds the container's root filesystem view and resolves paths inside it."""

from zentry.actors.gofer.resolve import ensure_in_root, open_in_root, resolve_in_root
from zentry.actors.gofer.rootfs import cleanup, enter_rootfs, finish_in_container, lock_down, prepare_rootfs

__all__ = [
    "cleanup",
    "ensure_in_root",
    "enter_rootfs",
    "finish_in_container",
    "lock_down",
    "open_in_root",
    "prepare_rootfs",
    "resolve_in_root",
]
