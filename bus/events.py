"""Event publishing and the per-sandbox event stream.

Every actor owns a PUB socket connected to its sandbox's ``events.in``; the
controller runs the stream: an XSUB/XPUB forwarder that republishes on
``events.sock`` and keeps a bounded ring of recent events for late taps.

Frames on the stream are three parts: ``[topic, seq, envelope]``. The topic
is ``<sandbox>.<container>.<actor>.<kind>`` (``-`` for no container) so a
subscriber filters by prefix; ``seq`` is a per-publisher counter (msgpack
int) from which a subscriber counts what it lost. Publishing never blocks:
PUB drops at its high-water mark, and the loss shows up as a seq gap.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Iterable

import zmq

from zentry.bus import codec
from zentry.bus.envelope import Envelope
from zentry.bus.message import Message

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

#: Messages a PUB socket queues for a slow peer before it drops.
PUB_HWM = 10000
#: Events kept by the stream for ``zentry tap --since``.
RING_SIZE = 4096
#: When the stream stops: forward what is still arriving until it has been
#: quiet for DRAIN_QUIET_MS, for at most DRAIN_TIMEOUT seconds. The
#: controller stops it only after the other actors have exited (their last
#: events are then already queued), so the quiet period only covers the
#: controller's own last event, an in-process hop.
DRAIN_QUIET_MS = 10
DRAIN_TIMEOUT = 0.5


def topic(sandbox_id: str, container_id: str | None, actor: str, kind: str) -> bytes:
    return f"{sandbox_id}.{container_id or '-'}.{actor}.{kind}".encode()


def event_kind(msg: Message) -> str:
    """The last part of a topic: ``event.syscall`` -> ``syscall``."""
    return msg.TAG.split(".", 1)[-1]


class Publisher:
    """One actor's (or one thread's) event publisher. Not thread-safe: one per thread.

    The socket is an XPUB (the same wire as PUB) so that the publisher sees
    the stream's subscription arrive: until it has, a PUB would silently
    drop everything (ZeroMQ's slow joiner), which lost every actor's
    ``event.actor_started``. Events published before then wait in a bounded
    backlog (``BACKLOG`` events; beyond it they are dropped and show as a seq
    gap) and go out on the next ``publish`` or ``flush`` after the
    subscription; the actor loop calls ``flush`` when the socket turns
    readable. Publishing never blocks.
    """

    BACKLOG = 1000

    def __init__(self, ctx: zmq.Context, endpoint: str | None, *, sandbox_id: str, actor: str) -> None:
        self.sandbox_id = sandbox_id
        self.actor = actor
        self.seq = 0
        self.published = 0
        self.sock: zmq.Socket | None = None
        self._live = False
        self._backlog: collections.deque[list[bytes]] = collections.deque()
        if endpoint:
            sock = ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.SNDHWM, PUB_HWM)
            sock.setsockopt(zmq.LINGER, 200)
            # The stream may bind a moment after we connect (actors start
            # together): retry soon, not after zmq's default 100 ms.
            sock.setsockopt(zmq.RECONNECT_IVL, 5)
            sock.connect(endpoint)
            self.sock = sock

    def publish(self, msg: Message, *, parent: str = "", container_id: str | None = None) -> None:
        if self.sock is None:
            return
        cid = container_id if container_id is not None else getattr(msg, "container_id", None)
        env = Envelope.wrap(msg, sender=self.actor, parent=parent)
        self.seq += 1
        frames = [topic(self.sandbox_id, cid, self.actor, event_kind(msg)), codec.pack(self.seq), env.encode()]
        if not self._live and not self.flush():
            if len(self._backlog) < self.BACKLOG:
                self._backlog.append(frames)
            return
        self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)  # type: ignore[union-attr]
            self.published += 1
        except zmq.Again:
            pass  # dropped: the gap in seq tells the subscriber

    def flush(self) -> bool:
        """Read (un)subscriptions; once subscribed, send the backlog. True when live."""
        sock = self.sock
        if sock is None:
            return False
        while sock.getsockopt(_EVENTS) & _POLLIN:
            try:
                sub = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if sub[:1] == b"\x01":
                self._live = True
        if self._live:
            while self._backlog:
                self._send(self._backlog.popleft())
        return self._live

    def close(self) -> None:
        if self.sock is not None:
            if self._backlog and not self.flush():
                self.sock.poll(200)  # within the linger we allow anyway
            self.flush()
            self.sock.close()
            self.sock = None

class EventStream(threading.Thread):
    """The sandbox's stream: XSUB (actors publish in) -> XPUB (taps subscribe).

    Runs in a thread of the controller with its own sockets. Keeps the last
    ``RING_SIZE`` frames with their arrival time for ``history()``.
    """

    def __init__(self, ctx: zmq.Context, inbound: str, outbound: str, extra_outbound: Iterable[str] = ()) -> None:
        super().__init__(name="event-stream", daemon=True)
        self.ctx = ctx
        self.inbound = inbound
        self.outbound = outbound
        self.extra_outbound = list(extra_outbound)
        self.ring: collections.deque[tuple[int, list[bytes]]] = collections.deque(maxlen=RING_SIZE)
        self.lock = threading.Lock()
        self.forwarded = 0
        # Not ``_stop``: that name is threading.Thread's own method (join()
        # and is_alive() call it), and an Event there breaks both.
        self._halt = threading.Event()
        # stop() writes here, so the loop wakes at once instead of at its next poll timeout
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake_lock = threading.Lock()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from zentry.bus.endpoints import chmod_socket

        try:
            xsub = self.ctx.socket(zmq.XSUB)
            xsub.setsockopt(zmq.LINGER, 0)
            xsub.bind(self.inbound)
            chmod_socket(self.inbound)
            xsub.send(b"\x01")  # subscribe to everything upstream
            xpub = self.ctx.socket(zmq.XPUB)
            xpub.setsockopt(zmq.LINGER, 0)
            xpub.setsockopt(zmq.SNDHWM, PUB_HWM)
            xpub.bind(self.outbound)
            chmod_socket(self.outbound)
            for ep in self.extra_outbound:
                xpub.bind(ep)
        except BaseException as err:  # reported by wait_ready()
            self.error = err
            self._close_wake()
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(xsub, zmq.POLLIN)
        poller.register(xpub, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        try:
            while not self._halt.is_set():
                for sock, _ev in poller.poll(1000):
                    if sock is xsub:
                        self._forward(xsub, xpub)
                    elif sock == self._wake:
                        break
                    else:
                        # A tap (un)subscribed. Upstream stays subscribed to
                        # everything, since the ring keeps every event.
                        xpub.recv()
            # Stopping: what the actors published just before (the last
            # request's event, their actor_stopped) still reaches the taps.
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while time.monotonic() < deadline and xsub.poll(DRAIN_QUIET_MS):
                self._forward(xsub, xpub)
        finally:
            xsub.close()
            xpub.close(linger=int(DRAIN_TIMEOUT * 1000))
            self._close_wake()

    def _forward(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        """One event in: into the ring, out to the taps (dropped, never waited for)."""
        frames = xsub.recv_multipart(copy=True)
        with self.lock:
            self.ring.append((time.time_ns(), frames))
        try:
            xpub.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.forwarded += 1

    def wait_ready(self, timeout: float = 5.0) -> None:
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def history(self, since_ns: int) -> list[list[bytes]]:
        with self.lock:
            return [frames for t, frames in self.ring if t >= since_ns]

    def stop(self) -> None:
        self._halt.set()
        with self._wake_lock:
            if self._wake >= 0:
                os.eventfd_write(self._wake, 1)

    def _close_wake(self) -> None:
        with self._wake_lock:
            if self._wake >= 0:
                os.close(self._wake)
                self._wake = -1
