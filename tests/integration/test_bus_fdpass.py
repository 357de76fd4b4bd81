"""The fd side channel across a fork: SCM_RIGHTS over SEQPACKET."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from zentry.bus import fdpass
from zentry.bus.errors import ProtocolError


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _child(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def _reap(pid: int) -> int:
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_pipe_fd_crosses_a_fork_over_the_listener(tmp_path):
    path = str(tmp_path / "fds.sock")
    listener = fdpass.listen(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    r, w = os.pipe()

    def sender():
        listener.close()
        conn = fdpass.connect(path)
        fdpass.send_fds(conn, {"kind": "stdout", "token": "t-1"}, [r])
        os.write(w, b"written by the sender")
        conn.close()

    pid = _child(sender)
    os.close(r)
    os.close(w)
    try:
        listener.settimeout(10)
        conn, _ = listener.accept()
        header, fds = fdpass.recv_fds(conn)
        assert header == {"kind": "stdout", "token": "t-1"}
        assert len(fds) == 1
        assert fcntl.fcntl(fds[0], fcntl.F_GETFD) & fcntl.FD_CLOEXEC  # arrives close-on-exec
        assert os.read(fds[0], 100) == b"written by the sender"
        os.close(fds[0])
        with pytest.raises(EOFError):
            fdpass.recv_fds(conn)
        conn.close()
    finally:
        listener.close()
        assert _reap(pid) == 0


def test_more_fds_than_asked_is_a_protocol_error_without_leaks():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipes = [os.pipe() for _ in range(3)]
    try:
        before = open_fds()
        fdpass.send_fds(a, {"n": 3}, [p[0] for p in pipes])
        with pytest.raises(ProtocolError, match="truncated"):
            fdpass.recv_fds(b, max_fds=1)
        assert open_fds() == before  # what arrived was closed
        # the channel is still usable
        fdpass.send_fds(a, {"n": 1}, [pipes[0][0]])
        header, fds = fdpass.recv_fds(b, max_fds=1)
        assert header == {"n": 1} and len(fds) == 1
        os.close(fds[0])
        assert open_fds() == before
    finally:
        for p in pipes:
            os.close(p[0])
            os.close(p[1])
        a.close()
        b.close()


def test_bad_headers_close_the_fds():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        before = open_fds()
        for payload in (b"\xc1", b"\x93\x01\x02\x03"):  # not msgpack; not a map
            socket.send_fds(a, [payload], [r])
            with pytest.raises(ProtocolError):
                fdpass.recv_fds(b)
            assert open_fds() == before
        socket.send_fds(a, [b"\x80" * 70000], [r])  # header over the limit: truncated
        with pytest.raises(ProtocolError):
            fdpass.recv_fds(b)
        assert open_fds() == before
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_header_without_fds_and_sender_limits():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        fdpass.send_fds(a, {"only": "header"}, [])
        assert fdpass.recv_fds(b) == ({"only": "header"}, [])
        with pytest.raises(ValueError):
            fdpass.send_fds(a, {}, [0] * (fdpass.MAX_FDS + 1))
        with pytest.raises(ProtocolError, match="exceeds"):
            fdpass.send_fds(a, {"big": "x" * 70000}, [])
        a.close()
        with pytest.raises(EOFError):
            fdpass.recv_fds(b)
    finally:
        a.close()
        b.close()


def test_send_console_hands_over_a_pty_master(tmp_path):
    path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    master, slave = os.openpty()
    try:
        fdpass.send_console(path, master)
        conn, _ = srv.accept()
        msg, fds, _flags, _addr = socket.recv_fds(conn, 100, 1)
        assert msg == b"/dev/ptmx" and len(fds) == 1
        os.write(slave, b"ping\n")
        assert b"ping" in os.read(fds[0], 100)
        os.close(fds[0])
        conn.close()
    finally:
        os.close(master)
        os.close(slave)
        srv.close()
