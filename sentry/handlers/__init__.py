"""Syscall handlers, grouped by family; ``HANDLERS`` maps the table's handler names to them.

A handler is ``handler(sentry, listener, notif_id, tid, args) -> (val, errno) | None``:
``(val, 0)`` completes the call with ``val``, ``(0, e)`` fails it with ``e``,
``fs.CONTINUE`` lets the kernel run it as the tracee (never for a call the
sentry refuses or changes), ``None`` means the thread is gone (nothing to answer). Handlers set ``sentry.decoded`` to the
decoded arguments (for strace).

``NATIVE`` maps a handler name to its fast-path form for the C loop
(``sentry/_fast.c``): ``make(listener) -> (kind, ...)``. ``("write", k, data, v)``:
write ``data`` at the address in argument k, return v (the answer must not
change while the listener lives). ``("open", k)``: CONTINUE (the path, in
argument k, is read only by the Python handler, for strace). A handler not listed here always runs
in Python.
"""

from __future__ import annotations

from . import emulate, fs

HANDLERS = {
    "fs.open": fs.open_,
    "fs.openat": fs.openat,
    "fs.openat2": fs.openat2,
    "fs.creat": fs.creat,
    "emulate.uname": emulate.uname,
    "emulate.sysinfo": emulate.sysinfo,
}

NATIVE = {
    "emulate.uname": lambda lst: ("write", 0, lst.utsname, 0),
    "fs.open": lambda lst: ("open", 0),
    "fs.openat": lambda lst: ("open", 1),
    "fs.openat2": lambda lst: ("open", 1),
    "fs.creat": lambda lst: ("open", 0),
}
