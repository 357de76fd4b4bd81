"""Hold a process's next child at a point of its own setup, with ptrace.

``HoldNextChild(parent, syscall=None)`` seizes ``parent`` (tracing its forks
and clones); the first child it makes afterwards is held at its birth
(``syscall=None``) or at its first entry into the system call numbered
``syscall``; ``held(timeout)`` returns that child's pid (this host's) once it
is there. The test then does what it wants to the held child (kill it), and
``close()`` ends the tracing: the parent, and any later child, run on as if
never traced (a tracer thread that ends detaches from its tracees).

No hook in the code under test: a deterministic point in a child's setup
without a backdoor. x86_64 only (the syscall number is read from orig_rax).
"""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import threading
import time

PTRACE_CONT, PTRACE_PEEKUSER, PTRACE_DETACH, PTRACE_SYSCALL = 7, 3, 17, 24
PTRACE_GETEVENTMSG, PTRACE_SEIZE = 0x4201, 0x4206
O_TRACESYSGOOD, O_TRACEFORK, O_TRACEVFORK, O_TRACECLONE = 1, 2, 4, 8
EVENT_FORK, EVENT_VFORK, EVENT_CLONE, EVENT_STOP = 1, 2, 3, 128
ORIG_RAX = 15 * 8
WALL = 0x40000000

#: x86_64 system call numbers of the sandbox's setup
SYSCALLS = {"mount": 165, "seccomp": 317, "capset": 126, "pivot_root": 155}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def supported() -> bool:
    return platform.machine() == "x86_64"


def _ptrace(request: int, pid: int, addr: int = 0, data: int = 0) -> int:
    ctypes.set_errno(0)
    result = _libc.ptrace(request, pid, ctypes.c_void_p(addr), ctypes.c_void_p(data))
    err = ctypes.get_errno()
    if result == -1 and err:
        raise OSError(err, f"ptrace({request:#x}, {pid}): {os.strerror(err)}")
    return result


class HoldNextChild:
    def __init__(self, parent: int, syscall: int | None = None) -> None:
        self.parent = parent
        self.syscall = syscall
        self.child = 0
        self.error: BaseException | None = None
        self._held = threading.Event()
        self._attached = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hold-next-child", daemon=True)
        self._thread.start()
        if not self._attached.wait(10) or self.error is not None:
            self.close()
            raise AssertionError(f"cannot trace {parent}: {self.error}")

    def held(self, timeout: float = 30.0) -> int:
        if not self._held.wait(timeout):
            raise AssertionError(f"no child of {self.parent} reached its hold point within {timeout}s ({self.error})")
        return self.child

    def close(self) -> None:
        self._done.set()
        self._thread.join(10)

    # --- the tracer thread (every ptrace call comes from it) ---------------------
    def _run(self) -> None:
        try:
            _ptrace(PTRACE_SEIZE, self.parent, 0, O_TRACESYSGOOD | O_TRACEFORK | O_TRACEVFORK | O_TRACECLONE)
        except OSError as err:
            self.error = err
            self._attached.set()
            return
        self._attached.set()
        tracees = {self.parent}
        try:
            while not self._done.is_set():
                stopped = False
                for pid in list(tracees):
                    try:
                        got, status = os.waitpid(pid, WALL | os.WNOHANG)
                    except ChildProcessError:
                        tracees.discard(pid)
                        continue
                    if not got:
                        continue
                    stopped = True
                    if not os.WIFSTOPPED(status):  # it ended (killed by the test)
                        tracees.discard(pid)
                        continue
                    self._on_stop(pid, status, tracees)
                if not stopped:
                    time.sleep(0.001)
        except BaseException as err:  # reported by held()
            self.error = err
        # returning ends this thread: the kernel detaches it from every tracee

    def _on_stop(self, pid: int, status: int, tracees: set[int]) -> None:
        sig, event = os.WSTOPSIG(status), status >> 16
        if pid == self.parent:
            if event in (EVENT_FORK, EVENT_VFORK, EVENT_CLONE):
                msg = ctypes.c_ulong()
                _ptrace(PTRACE_GETEVENTMSG, pid, 0, ctypes.addressof(msg))
                if not self.child:
                    self.child = msg.value
                    tracees.add(self.child)
                # a later child stays traced until the thread ends, then runs on
            inject = 0 if event or sig in (signal.SIGTRAP, signal.SIGTRAP | 0x80) else sig
            _ptrace(PTRACE_CONT, pid, 0, inject)
            return
        if pid != self.child or self._held.is_set():
            return  # held: left stopped
        if event == EVENT_STOP and self.syscall is None:
            self._held.set()
            return
        if sig == signal.SIGTRAP | 0x80:  # a syscall stop: entry or exit
            if _ptrace(PTRACE_PEEKUSER, pid, ORIG_RAX) == self.syscall:
                self._held.set()
                return
        elif not event and sig != signal.SIGTRAP:
            _ptrace(PTRACE_SYSCALL, pid, 0, sig)  # a signal of its own: delivered
            return
        _ptrace(PTRACE_SYSCALL, pid, 0, 0)
