"""File descriptors beside the bus: SCM_RIGHTS over AF_UNIX.

ZeroMQ cannot carry fds, so stdio, pty masters, seccomp listeners and donated
files travel on a side ``AF_UNIX`` socket. Each transfer is one datagram-like
message: a small msgpack header (what the fds are for) plus the fds.
"""

from __future__ import annotations

import array
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
    data = codec.pack(header)
    if len(data) > _HEADER_MAX:  # the receiver would get it truncated
        raise ProtocolError(f"fd message header of {len(data)} bytes exceeds the {_HEADER_MAX}-byte limit")
    socket.send_fds(sock, [data], fds)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def recv_fds(sock: socket.socket, max_fds: int = MAX_FDS) -> tuple[dict[str, Any], list[int]]:
    """Receive one message; the caller owns (and must close) the fds.

    The fds arrive close-on-exec (``MSG_CMSG_CLOEXEC``), like every fd Python
    makes; clear it with ``os.set_inheritable`` to hand one to a child.
    An empty read means the peer closed: ``EOFError``. Truncated control data
    (more fds than asked for) or a truncated header closes what arrived and
    is a ProtocolError.
    """
    itemsize = array.array("i").itemsize
    # CMSG_LEN, not CMSG_SPACE: the padding of CMSG_SPACE could hold one fd
    # more than ``max_fds`` and hide a truncation.
    data, ancdata, flags, _addr = sock.recvmsg(_HEADER_MAX, socket.CMSG_LEN(max_fds * itemsize), socket.MSG_CMSG_CLOEXEC)
    fds = array.array("i")
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % itemsize)])
    received = list(fds)
    if not data and not received:
        raise EOFError("fd socket closed by peer")
    if flags & socket.MSG_CTRUNC:
        _close_all(received)
        raise ProtocolError(f"fd message truncated: more than {max_fds} descriptors")
    if flags & socket.MSG_TRUNC:
        _close_all(received)
        raise ProtocolError(f"fd message header exceeds {_HEADER_MAX} bytes")
    try:
        header = codec.unpack(data)
    except ProtocolError:
        _close_all(received)
        raise
    if not isinstance(header, dict):
        _close_all(received)
        raise ProtocolError("fd message header must be a map")
    return header, received


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
