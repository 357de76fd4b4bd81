"""Blocking opens of named pipes: answered later, from a thread, when the other end is there.

The sentry opens every file non-blocking, so that no open can stall it. A
FIFO opened without O_NONBLOCK must wait for its other end, natively:

- **a writer with no reader** gets ENXIO from the non-blocking open. Its
  waiter opens again, as the tracee, every few milliseconds until a reader
  exists;
- **a reader** opens at once, but would read end-of-file before any writer
  came. Its waiter keeps that fd and polls it until a writer has written or
  come and gone.

Then the fd goes back to blocking and is installed with ADDFD|SEND, as any
mediated open. The trapped thread waits for the answer meanwhile, as it
would in the kernel; the sentry's loop serves everyone else. A waiter gives
up without answering once its notification is no longer valid (the thread
died or was killed): it checks between polls. It holds its own duplicate of
the listener, so a listener the loop closes in between is never confused
with a later file of the same number, and its own buffers and file identity
(``tracee.FsIdentity`` is per thread), since it runs beside the loop.

A reader returns when data (or the writer's close) arrives rather than when
the writer opens: the first read would wait for that anyway.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import threading
import time

from ..abi import libc
from ..abi.seccomp import (
    ADDFD,
    RESP,
    SECCOMP_ADDFD_FLAG_SEND,
    SECCOMP_IOCTL_NOTIF_ADDFD,
    SECCOMP_IOCTL_NOTIF_SEND,
    notif_id_valid,
)
from ..tracee import FsIdentity

#: how long a waiter sleeps between checks (and, for a writer, retries), at most
POLL_MS = 50


def wait_for_writer(s, lst, nid: int, fd: int, cloexec: int) -> None:
    """Answer a blocking read-only open of a FIFO (``fd``, opened non-blocking) once a writer came."""
    _start(_Waiter(lst, nid, cloexec, fd=fd))


def wait_for_reader(s, lst, nid: int, t, anchor_fd: int, rel: bytes, how: bytes, cloexec: int) -> None:
    """Answer a blocking write-only open of a FIFO that has no reader yet, once one has."""
    _start(_Waiter(lst, nid, cloexec, retry=(t, os.dup(anchor_fd), rel, how)))


def _start(waiter: "_Waiter") -> None:
    threading.Thread(target=waiter.run, name="fifo-open", daemon=True).start()


class _Waiter:
    def __init__(self, lst, nid: int, cloexec: int, *, fd: int = -1, retry: tuple | None = None) -> None:
        self.listener = os.dup(lst.fd)
        self.nid = nid
        self.cloexec = cloexec
        self.fd = fd
        self.retry = retry

    def run(self) -> None:
        try:
            if self.retry is not None:
                self._open_when_read()
            elif self._written_or_closed():
                self._answer()
        except OSError:
            pass  # the listener went away with its container: nothing left to answer
        finally:
            for fd in (self.fd, self.listener, self.retry[1] if self.retry else -1):
                if fd >= 0:
                    os.close(fd)

    def _valid(self) -> bool:
        return notif_id_valid(self.listener, self.nid)

    def _written_or_closed(self) -> bool:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while self._valid():
            if poller.poll(POLL_MS):
                return True
        return False

    def _open_when_read(self) -> None:
        t, anchor, rel, how = self.retry
        identity = FsIdentity()  # this thread's own
        delay = 0.001
        while self._valid():
            switched = identity.enter(t)
            try:
                self.fd = libc.openat2(anchor, rel, how)
            except OSError as err:
                if err.errno not in (errno.ENXIO, errno.EAGAIN):
                    self._send_error(err.errno)
                    return
            finally:
                if switched:
                    identity.leave()
            if self.fd >= 0:
                self._answer()
                return
            time.sleep(delay)
            delay = min(delay * 2, POLL_MS / 1000)

    def _answer(self) -> None:
        os.set_blocking(self.fd, True)
        buf = bytearray(ADDFD.size)
        ADDFD.pack_into(buf, 0, self.nid, SECCOMP_ADDFD_FLAG_SEND, self.fd, 0, os.O_CLOEXEC if self.cloexec else 0)
        try:
            fcntl.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_ADDFD, buf, True)
        except OSError as err:
            if err.errno != errno.ENOENT:  # e.g. EMFILE in the tracee: the call fails with it
                self._send_error(err.errno)

    def _send_error(self, err: int) -> None:
        buf = bytearray(RESP.size)
        RESP.pack_into(buf, 0, self.nid, 0, -err, 0)
        try:
            fcntl.ioctl(self.listener, SECCOMP_IOCTL_NOTIF_SEND, buf, True)
        except OSError:
            pass
