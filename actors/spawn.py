"""Starting actors: fork from the calling process, report readiness on a pipe.

Actors are forked (no second interpreter start) before the caller builds a
ZeroMQ context, and each builds its own after the fork. The child writes one
line on a readiness pipe — ``ok`` once it serves, or ``error <code> <message>``
— so the parent learns of a failed start at once and with its reason (the
handshake runc calls its sync pipe).
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import time
from typing import Callable

from zentry.bus.errors import ActorGone, Timeout, ZentryError, from_wire, to_wire
from zentry.bus.log import get_logger

log = get_logger("zentry.spawn")

#: Signals an actor ignores: terminal and job-control signals belong to the
#: container's foreground process, not to the runtime's machinery.
IGNORED_IN_ACTORS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGPIPE)


class Child:
    """A forked actor as its parent sees it."""

    __slots__ = ("name", "pid", "ready_fd", "assign_fd")

    def __init__(self, name: str, pid: int, ready_fd: int, assign_fd: int = -1) -> None:
        self.name = name
        self.pid = pid
        self.ready_fd = ready_fd
        #: a blank's (see fork_blank): where its assignment is written
        self.assign_fd = assign_fd

    def assign(self, assignment: dict) -> None:
        """Give a blank its work (one JSON line); it then starts as fork_actor's children do."""
        try:
            os.write(self.assign_fd, json.dumps(assignment).encode() + b"\n")
        except BrokenPipeError:
            pass  # it died while preparing: wait_ready() says so
        finally:
            os.close(self.assign_fd)
            self.assign_fd = -1

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the child reports; raise its error (or ActorGone/Timeout)."""
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"{self.name} (pid {self.pid}) did not become ready within {timeout:g}s")
                r, _, _ = select.select([self.ready_fd], [], [], left)
                if not r:
                    continue
                chunk = os.read(self.ready_fd, 65536)
                if not chunk:
                    raise ActorGone(f"{self.name} (pid {self.pid}) exited during start-up")
                data += chunk
        finally:
            os.close(self.ready_fd)
            self.ready_fd = -1
        line = data.decode(errors="replace").strip()
        if line == "ok":
            return
        _word, code, message = (line.split(" ", 2) + ["", ""])[:3]
        raise from_wire(code, message)


def report_ready(fd: int) -> None:
    os.write(fd, b"ok\n")
    os.close(fd)


def report_error(fd: int, exc: BaseException) -> None:
    code, message = to_wire(exc)
    message = " ".join(message.split())  # one line
    try:
        os.write(fd, f"error {code} {message}\n".encode())
        os.close(fd)
    except OSError:
        pass


def bind_to_parent() -> None:
    """Die with the forking process (until :func:`release_from_parent`).

    A ``create`` killed half-way must not leave actors waiting for a request
    that will never come; each actor releases itself once its part of the
    container exists (before ``create`` replies, so its normal exit is safe).
    """
    from zentry.sentry.abi import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)


def release_from_parent() -> None:
    from zentry.sentry.abi import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, 0)


def fork_actor(name: str, main: Callable[[int], int], *, detach: bool = True, quiet_stdio: bool = True, log_file: str | None = None, bound: bool = False) -> Child:
    """Fork a child running ``main(ready_fd)``; its return value is the exit status.

    ``detach``: own session, so terminal signals and the caller's process
    group do not reach it. ``quiet_stdio``: stdin/stdout/stderr become
    /dev/null (or ``log_file`` for stderr), so the actor never holds an
    engine's stdio pipes open. Only a container's intermediate keeps them
    (they become its init's) and its caller's process group.
    """
    r, w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(w)
        return Child(name=name, pid=pid, ready_fd=r)
    status = 1
    try:
        os.close(r)
        # The CLI runs with the collector off (it lives for a moment); an
        # actor may live as long as its container. What the CLI imported is
        # frozen: never scanned again, and its pages stay shared with the CLI.
        gc.freeze()
        gc.enable()
        if bound:
            bind_to_parent()
            if os.getppid() != parent:
                os._exit(1)  # the creator died before we could bind to it
        if detach:
            os.setsid()
        for sig in IGNORED_IN_ACTORS:
            signal.signal(sig, signal.SIG_IGN)
        if quiet_stdio:
            quiet_stdio_to(log_file)
        status = main(w)
    except ZentryError as exc:
        report_error(w, exc)
    except BaseException as exc:  # the child must never return into the caller's code
        report_error(w, exc)
        try:
            import traceback

            traceback.print_exc()
        except Exception:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os._exit(status if isinstance(status, int) else 1)


def quiet_stdio_to(log_file: str | None) -> None:
    """stdin/stdout become /dev/null, stderr ``log_file`` (or /dev/null)."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    err = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if log_file else null
    os.dup2(err, 2)
    for fd in {null, err}:
        if fd > 2:
            os.close(fd)


def callers_fds(keep: tuple[int, ...]) -> list[int]:
    """The fds above stdio this process holds, but ``keep``: in a blank just
    forked, its caller's (what the engine passed, ``--preserve-fds``' fds)."""
    fds = [int(name) for name in os.listdir("/proc/self/fd")]
    return [fd for fd in fds if fd > 2 and fd not in keep and _is_open(fd)]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)  # listdir's own fd is in its listing, and closed by now
        return True
    except OSError:
        return False


def fork_blank(name: str, prepare: Callable[[], Callable[[dict, int], int]], *, detach: bool = True, siblings: tuple[Child, ...] = ()) -> Child:
    """Fork an actor before its work is known: it prepares, then waits for ``Child.assign``.

    ``prepare()`` runs at once in the child (imports, work that needs no
    arguments) and returns ``start(assignment, ready_fd)``, called when the
    assignment arrives. Meanwhile the parent parses and validates: the two
    overlap. A blank is bound to its parent (it dies with it); end of file
    on the assignment pipe means "not needed", and it exits 0. Stdio are
    kept until the assignment says otherwise (``quiet_stdio``, ``log_file``);
    with them, the other fds it inherited from its caller are closed: no
    actor holds an fd of the caller (only the intermediate keeps them: they
    become the container init's).
    ``siblings``: blanks forked earlier, whose pipes (the parent's ends) this
    one must not hold open.
    """
    ar, aw = os.pipe2(os.O_CLOEXEC)

    def main(ready_fd: int) -> int:
        os.close(aw)
        for sibling in siblings:
            for fd in (sibling.assign_fd, sibling.ready_fd):
                if fd >= 0:
                    os.close(fd)
        inherited = callers_fds(keep=(ar, ready_fd))
        failure: BaseException | None = None
        gc.disable()  # imports make garbage-free objects: collecting during them is wasted work
        try:
            start = prepare()
        except Exception as exc:  # reported once assigned: the parent may not need us at all
            failure = exc
        gc.freeze()
        gc.enable()
        with os.fdopen(ar, "rb") as pipe:
            line = pipe.readline()
        if not line.endswith(b"\n"):
            return 0  # dismissed
        assignment = json.loads(line)
        if assignment.get("quiet_stdio"):
            quiet_stdio_to(assignment.get("log_file"))
            for fd in inherited:  # e.g. --preserve-fds' fds: the container's alone
                try:
                    os.close(fd)
                except OSError:
                    pass
        if failure is not None:
            raise failure
        return start(assignment, ready_fd)

    try:
        child = fork_actor(name, main, detach=detach, quiet_stdio=False, bound=True)
    except BaseException:
        os.close(aw)
        raise
    finally:
        os.close(ar)
    child.assign_fd = aw
    return child


def reap(pid: int, timeout: float = 5.0) -> int | None:
    """waitpid with a deadline; returns the raw status or None if still running."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def exit_status(raw: int) -> int:
    """A wait status as a shell does: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(raw):
        return 128 + os.WTERMSIG(raw)
    return os.waitstatus_to_exitcode(raw)
