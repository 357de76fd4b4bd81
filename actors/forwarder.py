"""The foreground of ``run``/``exec`` (the forwarder), and how ``exec`` makes its process.

The forwarder is the CLI process itself: it relays every catchable signal
to the container process (its child), keeps a terminal's size in step
(SIGWINCH), copies a pty to its own stdio when no ``--console-socket`` took
the master, and exits with the process's status.

An exec'd process is started by the ``exec`` CLI (``start_exec``): it enters
the container's PID namespace (for its children) and forks the process,
which joins the other namespaces and the cgroup of the container's init,
loads the sentry's filter, and hands the listener to the CLI, who passes it
(with the process's pid, so the sandbox reports its start and exit on the
tap) to the sandbox actor's fd socket before letting the process execve.
With ``--detach`` the CLI then exits: nothing sits between the process and
the engine's subreaper.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import socket
import struct
import termios
from typing import Callable

from zentry.bus import codec, fdpass
from zentry.bus.errors import SystemFailure, ZentryError, from_wire
from zentry.sentry.abi import libc

#: zentry.actors.sandbox.init, imported by start_exec (see there)
initmod = None

#: Signals never forwarded: our own business, not the container's.
NOT_FORWARDED = {signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG, signal.SIGKILL, signal.SIGSTOP}
FORWARDED = [s for s in signal.valid_signals() if isinstance(s, signal.Signals) and s not in NOT_FORWARDED]


class SignalCatcher:
    """Catch every forwardable signal into a pipe, from before the container starts.

    Installed before ``start`` so that a signal arriving while the container
    starts is queued for it, not acted on by the forwarder itself.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self._handlers = {}
        for sig in FORWARDED + [signal.SIGCHLD, signal.SIGWINCH]:
            try:
                self._handlers[sig] = signal.signal(sig, lambda *_: None)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)

    def __enter__(self) -> "SignalCatcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def relay(child_pid: int, send_signal: Callable[[int], None], master_fd: int | None = None, catcher: SignalCatcher | None = None) -> int:
    """Forward signals (and pty traffic) until ``child_pid`` (our child) exits; its status."""
    own = catcher is None
    catcher = catcher or SignalCatcher()
    try:
        return _relay(child_pid, send_signal, master_fd, catcher.read_fd)
    finally:
        if own:
            catcher.close()


def _relay(child_pid: int, send_signal: Callable[[int], None], master_fd: int | None, wake_r: int) -> int:
    from zentry.actors.spawn import exit_status

    stdin_open = master_fd is not None and _is_readable(0)
    saved_tty = None
    if master_fd is not None:
        if os.isatty(0):
            saved_tty = termios.tcgetattr(0)
            _raw(0)
        _copy_winsize(0, master_fd)
    try:
        while True:
            done, raw = os.waitpid(child_pid, os.WNOHANG)
            if done:
                if master_fd is not None:
                    _drain(master_fd)
                return exit_status(raw)
            fds = [wake_r]
            if master_fd is not None:
                fds.append(master_fd)
                if stdin_open:
                    fds.append(0)
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if wake_r in ready:
                for sig in os.read(wake_r, 4096):
                    if sig == signal.SIGWINCH and master_fd is not None:
                        _copy_winsize(0, master_fd)
                    elif sig not in (signal.SIGCHLD, signal.SIGWINCH):
                        try:
                            send_signal(sig)
                        except (ZentryError, OSError):
                            pass
            if master_fd is not None and master_fd in ready:
                _pump(master_fd, 1)
            if stdin_open and 0 in ready:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if data:
                    _write_all(master_fd, data)
                else:
                    stdin_open = False
    finally:
        if saved_tty is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved_tty)


def _is_readable(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _raw(fd: int) -> None:
    """Raw mode as tty.setraw makes it, applied at once (TCSANOW): setraw's TCSAFLUSH would
    throw away input the user already typed."""
    import tty

    mode = termios.tcgetattr(fd)
    mode[tty.IFLAG] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON)
    mode[tty.OFLAG] &= ~termios.OPOST
    mode[tty.CFLAG] &= ~(termios.CSIZE | termios.PARENB)
    mode[tty.CFLAG] |= termios.CS8
    mode[tty.LFLAG] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
    mode[tty.CC][termios.VMIN] = 1
    mode[tty.CC][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)


def _copy_winsize(src: int, dst: int) -> None:
    try:
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def _pump(src: int, dst: int) -> bool:
    try:
        data = os.read(src, 65536)
    except OSError as err:
        if err.errno == errno.EIO:  # slave side closed
            return False
        raise
    if not data:
        return False
    _write_all(dst, data)
    return True


def _drain(master_fd: int) -> None:
    while select.select([master_fd], [], [], 0.05)[0]:
        if not _pump(master_fd, 1):
            break


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


class TempConsole:
    """A private --console-socket for a foreground run/exec with a terminal.

    The init connects and sends the pty master; ``receive()`` takes it.
    ``close()`` removes the socket and its directory.
    """

    def __init__(self) -> None:
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="zentry-console-")
        self.path = os.path.join(self.dir, "console.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(1)

    def receive(self) -> int:
        return receive_console(self.listener)

    def close(self) -> None:
        import shutil

        self.listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def receive_console(listener: socket.socket, timeout: float = 30.0) -> int:
    """Accept one connection on a console socket and take the pty master from it."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    finally:
        conn.close()
    if not fds:
        raise SystemFailure("no pty master arrived on the console socket")
    return fds[0]


# --- exec ------------------------------------------------------------------------


def start_exec(init_pid: int, cgroup_procs: list[str], container_config: dict, process: dict, fd_socket: str, container_id: str, console_socket: str,
               preserve_fds: int = 0) -> int:
    """Fork the exec'd process into the container; returns its pid once it has execve'd.

    Must be called with no ZeroMQ context alive in this process (it forks).
    """
    # Here, not at the top: `run` uses this module only for its signal
    # relay, and the init module pulls in the sentry's filter compiler. The
    # exec'd child can import nothing once it has entered the container.
    global initmod
    from zentry.actors.sandbox import init as initmod  # noqa: F811

    pid_ns = os.open(f"/proc/{init_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(pid_ns, libc.CLONE_NEWPID)
    finally:
        os.close(pid_ns)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            code = _exec_child(theirs, init_pid, cgroup_procs, container_config, process, console_socket, preserve_fds)
        finally:
            os._exit(code)
    theirs.close()
    try:
        ours.settimeout(30)
        while True:
            data, fds, _f, _a = socket.recv_fds(ours, 65536, 2)
            if fds:
                header = codec.unpack(data)
                header.update(pid=pid, args=[str(a) for a in process.get("args") or []])
                _hand_listener(fd_socket, container_id, fds[0], header)
                continue
            line = data.decode(errors="replace")
            if line == "ready":
                break
            _reap_failed(pid)
            if line.startswith("error "):
                _w, code, message = (line.split(" ", 2) + ["", ""])[:3]
                raise from_wire(code, message)
            raise SystemFailure("exec'd process exited during setup")
        ours.send(b"start")
        line = ours.recv(4096).decode(errors="replace")
        if line:
            _reap_failed(pid)
            _w, code, message = (line.split(" ", 2) + ["", ""])[:3]
            raise from_wire(code, message)
        return pid
    finally:
        ours.close()


def _reap_failed(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _hand_listener(fd_socket: str, container_id: str, fd: int, names: dict) -> None:
    try:
        sock = fdpass.connect(fd_socket)
        try:
            header = {"kind": "listener", "container_id": container_id, "pid": int(names["pid"]), "args": names["args"]}
            header.update({k: str(names[k]) for k in ("nodename", "domainname") if k in names})
            fdpass.send_fds(sock, header, [fd])
            answer = sock.recv(256)
        finally:
            sock.close()
    finally:
        os.close(fd)
    if answer != b"ok":
        raise SystemFailure(f"the sandbox refused the exec's seccomp listener: {answer.decode(errors='replace')}")


def _exec_child(chan: socket.socket, init_pid: int, cgroup_procs: list[str], config: dict, process: dict, console_socket: str, preserve_fds: int = 0) -> int:
    try:
        for sig in range(1, signal.NSIG):
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                try:
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for procs in cgroup_procs:
            try:
                with open(procs, "w") as f:
                    f.write("0")
            except OSError as err:
                raise SystemFailure(f"cannot join cgroup {os.path.dirname(procs)}: {err.strerror}") from err
        console = None
        if process.get("terminal"):
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            console.connect(console_socket)
        # the user namespace first: the others belong to it (runc's order)
        order = ["user", "cgroup", "ipc", "uts", "net", "time", "mnt"]
        fds = []
        for name in order:
            path = f"/proc/{init_pid}/ns/{name}"
            if os.readlink(path) != os.readlink(f"/proc/self/ns/{name}"):
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        for fd in fds:
            libc.setns(fd, 0)
            os.close(fd)
        initmod.apply_rlimits(process)
        if console is not None:
            initmod.setup_terminal(console)
        cwd = process.get("cwd") or "/"
        try:
            os.chdir(cwd)
        except OSError as err:
            raise SystemFailure(f"chdir to cwd ({cwd!r}) set in config.json failed: {err.strerror}") from None
        envp = initmod.environment(process)
        env = [f"{k}={v}" for k, v in envp.items()]
        args = process.get("args") or []
        path = initmod.find_executable(args[0], env, cwd)
        libc.cloexec_from(3 + preserve_fds)  # stdio and --preserve-fds only, as runc exec
        names = initmod.uts_names()
        listener = initmod.install_sentry(config, bool(process.get("noNewPrivileges")))
        fdpass.send_fds(chan, {"kind": "listener", **names}, [listener])
        os.close(listener)
        initmod.apply_user(process)
        if process.get("noNewPrivileges"):
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        chan.send(b"ready")
        if chan.recv(16) != b"start":
            return 1
        try:
            os.execve(path, args, envp)
        except OSError as err:
            raise SystemFailure(f'exec: "{args[0]}": {err.strerror}') from err
    except BaseException as exc:
        initmod.fail(chan, exc)
        return 1
    return 0


def winsize(fd: int) -> tuple[int, int]:
    rows, cols, _x, _y = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return rows, cols
