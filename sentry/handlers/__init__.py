"""Syscall handlers, grouped by family; ``HANDLERS`` maps the table's handler names to them.

A handler is ``handler(sentry, listener, notif_id, tid, args) -> (val, errno) | None``:
``(val, 0)`` completes the call with ``val``, ``(0, e)`` fails it with ``e``,
``fs.CONTINUE`` lets the kernel run it (only for decisions made without tracee memory),
``None`` means the handler already completed it (ADDFD|SEND) or the thread is
gone. Handlers set ``sentry.decoded`` to the decoded arguments (for strace).

``NATIVE`` maps a handler name to its fast-path form for the C loop
(``sentry/_fast.c``): ``make(listener) -> (kind, ...)``. ``("write", k, data, v)``:
write ``data`` at the address in argument k, return v (the answer must not
change while the listener lives). ``("open", dirfd_arg, path_arg, flags_arg,
fixed_flags, mode_arg)`` (-1: no such argument; AT_FDCWD / ``fixed_flags``):
``fs.mediate_open`` with ``legacy=True`` for a path that is neither under
/proc/ nor /dev/ (as the tracee's fsuid/fsgid/groups, like ``FsIdentity``);
the C loop hands every other case back to the Python handler. A handler not listed here always runs in Python.
"""

from __future__ import annotations

import os

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

NATIVE = {
    "emulate.uname": lambda lst: ("write", 0, lst.utsname, 0),
    "fs.open": lambda lst: ("open", -1, 0, 1, 0, 2),
    "fs.openat": lambda lst: ("open", 0, 1, 2, 0, 3),
    "fs.creat": lambda lst: ("open", -1, 0, -1, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 1),
}
