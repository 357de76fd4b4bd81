"""Event publishing and the per-sandbox event stream.

Every actor owns a PUB socket connected to its sandbox's ``events.in``; the
controller runs the stream: an XSUB/XPUB forwarder that republishes on
``events.sock`` and keeps a bounded ring of recent events for late taps.

A message on the stream is three frames: ``[topic, seq, batch]``. ``batch``
is a msgpack array of one or more encoded envelopes (bin), consecutive events
of one publisher under one topic; the topic is
``<sandbox>.<container>.<actor>.<kind>`` (``-`` for no container) so a
subscriber filters by prefix; ``seq`` (msgpack int) is the per-publisher
counter of the batch's first event, the next ones count on from it, and a
subscriber counts what it lost from the gaps. Publishing never blocks: PUB
drops at its high-water mark, and the loss shows up as a seq gap.

Why batches: one ZeroMQ message per event costs ~14 µs here (the raw PUB
limit is ~70k msgs/s), so a publisher keeps the events of one topic together
and sends them as one message when the topic changes, when the batch is full
(``BATCH_MAX`` events or ``BATCH_BYTES``), when its owner flushes (an actor's
loop does before every wait, so an actor's event waits at most for the
handler that published it), and otherwise at the latest ``FLUSH_INTERVAL``
after the batch's first event (a process-wide flusher thread: publishers
with no loop of their own, such as the sentry thread's).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Iterable

import zmq

from zentry.bus import codec
from zentry.bus.envelope import PROTOCOL_VERSION, new_id
from zentry.bus.errors import ProtocolError
from zentry.bus.message import Message

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)

#: Messages a PUB socket queues for a slow peer before it drops.
PUB_HWM = 10000
#: Events kept by the stream for ``zentry tap --since``.
RING_SIZE = 4096
#: When the stream stops: forward what is still arriving until it has been
#: quiet for DRAIN_QUIET_MS, for at most DRAIN_TIMEOUT seconds. The
#: controller stops it only after the other actors have exited (their last
#: batches are queued by then) and after flushing its own last event, so the
#: quiet period is only a margin: it is on the path of every delete.
DRAIN_QUIET_MS = 10
DRAIN_TIMEOUT = 0.5
#: A tap asks the controller for the ring at the latest this long after it
#: subscribed to the stream (``bus/tap.py``). A controller that stops while a
#: tap that subscribed less than HISTORY_ASK_WAIT + HISTORY_ASK_MARGIN ago
#: has not asked yet (a tap that found a short-lived sandbox as it ended)
#: keeps answering ``stream.history`` until then, HISTORY_ASK_MAX seconds at most.
HISTORY_ASK_WAIT = 0.2
HISTORY_ASK_MARGIN = 0.3
HISTORY_ASK_MAX = 0.5
#: Most events in one stream message, and most envelope bytes.
BATCH_MAX = 256
BATCH_BYTES = 256 * 1024
#: Longest time an event waits in its publisher's batch (seconds).
FLUSH_INTERVAL = 0.002


def topic(sandbox_id: str, container_id: str | None, actor: str, kind: str) -> bytes:
    return f"{sandbox_id}.{container_id or '-'}.{actor}.{kind}".encode()


def event_kind(msg: Message) -> str:
    """The last part of a topic: ``event.syscall`` -> ``syscall``."""
    return msg.TAG.split(".", 1)[-1]


def batch_count(batch: bytes) -> int:
    """How many envelopes a batch frame holds, read from its msgpack array header (0: not an array)."""
    if not batch:
        return 0
    head = batch[0]
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC and len(batch) >= 3:
        return int.from_bytes(batch[1:3], "big")
    if head == 0xDD and len(batch) >= 5:
        return int.from_bytes(batch[1:5], "big")
    return 0


def unpack_events(frames: list[bytes]) -> list[tuple[str, int, bytes]]:
    """The events of one stream message ``[topic, seq, batch]``: ``(topic, seq, envelope frame)``
    for each, seqs counting on from the message's. Anything malformed is a ProtocolError."""
    if len(frames) != 3:
        raise ProtocolError(f"a stream message has 3 frames, not {len(frames)}")
    try:
        name = bytes(frames[0]).decode()
    except UnicodeDecodeError as err:
        raise ProtocolError("topic is not UTF-8") from err
    seq = codec.unpack(frames[1])
    if type(seq) is not int or seq < 0:
        raise ProtocolError("seq must be a non-negative int")
    batch = codec.unpack(frames[2])
    if type(batch) is not list or not batch or not all(type(env) is bytes for env in batch):
        raise ProtocolError("batch must be a non-empty array of encoded envelopes")
    return [(name, seq + i, env) for i, env in enumerate(batch)]


def event_frames(topic_: bytes, seq: int, envelopes: list[bytes]) -> list[bytes]:
    """One stream message ``[topic, seq, batch]`` holding ``envelopes`` (first one numbered ``seq``)."""
    return [topic_, codec.pack(seq), codec.pack(envelopes)]


class _Flusher(threading.Thread):
    """Sends every publisher's open batch at most FLUSH_INTERVAL after its first event.

    One per process, started with the first batch; publishers whose owner
    flushes sooner (the actor loop) are simply found empty."""

    _instance: "_Flusher | None" = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="event-flusher", daemon=True)
        self.cond = threading.Condition()
        self.due: dict[Publisher, float] = {}

    @classmethod
    def get(cls) -> "_Flusher":
        inst = cls._instance
        if inst is None:
            with cls._instance_lock:
                inst = cls._instance
                if inst is None:
                    inst = cls._instance = _Flusher()
                    inst.start()
        return inst

    def schedule(self, pub: "Publisher", at: float) -> None:
        with self.cond:
            if pub not in self.due:
                self.due[pub] = at
                if len(self.due) == 1:
                    self.cond.notify()

    def forget(self, pub: "Publisher") -> None:
        with self.cond:
            self.due.pop(pub, None)

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.due:
                    self.cond.wait()
                now = time.monotonic()
                first = min(self.due.values())
                if first > now:
                    self.cond.wait(first - now)
                    continue
                ready = [pub for pub, at in self.due.items() if at <= now]
                for pub in ready:
                    del self.due[pub]
            for pub in ready:
                try:
                    again = pub._timed_flush()
                except Exception:  # a broken socket must not end the flushing of others
                    continue
                if again:  # no stream yet: look for its subscription again a little later
                    self.schedule(pub, time.monotonic() + 5 * (pub.flush_interval or FLUSH_INTERVAL))


def _forget_flusher() -> None:
    _Flusher._instance = None  # threads do not survive fork
    _Flusher._instance_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_flusher)


class Publisher:
    """One actor's (or one thread's) event publisher.

    ``publish`` is meant for one thread (the owner); ``flush`` may be called
    from any thread (the flusher does): both take the publisher's lock,
    which is also what lets the socket be used from two threads. With
    ``flush_interval=0`` no flusher touches it: the owner must call
    ``send_pending`` (or ``flush``) itself, as the actor loop does before it
    waits; that is required when the owner polls the socket, since a poll is
    a use of the socket that the lock does not cover.

    The socket is an XPUB (the same wire as PUB) so that the publisher sees
    the stream's subscription arrive: until it has, a PUB would silently
    drop everything (ZeroMQ's slow joiner), which lost every actor's
    ``event.actor_started``. Events published before then wait in a bounded
    backlog (``BACKLOG`` events; beyond it they are dropped and show as a seq
    gap) and go out on the first ``flush`` after the subscription; the actor
    loop calls ``flush`` when the socket turns readable. Publishing never
    blocks.
    """

    BACKLOG = 1000

    def __init__(self, ctx: zmq.Context, endpoint: str | None, *, sandbox_id: str, actor: str,
                 batch_max: int = BATCH_MAX, flush_interval: float = FLUSH_INTERVAL) -> None:
        self.sandbox_id = sandbox_id
        self.actor = actor
        self.seq = 0
        self.published = 0  # events handed to the socket
        self.sock: zmq.Socket | None = None
        self.batch_max = max(1, batch_max)
        self.flush_interval = flush_interval
        self._live = False
        self._closing = False
        self._lock = threading.Lock()
        self._topics: dict[tuple[str | None, str], bytes] = {}
        self._topic = b""
        self._first = 0  # seq of the open batch's first event
        self._batch: list[bytes] = []
        self._bytes = 0
        self._backlog: collections.deque[tuple[list[bytes], int]] = collections.deque()
        self._backlog_events = 0
        if endpoint:
            sock = ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.SNDHWM, PUB_HWM)
            sock.setsockopt(zmq.LINGER, 200)
            # The stream may bind a moment after we connect (actors start
            # together): retry soon, not after zmq's default 100 ms.
            sock.setsockopt(zmq.RECONNECT_IVL, 5)
            sock.connect(endpoint)
            self.sock = sock

    @property
    def pending(self) -> bool:
        """Whether events wait in the open batch or the backlog."""
        return bool(self._batch or self._backlog)

    def publish(self, msg: Message, *, parent: str = "", container_id: str | None = None, time_ns: int | None = None) -> None:
        """Queue one event; ``time_ns`` (default: now) is its envelope time."""
        if self.sock is None:
            return
        cid = container_id if container_id is not None else getattr(msg, "container_id", None)
        tag = msg.TAG
        name = self._topics.get((cid, tag))
        if name is None:
            if len(self._topics) > 4096:
                self._topics.clear()
            name = self._topics[(cid, tag)] = topic(self.sandbox_id, cid, self.actor, tag.split(".", 1)[-1])
        data = codec.pack([PROTOCOL_VERSION, tag, new_id(), parent, self.actor,
                           time.time_ns() if time_ns is None else time_ns, msg.to_wire()])
        with self._lock:
            self.seq += 1
            batch = self._batch
            if batch and (name != self._topic or len(batch) >= self.batch_max or self._bytes + len(data) > BATCH_BYTES):
                self._seal()
                batch = self._batch
            if not batch:
                self._topic = name
                self._first = self.seq
                if self.flush_interval:
                    _Flusher.get().schedule(self, time.monotonic() + self.flush_interval)
            batch.append(data)
            self._bytes += len(data)
            if len(batch) >= self.batch_max:
                self._seal()

    def _seal(self) -> None:
        """Close the open batch: send it, or keep it until the stream subscribes. Lock held."""
        batch = self._batch
        if not batch:
            return
        frames = event_frames(self._topic, self._first, batch)
        self._batch = []
        self._bytes = 0
        if self._live and not self._backlog:
            self._send(frames, len(batch))
        elif self._backlog_events + len(batch) <= self.BACKLOG:  # (behind the backlog: order kept)
            self._backlog.append((frames, len(batch)))
            self._backlog_events += len(batch)
        # else: dropped; the gap in seq tells the subscriber

    def _send(self, frames: list[bytes], count: int) -> None:
        sock = self.sock
        try:
            sock.send(frames[0], _SNDMORE | _NOBLOCK)  # type: ignore[union-attr]
        except zmq.Again:
            return  # dropped (the stream's queue is full): the gap in seq tells the subscriber
        # once the first part is queued the rest of the message is accepted
        sock.send(frames[1], _SNDMORE | _NOBLOCK)  # type: ignore[union-attr]
        sock.send(frames[2], _NOBLOCK)  # type: ignore[union-attr]
        self.published += count

    def flush(self) -> bool:
        """Read (un)subscriptions, then send what waits (see :meth:`send_pending`). True when live.

        Call it when the socket turns readable: the subscription messages
        must be read, or a poller keeps reporting the socket readable."""
        with self._lock:
            if self.sock is None:
                return False
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        sock = self.sock
        while sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[union-attr]
            try:
                sub = sock.recv(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            if sub[:1] == b"\x01":
                self._live = True
        return self._send_pending()

    def _timed_flush(self) -> bool:
        """The flusher's flush; True when it should look again later (events wait for a stream)."""
        with self._lock:
            if self.sock is None or self._closing:
                return False
            return not self._flush_locked() and self.pending

    def send_pending(self) -> bool:
        """Send the open batch (and, once live, the backlog) now. True when live."""
        with self._lock:
            if self.sock is None:
                return False
            return self._send_pending()

    def _send_pending(self) -> bool:
        if self._live:
            while self._backlog:  # first: the open batch is newer
                frames, count = self._backlog.popleft()
                self._backlog_events -= count
                self._send(frames, count)
        self._seal()
        return self._live

    def close(self, linger_ms: int | None = None) -> None:
        """Send what waits (giving a stream that has not subscribed yet 200 ms), then close.

        ``linger_ms``: how long the socket may still try to deliver after
        closing (default: its LINGER, 200 ms); 0 when no stream can take it any
        more (the controller's own publisher once its stream has ended)."""
        with self._lock:
            if self.sock is None:
                return
            # From here the flusher leaves the socket alone; a flush of its
            # already under way has finished once we hold the lock again.
            self._closing = True
        if _Flusher._instance is not None:
            _Flusher._instance.forget(self)
        if self.pending and not self.flush():
            self.sock.poll(200)  # within the linger we allow anyway
        self.flush()
        with self._lock:
            self.sock.close(linger=linger_ms)
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
        # (arrival time, frames, events in the batch); at least RING_SIZE
        # events once full, and never more than RING_SIZE + BATCH_MAX.
        self.ring: collections.deque[tuple[int, list[bytes], int]] = collections.deque()
        self._ring_events = 0
        self.lock = threading.Lock()
        self.forwarded = 0  # events (not stream messages)
        # Not ``_stop``: that name is threading.Thread's own method (join()
        # and is_alive() call it), and an Event there breaks both.
        self._halt = threading.Event()
        # stop() writes here, so the loop wakes at once instead of at its next poll timeout
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._wake_lock = threading.Lock()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.subscribed: collections.deque[float] = collections.deque(maxlen=256)  # when taps subscribed (monotonic)

    def run(self) -> None:
        from zentry.bus.endpoints import bind_private

        try:
            xsub = self.ctx.socket(zmq.XSUB)
            xsub.setsockopt(zmq.LINGER, 0)
            bind_private(xsub, self.inbound)
            xsub.send(b"\x01")  # subscribe to everything upstream
            xpub = self.ctx.socket(zmq.XPUB)
            xpub.setsockopt(zmq.LINGER, 0)
            xpub.setsockopt(zmq.SNDHWM, PUB_HWM)
            xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every tap's subscription, not only a topic's first
            bind_private(xpub, self.outbound)
            for ep in self.extra_outbound:
                bind_private(xpub, ep)
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
        # The topics taps subscribe to (XPUB passes a topic's first
        # subscription and its last unsubscription, a tap's exit included).
        topics: set[bytes] = set()
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
                        self._track_subscription(xpub.recv(), topics)
            while xpub.poll(0):
                self._track_subscription(xpub.recv(), topics)
            # Stopping: what the actors published just before (the last
            # request's event, their actor_stopped) still reaches the taps.
            # With no tap there is nobody to drain for: the ring dies with us.
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while topics and time.monotonic() < deadline and xsub.poll(DRAIN_QUIET_MS):
                self._forward(xsub, xpub)
        finally:
            xsub.close()
            xpub.close(linger=int(DRAIN_TIMEOUT * 1000))
            self._close_wake()

    def _forward(self, xsub: zmq.Socket, xpub: zmq.Socket) -> None:
        """One stream message in: into the ring, out to the taps (dropped, never waited for)."""
        frames = xsub.recv_multipart(copy=True)
        count = batch_count(frames[2]) if len(frames) == 3 else 0
        count = count or 1  # not a batch: kept and forwarded as one (the taps count it as bad)
        with self.lock:
            ring = self.ring
            ring.append((time.time_ns(), frames, count))
            self._ring_events += count
            while self._ring_events - ring[0][2] >= RING_SIZE:
                self._ring_events -= ring.popleft()[2]
        try:
            xpub.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        self.forwarded += count

    def _track_subscription(self, note: bytes, topics: set[bytes]) -> None:
        """An XPUB subscription message: 1 + topic subscribes, 0 + topic unsubscribes."""
        if note[:1] == b"\x01":
            topics.add(note[1:])
            self.subscribed.append(time.monotonic())
        elif note[:1] == b"\x00":
            topics.discard(note[1:])

    def history_grace(self, asked: Iterable[float]) -> float:
        """How long a stopping controller still answers ``stream.history``, given
        when it was asked (monotonic): until each tap that subscribed in the last
        HISTORY_ASK_WAIT + HISTORY_ASK_MARGIN has asked, or that time is over."""
        window = HISTORY_ASK_WAIT + HISTORY_ASK_MARGIN
        now = time.monotonic()
        recent = [t for t in list(self.subscribed) if t > now - window]
        if not recent:
            return 0.0
        # a tap's request may be read before its subscription is: a margin
        if sum(1 for t in asked if t >= recent[0] - HISTORY_ASK_MARGIN) >= len(recent):
            return 0.0
        return min(HISTORY_ASK_MAX, max(0.0, recent[-1] + window - now))

    def wait_ready(self, timeout: float = 5.0) -> None:
        self._ready.wait(timeout)
        if self.error is not None:
            raise self.error

    def history(self, since_ns: int) -> list[list[bytes]]:
        """The stream messages that arrived at or after ``since_ns``, as they travelled, oldest
        first, holding at most the last RING_SIZE events (the oldest batch cut to fit)."""
        with self.lock:
            kept = [(frames, count) for t, frames, count in self.ring if t >= since_ns]
        excess = sum(count for _f, count in kept) - RING_SIZE
        out = [frames for frames, _count in kept]
        if excess > 0 and out:
            out[0] = _drop_oldest(out[0], excess)
        return out

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


def _drop_oldest(frames: list[bytes], n: int) -> list[bytes]:
    """A stream message without its first ``n`` events (seq moved on to match)."""
    try:
        events = unpack_events(frames)
    except ProtocolError:
        return frames
    rest = events[n:] or events[-1:]
    return event_frames(frames[0], rest[0][1], [env for _t, _s, env in rest])
