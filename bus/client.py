"""Request/reply from the caller's side: a DEALER matched by message id.

Every request has a deadline; a missed one raises :class:`Timeout`. When the
caller knows the actor's pid, a dead actor is noticed within one receive
slice (50 ms) and raises :class:`ActorGone` instead of waiting out the
deadline; so is an ``ipc://`` socket file that disappeared (a client's first
request checks that it exists before sending). A request
is re-sent after a deadline only when its type is declared idempotent.
Error replies are raised as the exception class their wire code names.
"""

from __future__ import annotations

import os
import time

import zmq
import zmq.backend

from zentry.bus import codec
from zentry.bus import envelope as envmod
from zentry.bus.envelope import Envelope
from zentry.bus.errors import ActorGone, ProtocolError, Timeout, from_wire
from zentry.bus.message import Message
from zentry.bus.proc import pid_alive  # noqa: F401  (the one liveness check; re-exported)
from zentry.bus.messages import Error

_SLICE_MS = 50
#: The backend's send, without pyzmq's Python-level wrapper (see bus/actor.py).
_send = getattr(zmq.backend, "Socket", zmq.Socket).send


class Client:
    """A blocking request/reply client for one actor endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        sender: str = "cli",
        ctx: zmq.Context | None = None,
        peer_pid: int | None = None,
        curve_server_key: bytes | None = None,
        curve_keypair: tuple[bytes, bytes] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.sender = sender
        self.peer_pid = peer_pid
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_server_key:
            public, secret = curve_keypair or zmq.curve_keypair()
            self.sock.curve_serverkey = curve_server_key
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        self.sock.connect(endpoint)
        self.sock.setsockopt(zmq.RCVTIMEO, _SLICE_MS)
        self._rcvtimeo = _SLICE_MS
        self._checked = False

    def request(self, msg: Message, *, timeout: float = 10.0, parent: str = "", retries: int = 1) -> Message:
        """Send ``msg`` and return the reply; raise the error a reply carries."""
        if msg.KIND != "request":
            raise ProtocolError(f"{msg.TAG} is not a request")
        if not self._checked:
            # Once per client (a stat per request costs ~8 µs of the round
            # trip); later, a vanished socket is noticed between receive slices.
            self._check_endpoint()
            self._checked = True
        attempts = 1 + (retries if msg.IDEMPOTENT else 0)
        mid, frame = envmod.encode_message(msg, sender=self.sender, parent=parent)
        first_ms = int(timeout * 1000) + 1
        if first_ms < self._rcvtimeo:  # a deadline shorter than one slice
            self.sock.setsockopt(zmq.RCVTIMEO, first_ms)
            self._rcvtimeo = first_ms
        for attempt in range(attempts):
            _send(self.sock, frame)
            reply = self._await(mid, time.monotonic() + timeout, msg.TAG)
            if reply is not None:
                return self._unwrap(reply)
        raise Timeout(f"no reply to {msg.TAG} from {self.endpoint} within {timeout:g}s")

    def _check_endpoint(self) -> None:
        if self.endpoint.startswith("ipc://") and not os.path.exists(self.endpoint[6:]):
            raise ActorGone(f"no actor listens at {self.endpoint}")

    def _await(self, mid: str, deadline: float, tag: str) -> Envelope | None:
        # A blocking recv with a receive timeout (one slice) costs less than
        # poll-then-recv; between slices the peer's liveness and the deadline
        # are checked. The common case (the reply within the first slice)
        # does nothing but recv and decode.
        sock = self.sock
        while True:
            try:
                frame = sock.recv()
            except zmq.Again:
                if self.peer_pid is not None and not pid_alive(self.peer_pid):
                    raise ActorGone(f"actor (pid {self.peer_pid}) at {self.endpoint} died before answering {tag}") from None
                self._check_endpoint()
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                timeout = min(_SLICE_MS, int(left * 1000) + 1)
                if timeout != self._rcvtimeo:
                    sock.setsockopt(zmq.RCVTIMEO, timeout)
                    self._rcvtimeo = timeout
                continue
            try:
                env = envmod.decode(frame)
            except ProtocolError:
                self._check_version(frame, mid)
                continue  # a bad frame is not our reply
            if env.parent == mid:
                if self._rcvtimeo != _SLICE_MS:
                    sock.setsockopt(zmq.RCVTIMEO, _SLICE_MS)
                    self._rcvtimeo = _SLICE_MS
                return env
            # else: a late reply to an earlier request

    def _check_version(self, frame: bytes, mid: str) -> None:
        """An answer to ``mid`` in another protocol version (an actor started by
        another version of zentry: it refuses ours) fails the request now,
        saying so, instead of when its deadline passes."""
        try:
            fields = codec.unpack(frame)
        except ProtocolError:
            return
        if type(fields) is list and len(fields) == 7 and fields[3] == mid and type(fields[0]) is int and fields[0] != envmod.PROTOCOL_VERSION:
            raise ProtocolError(f"the actor at {self.endpoint} speaks protocol version {fields[0]}, this zentry {envmod.PROTOCOL_VERSION}: "
                                "it was started by another version of zentry")

    @staticmethod
    def _unwrap(env: Envelope) -> Message:
        if isinstance(env.body, Error):
            raise from_wire(env.body.code, env.body.message, env.body.details)
        return env.body

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
