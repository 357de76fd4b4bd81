"""Syscall handlers, grouped by family; ``HANDLERS`` maps the table's handler names to them.

A handler is ``handler(sentry, listener, notif_id, tid, args) -> (val, errno) | None``:
``(val, 0)`` completes the call with ``val``, ``(0, e)`` fails it with ``e``,
``fs.CONTINUE`` lets the kernel run it (only for decisions made without tracee memory),
``None`` means the handler already completed it (ADDFD|SEND) or the thread is
gone. Handlers set ``sentry.decoded`` to the decoded arguments (for strace).
"""

from __future__ import annotations

from . import emulate, fs

HANDLERS = {
    "fs.open": fs.open_,
    "fs.openat": fs.openat,
    "fs.openat2": fs.openat2,
    "fs.creat": fs.creat,
    "fs.chroot": fs.chroot,
    "emulate.uname": emulate.uname,
    "emulate.sysinfo": emulate.sysinfo,
}
