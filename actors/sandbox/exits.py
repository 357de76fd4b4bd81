"""Exit statuses of processes the sandbox did not fork: the kernel's proc connector.

Container inits and exec'd processes are children of the ``create``/``exec``
calls that made them (so of the engine's subreaper once those exit), not of
the sandbox actor: it cannot ``waitpid`` them. It watches each with a pidfd
(readable once the process has exited) and reads its wait status from the
proc connector (netlink ``NETLINK_CONNECTOR``, group ``CN_IDX_PROC``), whose
``PROC_EVENT_EXIT`` carries the raw wait status of every exiting task.

The kernel queues that event in ``do_exit`` before it wakes pidfd pollers,
so draining the socket when a pidfd becomes readable finds the status.
A socket filter (classic BPF) lets through only the exits of thread-group
leaders among the watched pids: the sandbox never wakes for the rest of the
host. Listening needs CAP_NET_ADMIN in the initial user namespace and a
process in the initial pid namespace; where that fails ``available`` is
False and statuses are unknown (``status`` returns None).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct

from zentry.bus.log import get_logger

log = get_logger("zentry.exits")

#: <linux/netlink.h>, <linux/connector.h>, <linux/cn_proc.h>
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
NLMSG_DONE = 3
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXIT = 0x80000000
SO_ATTACH_FILTER = 26

#: offsets in a message: nlmsghdr (16) + cn_msg (20) + proc_event
_WHAT = 36
_EXIT_PID = 52
_EXIT_TGID = 56
_EXIT_CODE = 60

#: classic BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JEQ_X = 0x1D
_TAX = 0x07
_RET_K = 0x06

#: jumps are 8 bits: past this many pids the filter passes every leader's exit
_MAX_FILTERED = 200


def _be(value: int) -> int:
    """A host-order u32 as classic BPF loads it (network order)."""
    return struct.unpack(">I", struct.pack("=I", value))[0]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def exit_filter(pids: list[int]) -> list[tuple[int, int, int, int]]:
    """The socket filter: exits of thread-group leaders whose pid is in ``pids``
    (past _MAX_FILTERED pids, every leader's exit; none when ``pids`` is empty)."""
    every = len(pids) > _MAX_FILTERED
    listed = [] if every else pids
    # 0 ld what; 1 jeq exit; 2 ld pid; 3 tax; 4 ld tgid; 5 jeq x;
    # 6.. one jeq per listed pid; then drop, accept
    drop = 6 + len(listed)
    accept = drop + 1
    prog = [
        (_LD_W_ABS, 0, 0, _WHAT),
        (_JEQ_K, 0, drop - 2, _be(PROC_EVENT_EXIT)),
        (_LD_W_ABS, 0, 0, _EXIT_PID),
        (_TAX, 0, 0, 0),
        (_LD_W_ABS, 0, 0, _EXIT_TGID),
        (_JEQ_X, accept - 6 if every else 0, drop - 6, 0),
    ]
    for at, pid in enumerate(listed, start=6):
        prog.append((_JEQ_K, accept - at - 1, 0, _be(pid)))
    prog.append((_RET_K, 0, 0, 0))
    prog.append((_RET_K, 0, 0, 0xFFFF))
    return prog


class ExitStatuses:
    """Raw wait statuses of watched pids, as the proc connector reports them."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.watched: set[int] = set()
        self.statuses: dict[int, int] = {}
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, NETLINK_CONNECTOR)
        except OSError as err:
            log.warning("no proc connector (%s): exit statuses of containers will be unknown", err)
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock = sock
            self._attach()  # before subscribing: nothing unfiltered is ever queued
            sock.bind((0, CN_IDX_PROC))
            cn = struct.pack("=IIIIHH", CN_IDX_PROC, CN_VAL_PROC, 0, 0, 4, 0) + struct.pack("=I", PROC_CN_MCAST_LISTEN)
            sock.send(struct.pack("=IHHII", 16 + len(cn), NLMSG_DONE, 0, 0, 0) + cn)
        except OSError as err:
            log.warning("cannot listen to the proc connector (%s): exit statuses of containers will be unknown", err)
            sock.close()
            self.sock = None

    @property
    def available(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def watch(self, pid: int) -> None:
        """Record ``pid``'s exit from now on (call before it can exit)."""
        self.watched.add(pid)
        self.statuses.pop(pid, None)
        self._attach()

    def forget(self, pid: int) -> None:
        self.watched.discard(pid)
        self.statuses.pop(pid, None)
        self._attach()

    def status(self, pid: int) -> int | None:
        """``pid``'s raw wait status once it has exited (its pidfd is readable), else None."""
        self.drain()
        return self.statuses.get(pid)

    def drain(self) -> None:
        if self.sock is None:
            return
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as err:  # ENOBUFS: events were dropped; those still queued are read on
                log.warning("proc connector: %s", err)
                continue
            self._parse(data)

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset + _EXIT_CODE + 4 <= len(data):
            length = struct.unpack_from("=I", data, offset)[0]
            (what,) = struct.unpack_from("=I", data, offset + _WHAT)
            if what == PROC_EVENT_EXIT:
                pid, tgid, code = struct.unpack_from("=IIi", data, offset + _EXIT_PID)
                if pid == tgid and pid in self.watched:
                    self.statuses[pid] = code
            if length <= 0:
                break
            offset += (length + 3) & ~3

    def _attach(self) -> None:
        if self.sock is None:
            return
        prog = exit_filter(sorted(self.watched))
        insns = (_SockFilter * len(prog))(*[_SockFilter(*i) for i in prog])
        fprog = _SockFprog(len(prog), insns)
        buf = bytes(ctypes.string_at(ctypes.addressof(fprog), ctypes.sizeof(fprog)))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, buf)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
