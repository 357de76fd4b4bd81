"""Run a program under zentry's filter with a Sentry serving it: for tests, benches and debugging.

``spawn`` forks a single-threaded helper that (optionally) enters a new mount
namespace and pivots into ``root``, sets ``PR_SET_PDEATHSIG(SIGKILL)``, calls
``filter.install`` and sends the listener fd over a socketpair with
``socket.send_fds`` (sendmsg is allowed in BPF; nothing trapped happens between
loading the filter and handing over the fd, pitfall 7), then ``execve``s. The
parent gives the fd to the Sentry. This is the same sequence the sandbox
actor's container init follows.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass, field

from .abi import libc
from .filter import install, zentry_bpf
from .kernel import ContainerView, Sentry


@dataclass
class Traced:
    pid: int
    stdout_fd: int
    stderr_fd: int
    _out: list = field(default_factory=list)
    _err: list = field(default_factory=list)
    _readers: list = field(default_factory=list)
    #: taken at spawn (the pid cannot have been reused yet); readable once the process has exited
    pidfd: int = -1

    def _start_readers(self) -> None:
        for fd, sink in ((self.stdout_fd, self._out), (self.stderr_fd, self._err)):
            t = threading.Thread(target=_drain, args=(fd, sink), daemon=True)
            t.start()
            self._readers.append(t)

    def wait(self, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Wait for exit (SIGKILL after ``timeout``); returncode is -N when killed by signal N."""
        # Sleep on a pidfd (readable at exit), not in a waitpid poll: periodic wakeups of
        # this thread would land on the CPU the tracee and the sentry run on (bench/syscalls.py).
        try:
            poller = select.poll()
            poller.register(self.pidfd, select.POLLIN)
            ready = poller.poll(max(0, int(timeout * 1000)))
        finally:
            os.close(self.pidfd)
            self.pidfd = -1
        if not ready:
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        for t in self._readers:
            t.join(5)
        return subprocess.CompletedProcess([], os.waitstatus_to_exitcode(status), b"".join(self._out), b"".join(self._err))


def _drain(fd: int, sink: list) -> None:
    try:
        while chunk := os.read(fd, 65536):
            sink.append(chunk)
    finally:
        os.close(fd)


def _enter_root(root: str) -> None:
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.mount(root, root, None, libc.MS_BIND | libc.MS_REC)
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def spawn(
    argv: list[str],
    *,
    sentry: Sentry | None,
    view: ContainerView | None = None,
    root: str | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    oci: dict | None = None,
    stdin: int | None = None,
    trace: bool = False,
) -> Traced:
    """Start ``argv`` under the filter; its listener goes to ``sentry`` (None: run with no filter).
    ``trace``: the filter of a container created with strace on (opens trapped too)."""
    zentry_bpf(trace=trace)  # compile in the parent, once
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    env = dict(os.environ if env is None else env)
    pid = os.fork()
    if pid == 0:  # the helper: single-threaded, no return
        code = 127
        try:
            libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)
            parent_sock.close()
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            if stdin is not None:
                os.dup2(stdin, 0)
            if root:
                _enter_root(root)
            if cwd:
                os.chdir(cwd)
            if sentry is not None:
                fd = install(oci, no_new_privs=True, trace=trace)
                # from here on: no trapped syscall until the fd is handed over
                socket.send_fds(child_sock, [b"L"], [fd])
                os.close(fd)
            child_sock.close()
            os.execve(argv[0], argv, env)
        except BaseException as exc:  # report and die: never return into the test runner
            try:
                os.write(2, f"zentry harness: {exc!r}\n".encode())
            except OSError:
                pass
        os._exit(code)
    child_sock.close()
    os.close(out_w)
    os.close(err_w)
    try:
        if sentry is not None:
            msg, fds, _, _ = socket.recv_fds(parent_sock, 1, 1)
            if not fds:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise RuntimeError(f"the helper sent no listener fd: {os.read(err_r, 4096)!r}")
            view = view or ContainerView("test", "zentry-test")
            if view.init_pid is None:
                view.init_pid = pid
            sentry.add_listener(fds[0], view)
    finally:
        parent_sock.close()
    t = Traced(pid, out_r, err_r, pidfd=libc.pidfd_open(pid))
    t._start_readers()
    return t


def run(argv: list[str], *, sentry: Sentry | None, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """``spawn`` and wait."""
    return spawn(argv, sentry=sentry, **kw).wait(timeout)
