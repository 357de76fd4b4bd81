"""The agent's zygote: a process with zentry's CLI and actors already imported
that forks the agent's ``zentry run -d`` / ``zentry delete -f`` calls.

A CLI call started from scratch spends its first ~100 ms (far more on a
loaded host) starting Python and importing the CLI, pyzmq, msgpack, the bus
and the actors' code, and each of a sandbox's three actors then holds its
own private copy of what it imported. Forked from the zygote instead, a call
starts with all of that in place, and the pages stay shared (copy-on-write)
between the zygote and every sandbox's actors: faster refills, less memory
per warm sandbox. The call itself is ``zentry.cmd.main.call(argv)``, what the
CLI's own entry runs, so it behaves and exits exactly as the command would.

The zygote is forked by the agent before the agent makes its ZeroMQ context
or any thread (a process with either must not fork code that uses them),
and talks to it over a SOCK_SEQPACKET pair: a request is a JSON object
``{"id", "argv", "log", "nice"}`` with the call's fd 3 attached (SCM_RIGHTS)
when it has one; the answer ``{"id", "pid"}`` when it started and ``{"id",
"status"}`` (a wait status) when it ended. It exits when the agent's end
closes.
"""

from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import sys

from zentry.bus.log import get_logger

log = get_logger("zentry.pool")

_PRELOAD = (
    "zentry.cmd.main", "zentry.cmd.run", "zentry.cmd.delete", "zentry.actors.launch",
    "zentry.actors.controller.actor", "zentry.actors.gofer.actor", "zentry.actors.sandbox.actor",
)


def _preload() -> None:
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as err:  # only an optimisation: the call imports what it needs anyway
            log.debug("zygote: cannot preload %s: %s", name, err)
    try:
        from zentry.actors import launch

        launch._import_shared()
    except Exception as err:
        log.debug("zygote: no shared imports: %s", err)


class Zygote:
    """The agent's side: ``start`` forks the zygote; ``spawn`` asks for a call."""

    def __init__(self) -> None:
        self.pid = 0
        self.sock: socket.socket | None = None
        self._next = 0

    def start(self, zentry: str, keep: tuple[int, ...] = ()) -> None:
        """Fork the zygote: it keeps its stdio, ``keep`` and its end of the pair, nothing else
        (what it holds, every sandbox's actors would inherit: the agent's lock, its sockets)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                kept = sorted({0, 1, 2, theirs.fileno(), *keep})
                for low, high in zip(kept, [*kept[1:], 1 << 20]):
                    os.closerange(low + 1, high)
                _preload()
                code = _serve(theirs, zentry)
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        self.pid = pid
        self.sock = ours

    @property
    def alive(self) -> bool:
        return self.sock is not None

    def spawn(self, argv: list[str], *, fd3: int | None, log_path: str, renice: int) -> int:
        """Ask for ``zentry ARGV``; returns the call's id (answers carry it)."""
        self._next += 1
        data = json.dumps({"id": self._next, "argv": argv, "log": log_path, "nice": renice}).encode()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd3]))] if fd3 is not None else []
        self.sock.sendmsg([data], anc)
        return self._next

    def answers(self) -> tuple[list[dict], bool]:
        """What the zygote said since the last call, and whether it is gone."""
        out = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out, False
            except OSError:
                return out, True
            if not data:
                return out, True
            out.append(json.loads(data))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


def _serve(sock: socket.socket, zentry: str) -> int:
    """The zygote's loop: fork a call per request, report starts and ends."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the agent decides when we end (our end of the pair closes)
    calls: dict[int, int] = {}  # pid -> id
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    open_ = True
    while open_ or calls:
        ready, _, _ = select.select([sock, wake_r] if open_ else [wake_r], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        while calls:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            call = calls.pop(pid, None)
            if call is not None and open_:
                try:
                    sock.send(json.dumps({"id": call, "status": status}).encode())
                except OSError:
                    open_ = False
        if open_ and sock in ready:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                open_ = False  # the agent is gone: let the calls in flight finish, then end
                continue
            req = json.loads(data)
            pid = os.fork()
            if pid == 0:
                _call(req, fds[0] if fds else None, sock, zentry, wake_r, wake_w)
            for fd in fds:
                os.close(fd)
            calls[pid] = req["id"]
            try:
                sock.send(json.dumps({"id": req["id"], "pid": pid}).encode())
            except OSError:
                open_ = False
    return 0


def _call(req: dict, fd3: int | None, sock: socket.socket, zentry: str, *spare: int) -> None:
    """In the forked call: become ``zentry ARGV`` (never returns)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        sock.close()
        for fd in spare:
            os.close(fd)
        null = os.open("/dev/null", os.O_RDONLY)
        logfd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        if fd3 is not None and fd3 != 3:
            os.dup2(fd3, 3)  # inheritable: the container's preserved fd
            os.close(fd3)
        elif fd3 == 3:
            os.set_inheritable(3, True)
        for fd in (null, logfd):
            if fd > 3 or (fd == 3 and fd3 is None):
                os.close(fd)
        if req.get("nice"):
            os.nice(int(req["nice"]))
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = [zentry, *req["argv"]]
        from zentry.cmd.main import call

        code = call(list(req["argv"]))
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
