"""The sentry: the seccomp user-notification server that answers trapped syscalls.

One ``Sentry`` runs in a dedicated thread of the sandbox actor and serves any
number of listener fds (one per container init, plus exec'd processes),
multiplexed with ``poll``. For each notification it runs the handler the
syscall table names (``handlers.HANDLERS``) and answers with
``SECCOMP_IOCTL_NOTIF_SEND``. It answers CONTINUE (the kernel
runs the call as the tracee) for every open it observes (``handlers.fs``;
opens are trapped only in containers created with strace on), and never for a call it refuses or changes
(pitfall 6): a race on the memory it read can then only get the tracee the
real file with its own rights.

The hot loop follows docs/notes "seccomp-notify": preallocated buffers,
``fcntl.ioctl`` on them, ``SET_FLAGS(SYNC_WAKE_UP)`` on every listener, the
receive buffer zeroed before every RECV (pitfall 3), ``ID_VALID`` after every
tracee-memory read, ENOENT from RECV/SEND taken as "the thread is gone"
(pitfall 5), several pending notifications served one by one (level-triggered
poll), per-call strace cost when off: one bool test.

Native fast path (``_fast.c``, built at install): when the extension is
there, the loop itself runs in C with the GIL released: it polls, RECVs and
answers from per-listener tables Python builds from ``handlers.NATIVE``
(uname: write precomputed bytes; the open family, trapped only in a container
created with strace on: CONTINUE). Every other notification -- all of them
while strace is on -- is copied into
``self._notif`` and handled here exactly as without the extension. Python
keeps the policy, the slow path and the fail-closed handling.

Confined: the thread's first act is to drop its capabilities and load its
own seccomp allowlist (``confine.confine_thread``; per thread, no TSYNC: the
rest of the process is not bound by it), and ``start()`` returns only once it has, raising if it
could not: the sentry never serves a notification unconfined. Everything
the loop, the handlers, ``on_event`` and ``on_fatal`` do on this thread must
stay within ``confine.ALLOWED`` (anything else fails with EPERM).

Fail closed (pitfall 4): if a listener closes while its container runs, the
trapped calls return ENOSYS and the program runs on unmediated. So:

* a listener that fails (RECV error other than ENOENT/EINTR, POLLNVAL/ERR)
  has its container killed (SIGKILL to ``ContainerView.init_pid`` through a
  pidfd taken at ``add_listener``; the container's pid namespace takes every
  other process with it) and then ``on_fatal(container_id, exc)`` is called;
* if the sentry thread itself dies, the same happens for every listener;
* ``stop()`` kills the containers still attached before closing listeners;
* if the whole sandbox process dies, the listener closes with it: the
  container init must have been started with ``PR_SET_PDEATHSIG(SIGKILL)``
  by the process hosting the sentry (``filter.install`` callers do this; note
  that the death signal follows the *thread* that forked the init), and the
  pid namespace propagates the kill to the init's descendants.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import threading
import time
from typing import Callable

from zentry.bus.log import get_logger
from zentry.bus.value import Value

from . import confine
from .abi import libc
from .abi.seccomp import (
    NOTIF,
    RESP,
    SECCOMP_IOCTL_NOTIF_RECV,
    SECCOMP_IOCTL_NOTIF_SEND,
    SECCOMP_IOCTL_NOTIF_SET_FLAGS,
    SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
    notif_id_valid,
)
from .abi.syscalls import MAX_NR, name as syscall_name
from .handlers import HANDLERS, NATIVE
from .handlers.emulate import utsname_bytes
from .table import TABLE, SyscallTable
from .tracee import Memory, Tracees

log = get_logger("zentry.sentry")

try:
    from . import _fast
except ImportError:  # not built: the pure-Python loop serves everything
    _fast = None
#: the interface version of _fast.c this file speaks (a stale build is not used)
NATIVE_ABI = 6


def native_available() -> bool:
    """Whether the native fast path (``zentry.sentry._fast``) is built and current."""
    return _fast is not None and getattr(_fast, "ABI", None) == NATIVE_ABI

#: the sentry thread's name (its ``comm``, at most 15 bytes)
THREAD_NAME = b"zentry-sentry"
_ZERO_NOTIF = bytes(NOTIF.size)
_POLL_IN = select.POLLIN
_POLL_BAD = select.POLLHUP | select.POLLERR | select.POLLNVAL


class ContainerView(Value):
    """What the sentry needs to know about the container behind a listener.

    ``init_pid``: host pid of the container init, killed (SIGKILL) when the
    listener fails, and whose procfs lists the container's pids (loadavg);
    ``memory_usage_bytes``: current memory use in bytes (cgroup
    ``memory.current``/``usage_in_bytes``), for MemFree.
    """

    __slots__ = ("container_id", "hostname", "domainname", "memory_limit_bytes", "cpu_quota_us", "cpu_period_us", "cpuset", "init_pid", "memory_usage_bytes")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, container_id: str, hostname: str, domainname: str = "", memory_limit_bytes: int | None = None,
                 cpu_quota_us: int | None = None, cpu_period_us: int | None = None, cpuset: str | None = None,
                 init_pid: int | None = None, memory_usage_bytes: Callable[[], int] | None = None) -> None:
        self.container_id = container_id
        self.hostname = hostname
        self.domainname = domainname
        self.memory_limit_bytes = memory_limit_bytes
        self.cpu_quota_us = cpu_quota_us
        self.cpu_period_us = cpu_period_us
        self.cpuset = cpuset
        self.init_pid = init_pid
        self.memory_usage_bytes = memory_usage_bytes


class ListenerFailed(Exception):
    """A listener fd became unusable (closed, error) while its container ran."""


class _Listener:
    __slots__ = ("fd", "view", "utsname", "pidfd", "idbuf")

    def __init__(self, fd: int, view: ContainerView) -> None:
        self.fd = fd
        self.view = view
        self.utsname = utsname_bytes(view)
        self.idbuf = bytearray(8)
        self.pidfd = -1
        if view.init_pid:
            try:
                self.pidfd = libc.pidfd_open(view.init_pid)
            except OSError as err:
                log.warning("no pidfd for init %s of %s: %s", view.init_pid, view.container_id, err)


class Sentry:
    """The notification server. ``start()`` it, ``add_listener()`` fds, ``stop()`` it."""

    def __init__(
        self,
        on_event: Callable[[dict], None] | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
        table: SyscallTable = TABLE,
        native: bool | None = None,
    ) -> None:
        """``native``: use the C fast path (None: when built; True: required; False: never)."""
        self.on_event = on_event
        self.on_fatal = on_fatal
        self._strace = False
        self._dispatch: list = [None] * (MAX_NR + 1)
        self._handler_names = table.trapped()
        for nr, handler in self._handler_names.items():
            self._dispatch[nr] = HANDLERS[handler]
        self._listeners: dict[int, _Listener] = {}
        self._pending: list[_Listener] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if native and not native_available():
            raise RuntimeError("the native sentry loop (zentry.sentry._fast) is not built or is stale")
        self._native = _fast.Loop(self._wake_r, MAX_NR) if native_available() and native is not False else None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # per-call state and preallocated buffers (sentry thread only)
        self.mem = Memory()
        self.tracees = Tracees()
        self.decoded: tuple | None = None
        self._notif = bytearray(NOTIF.size)
        self._resp = bytearray(RESP.size)
        # statistics, indexed by syscall number
        self._n_trapped = [0] * (MAX_NR + 1)
        self._n_errors = [0] * (MAX_NR + 1)
        self._n_refused = [0] * (MAX_NR + 1)
        self._n_continued = [0] * (MAX_NR + 1)
        self._n_unknown = 0

    # --- control (any thread) -----------------------------------------------------------
    def add_listener(self, fd: int, container: ContainerView) -> None:
        """Serve a listener fd (the Sentry owns it from now on and closes it)."""
        fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
        os.set_inheritable(fd, False)
        lst = _Listener(fd, container)
        with self._lock:
            self._pending.append(lst)
        self._wake()

    def start(self) -> None:
        """Start the sentry thread; returns once it has confined itself (``confine``), raises if it cannot."""
        if self._thread is not None:
            raise RuntimeError("sentry already started")
        prog = confine.program()  # compiled here: the confined thread could not (libseccomp opens a memfd)
        confined = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(prog, confined), name=THREAD_NAME.decode(), daemon=True)
        self._thread.start()
        confined.wait()
        if self.error is not None:
            self._thread.join()
            raise RuntimeError(f"the sentry thread cannot confine itself: {self.error}") from self.error

    def stop(self, timeout: float = 5.0, *, kill_tracees: bool = True) -> None:
        """Stop serving. Containers still attached are killed first (fail closed)."""
        self._kill_on_exit = kill_tracees
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        if (self._thread is None or not self._thread.is_alive()) and self._wake_w >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def set_strace(self, on: bool) -> None:
        """Report every trapped call to ``on_event`` (off by default; switchable at run time)."""
        self._strace = bool(on) and self.on_event is not None
        if self._native is not None:
            self._native.fast = 0 if self._strace else 1  # strace: every notification comes to Python

    @property
    def native(self) -> bool:
        """Whether notifications are received and (on the fast path) answered by the C loop."""
        return self._native is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def listeners(self) -> list[str]:
        with self._lock:
            return [l.view.container_id for l in self._listeners.values()] + [l.view.container_id for l in self._pending]

    def stats(self) -> dict:
        """Counts by syscall name: trapped, refused (no handler), errors (answered with an errno), continued
        (run by the kernel as the tracee), and which of the trapped calls the
        native fast path answered."""

        def by_name(counts: list[int], extra: list[int] | None = None) -> dict[str, int]:
            if extra is not None:
                counts = [a + b for a, b in zip(counts, extra)]
            return {syscall_name(nr): n for nr, n in enumerate(counts) if n}

        n_trapped = n_errors = n_continued = None
        if self._native is not None:
            n_trapped, n_errors, n_continued = self._native.counts()
        return {
            "trapped": by_name(self._n_trapped, n_trapped),
            "refused": by_name(self._n_refused),
            "errors": by_name(self._n_errors, n_errors),
            "continued": by_name(self._n_continued, n_continued),
            #: of "trapped", the calls the native fast path answered without Python
            "native": by_name(n_trapped) if n_trapped is not None else {},
            "listeners": len(self._listeners) + len(self._pending),
        }

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # full (it is awake anyway) or already closed
            pass

    # --- the loop (sentry thread) -------------------------------------------------------
    def _main(self, prog, confined: threading.Event) -> None:
        try:
            name = ctypes.create_string_buffer(THREAD_NAME)
            libc.prctl(libc.PR_SET_NAME, ctypes.addressof(name))  # ps -L, /proc/PID/task/TID/comm
            confine.confine_thread(prog)
        except OSError as exc:  # serve nothing unconfined: start() raises
            self.error = exc
            return
        finally:
            confined.set()
        try:
            self._loop()
        except BaseException as exc:  # the thread is dying: fail closed for every container
            self.error = exc
            log.exception("sentry thread died")
            for lst in list(self._listeners.values()) + self._pending:
                self._fail(lst, exc)
        finally:
            kill = getattr(self, "_kill_on_exit", True)
            for lst in list(self._listeners.values()) + self._take_pending():
                if kill:
                    self._kill(lst)
                self._close(lst)
            self.tracees.clear()
            # The wake pipe stays open: other threads may still write to it;
            # stop() closes it once this thread has ended.

    def _woken(self) -> list[_Listener]:
        """The wake pipe fired: empty it; the listeners added meanwhile."""
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass
        return self._take_pending()

    def _take_pending(self) -> list[_Listener]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _loop(self) -> None:
        if self._native is not None:
            self._loop_native()
            return
        poller = select.poll()
        poller.register(self._wake_r, _POLL_IN)
        listeners = self._listeners
        wake_r = self._wake_r
        while not self._stopping:
            for fd, ev in poller.poll():
                if fd == wake_r:
                    for lst in self._woken():
                        listeners[lst.fd] = lst
                        poller.register(lst.fd, _POLL_IN)
                    continue
                lst = listeners.get(fd)
                if lst is None:
                    continue
                if ev & _POLL_IN:
                    self._serve(lst)
                elif ev & select.POLLNVAL or ev & select.POLLERR:
                    poller.unregister(fd)
                    # POLLNVAL: someone closed our fd; its number may already be reused, do not close it
                    if ev & select.POLLNVAL:
                        lst.fd = -1
                    self._listeners.pop(fd, None)
                    self._fail(lst, ListenerFailed(f"listener fd {fd} of {lst.view.container_id} failed (poll events {ev:#x})"))
                elif ev & select.POLLHUP:
                    # every task using the filter has exited: the container is done
                    poller.unregister(fd)
                    del listeners[fd]
                    self._close(lst)

    def _loop_native(self) -> None:
        """The loop when the C fast path is built: ``_fast.Loop.next`` polls, receives and
        answers what its tables cover; it returns for the wake fd, a listener event, or a
        notification (left in ``self._notif``) that Python must handle."""
        native = self._native
        listeners = self._listeners
        wake_r = self._wake_r
        notif = self._notif
        while not self._stopping:
            fd, code = native.next(notif)
            if fd == wake_r:
                for lst in self._woken():
                    listeners[lst.fd] = lst
                    native.add(lst.fd, self._native_entries(lst))
                continue
            lst = listeners.get(fd)
            if lst is None:
                native.remove(fd)
                continue
            if code == 0:
                self._handle(lst)
                continue
            native.remove(fd)
            del listeners[fd]
            if code < 0:  # RECV or SEND failed for another reason than a gone thread
                self._fail(lst, OSError(-code, f"listener of {lst.view.container_id}: {os.strerror(-code)}"))
            elif code & (select.POLLNVAL | select.POLLERR):
                if code & select.POLLNVAL:
                    lst.fd = -1  # closed under us: the number may belong to someone else by now
                self._fail(lst, ListenerFailed(f"listener fd {fd} of {lst.view.container_id} failed (poll events {code:#x})"))
            else:  # POLLHUP: every task using the filter has exited
                self._close(lst)

    def _native_entries(self, lst: _Listener) -> list[tuple]:
        """The fast-path table of one listener: (nr, kind, ...) for each trapped syscall ``handlers.NATIVE`` covers."""
        entries = []
        for nr, name in self._handler_names.items():
            make = NATIVE.get(name)
            if make is not None:
                entries.append((nr, *make(lst)))
        return entries

    def _serve(self, lst: _Listener) -> None:
        notif = self._notif
        notif[:] = _ZERO_NOTIF  # RECV into a dirty buffer fails with EINVAL (pitfall 3)
        try:
            fcntl.ioctl(lst.fd, SECCOMP_IOCTL_NOTIF_RECV, notif, True)
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.EINTR):
                return  # the trapped thread was killed before we received it
            self._listeners.pop(lst.fd, None)
            self._fail(lst, err)
            return
        self._handle(lst)

    def _handle(self, lst: _Listener) -> None:
        """Answer the notification in ``self._notif`` (received from ``lst``)."""
        nid, tid, _flags, nr, _arch, _ip, a0, a1, a2, a3, a4, a5 = NOTIF.unpack_from(self._notif)
        handler = self._dispatch[nr] if 0 <= nr <= MAX_NR else None
        strace = self._strace
        if strace:
            t0 = time.perf_counter_ns()
            self.decoded = None
        if handler is None:
            res = (0, errno.ENOSYS)
            if 0 <= nr <= MAX_NR:
                self._n_refused[nr] += 1
            else:
                self._n_unknown += 1
        else:
            self._n_trapped[nr] += 1
            try:
                res = handler(self, lst, nid, tid, (a0, a1, a2, a3, a4, a5))
            except OSError as err:
                res = (0, err.errno or errno.EIO)
            except Exception:  # a handler bug: refuse this call, keep serving the others
                log.exception("handler for %s failed", syscall_name(nr))
                res = (0, errno.ENOSYS)
        if res is not None:
            err = res[1]
            flags = res[2] if len(res) == 3 else 0
            if err:
                self._n_errors[nr] += 1
            elif flags:
                self._n_continued[nr] += 1
            RESP.pack_into(self._resp, 0, nid, res[0], -err, flags)
            try:
                fcntl.ioctl(lst.fd, SECCOMP_IOCTL_NOTIF_SEND, self._resp, True)
            except OSError as e:
                if e.errno != errno.ENOENT:  # the listener itself is broken: this container only
                    self._listeners.pop(lst.fd, None)
                    self._fail(lst, e)
                    return
        if strace and res is not None:  # None: the thread is gone
            self._emit(lst, tid, nr, res, time.perf_counter_ns() - t0)

    def _emit(self, lst: _Listener, tid: int, nr: int, res, duration: int) -> None:
        try:
            pid = self.tracees.get(tid).tgid
        except OSError:
            pid = tid
        event = {"container": lst.view.container_id, "pid": pid, "tid": tid, "syscall": syscall_name(nr), "args": list(self.decoded or ()), "duration_ns": duration}
        if len(res) == 3 and res[2]:
            event["continued"] = True  # the kernel ran it as the tracee: its result is not the sentry's to know
        elif res[1]:
            event["errno"] = errno.errorcode.get(res[1], res[1])
        else:
            event["result"] = res[0]
        try:
            self.on_event(event)
        except Exception:
            log.exception("on_event failed")

    # --- helpers for handlers ----------------------------------------------------------
    def id_valid(self, lst: _Listener, nid: int) -> bool:
        """Whether notification ``nid`` is still pending (its thread alive, not interrupted)."""
        return notif_id_valid(lst.fd, nid, lst.idbuf)

    def write_tracee(self, lst: _Listener, nid: int, tid: int, addr: int, data: bytes) -> None:
        """Write a result into tracee memory, only while notification ``nid`` is pending (TID not reused)."""
        if not self.id_valid(lst, nid):
            raise OSError(errno.ESRCH, "the trapped thread is gone")
        self.mem.write(tid, addr, data)

    # --- fail closed --------------------------------------------------------------------
    def _kill(self, lst: _Listener) -> None:
        if lst.pidfd >= 0:
            try:
                libc.pidfd_send_signal(lst.pidfd, signal.SIGKILL)
            except OSError as err:
                if err.errno != errno.ESRCH:
                    log.error("cannot kill init of %s: %s", lst.view.container_id, err)

    def _fail(self, lst: _Listener, exc: BaseException) -> None:
        log.error("listener of %s failed: %s; killing the container", lst.view.container_id, exc)
        if isinstance(exc, OSError) and exc.errno == errno.EBADF:
            lst.fd = -1  # closed under us: the number may belong to someone else by now
        self._kill(lst)
        self._listeners.pop(lst.fd, None)
        self._close(lst)
        if self.on_fatal is not None:
            try:
                self.on_fatal(lst.view.container_id, exc)
            except Exception:
                log.exception("on_fatal failed")

    def _close(self, lst: _Listener) -> None:
        if self._native is not None and lst.fd >= 0:
            self._native.remove(lst.fd)
        for attr in ("fd", "pidfd"):
            fd = getattr(lst, attr)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass  # already closed by someone else (that is how it failed)
                setattr(lst, attr, -1)
