"""File descriptors beside the bus: SCM_RIGHTS over AF_UNIX.

ZeroMQ cannot carry fds, so stdio, pty masters, seccomp listeners and donated
files travel on a side ``AF_UNIX`` socket. Each transfer is one datagram-like
message: a small msgpack header (what the fds are for) plus the fds.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from zentry.bus import codec
from zentry.bus.errors import ProtocolError

MAX_FDS = 16
_HEADER_MAX = 64 * 1024


def send_fds(sock: socket.socket, header: dict[str, Any], fds: list[int]) -> None:
    """Send ``header`` and ``fds`` in one message."""
    if len(fds) > MAX_FDS:
        raise ValueError(f"at most {MAX_FDS} fds per message")
    socket.send_fds(sock, [codec.pack(header)], fds)


def recv_fds(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[dict[str, Any], list[int]]:
    """Receive one message; the caller owns (and must close) the fds.

    An empty read means the peer closed: ``EOFError``. Truncated control data
    (more fds than asked for) closes what arrived and is a ProtocolError.
    """
    data, fds, flags, _addr = socket.recv_fds(sock, _HEADER_MAX, max_fds)
    if not data and not fds:
        raise EOFError("fd socket closed by peer")
    if flags & getattr(socket, "MSG_CTRUNC", 0x8):
        for fd in fds:
            os.close(fd)
        raise ProtocolError("fd message truncated: too many descriptors")
    try:
        header = codec.unpack(data)
    except ProtocolError:
        for fd in fds:
            os.close(fd)
        raise
    if not isinstance(header, dict):
        for fd in fds:
            os.close(fd)
        raise ProtocolError("fd message header must be a map")
    return header, list(fds)


def listen(path: str) -> socket.socket:
    """A SOCK_SEQPACKET listener at ``path`` (mode 0600)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(16)
    return sock


def connect(path: str, timeout: float | None = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    sock.connect(path)
    return sock


def send_console(console_socket: str, master_fd: int) -> None:
    """Hand a pty master to an engine's --console-socket (SOCK_STREAM, like runc)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(console_socket)
        socket.send_fds(sock, [b"/dev/ptmx"], [master_fd])
    finally:
        sock.close()
