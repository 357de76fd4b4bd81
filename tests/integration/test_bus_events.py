"""The event stream: topics, seq, batches, drop-and-count, the ring, late joiners."""

from __future__ import annotations

import shutil
import tempfile
import time

import pytest
import zmq

import zentry.bus.messages as M
from zentry.bus import codec, envelope, errors, events
from zentry.bus.endpoints import Endpoints
from zentry.bus.events import EventStream, Publisher, topic, unpack_events


@pytest.fixture
def bus():
    d = tempfile.mkdtemp(prefix="zb-", dir="/tmp")
    ctx = zmq.Context()
    streams: list[EventStream] = []

    def start_stream() -> EventStream:
        ep = Endpoints(d)
        s = EventStream(ctx, ep.events_in, ep.events)
        s.start()
        s.wait_ready()
        streams.append(s)
        return s

    def sub(prefix: bytes = b"") -> zmq.Socket:
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, prefix)
        s.connect(Endpoints(d).events)
        time.sleep(0.05)
        return s

    ns = type("Bus", (), {})()
    ns.dir, ns.ctx, ns.ep, ns.start_stream, ns.sub = d, ctx, Endpoints(d), start_stream, sub
    try:
        yield ns
    finally:
        for s in streams:
            s.stop()
            s.join(5)  # regression: a `_stop` Event shadowed Thread._stop and join() raised TypeError
            assert not s.is_alive()
        ctx.destroy(linger=0)
        shutil.rmtree(d, ignore_errors=True)


def wait_live(pub: Publisher) -> None:
    deadline = time.monotonic() + 5
    while not pub.flush():
        assert time.monotonic() < deadline, "the stream never subscribed"
        time.sleep(0.005)


def recv_messages(sock: zmq.Socket, quiet_ms: int = 300) -> list[list[bytes]]:
    out = []
    while sock.poll(quiet_ms):
        out.append(sock.recv_multipart())
    return out


def events_of(messages: list[list[bytes]]) -> list[tuple[bytes, int, envelope.Envelope]]:
    return [(t.encode(), seq, envelope.decode(f)) for frames in messages for t, seq, f in unpack_events(frames)]


def recv_all(sock: zmq.Socket, quiet_ms: int = 300) -> list[tuple[bytes, int, envelope.Envelope]]:
    return events_of(recv_messages(sock, quiet_ms))


def test_topic_format():
    assert topic("sbx", "web", "controller", "status") == b"sbx.web.controller.status"
    assert topic("sbx", None, "gofer", "heartbeat") == b"sbx.-.gofer.heartbeat"
    assert events.event_kind(M.ProcessExited(container_id="c", pid=1, exit_status=0)) == "process_exit"


def test_events_flow_with_topics_seq_and_prefix_filters(bus):
    bus.start_stream()
    everything = bus.sub()
    only_web = bus.sub(b"sbx.web.")
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="controller")
    try:
        wait_live(pub)
        pub.publish(M.StatusChanged(container_id="web", old="created", new="running"), parent="req-1")
        pub.publish(M.StatusChanged(container_id="db", old="created", new="running"))
        pub.publish(M.Heartbeat(actor="controller", pid=1, uptime_ns=2, handled=3, published=4))
        pub.publish(M.SignalSent(container_id="db", signal=9, pids=[5]), container_id="web")  # explicit container wins
        got = recv_all(everything)
        web = recv_all(only_web)
    finally:
        pub.close()
        everything.close()
        only_web.close()
    assert [(t, s) for t, s, _e in got] == [
        (b"sbx.web.controller.status", 1),
        (b"sbx.db.controller.status", 2),
        (b"sbx.-.controller.heartbeat", 3),
        (b"sbx.web.controller.signal", 4),
    ]
    assert got[0][2].parent == "req-1" and got[0][2].sender == "controller"
    assert got[0][2].body == M.StatusChanged(container_id="web", old="created", new="running")
    assert [s for _t, s, _e in web] == [1, 4]
    assert pub.published == 4


def test_events_published_before_the_stream_exists_are_delivered(bus):
    """Regression: a PUB drops everything until the stream's subscription
    arrives (ZeroMQ's slow joiner), which lost every actor_started event."""
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="gofer")
    try:
        pub.publish(M.ActorStarted(actor="gofer", pid=42))
        pub.publish(M.Heartbeat(actor="gofer", pid=42, uptime_ns=1, handled=0, published=1))
        stream = bus.start_stream()
        sub = bus.sub()
        deadline = time.monotonic() + 5
        while not pub.flush():
            assert time.monotonic() < deadline, "the stream never subscribed"
            time.sleep(0.01)
        pub.publish(M.Dropped(count=0))
        time.sleep(0.2)
        hist = [(t, s, e.type) for t, s, e in events_of(stream.history(0))]
        sub.close()
    finally:
        pub.close()
    assert hist == [
        (b"sbx.-.gofer.actor_started", 1, "event.actor_started"),
        (b"sbx.-.gofer.heartbeat", 2, "event.heartbeat"),
        (b"sbx.-.gofer.dropped", 3, "event.dropped"),
    ]


def test_the_backlog_goes_out_before_the_batch_open_when_the_stream_subscribes(bus):
    """Regression: the open batch was sent before the backlog it came after (seq 3 before 1 and 2)."""
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="sandbox", flush_interval=0)
    try:
        pub.publish(M.ActorStarted(actor="sandbox", pid=42))
        pub.publish(M.Heartbeat(actor="sandbox", pid=42, uptime_ns=1, handled=0, published=1))
        pub.send_pending()  # not live: both wait in the backlog
        stream = bus.start_stream()
        pub.publish(M.Dropped(count=0))  # open batch, while the subscription is on its way
        deadline = time.monotonic() + 5
        while not pub.flush():
            assert time.monotonic() < deadline, "the stream never subscribed"
            time.sleep(0.01)
        while stream.forwarded < 3:
            assert time.monotonic() < deadline, stream.forwarded
            time.sleep(0.01)
    finally:
        pub.close()
    assert [s for _t, s, _e in events_of(stream.history(0))] == [1, 2, 3]


def test_a_slow_subscriber_drops_and_counts_never_blocks(bus):
    bus.start_stream()
    slow = bus.sub()
    slow.setsockopt(zmq.RCVHWM, 100)
    # small batches: more stream messages than the stream's queue for a subscriber holds
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="sandbox", batch_max=2)
    n = 60_000
    try:
        deadline = time.monotonic() + 5
        while not pub.flush():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        msg = M.Syscall(container_id="c", pid=1, tid=1, syscall="getpid", args=[], result=1, errno="", duration_ns=1)
        start = time.monotonic()
        for _ in range(n):
            pub.publish(msg)
        publish_time = time.monotonic() - start
        time.sleep(0.3)
        got = recv_all(slow, quiet_ms=500)
    finally:
        pub.close()
        slow.close()
    seqs = [s for _t, s, _e in got]
    assert seqs == sorted(seqs) and seqs[0] >= 1 and seqs[-1] <= n
    # What the subscriber missed is exactly what the seq gaps say.
    lost = (seqs[0] - 1) + sum(b - a - 1 for a, b in zip(seqs, seqs[1:])) + (n - seqs[-1])
    assert lost + len(seqs) == n
    assert lost > 0, "the subscriber never fell behind: the test proves nothing"
    assert publish_time < 10  # never blocked on the slow reader


def test_ring_keeps_the_last_events_with_time(bus):
    stream = bus.start_stream()
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="a")
    try:
        while not pub.flush():
            time.sleep(0.01)
        def wait_forwarded(n: int) -> None:
            deadline = time.monotonic() + 5
            while stream.forwarded < n:
                assert time.monotonic() < deadline, stream.forwarded
                time.sleep(0.01)

        for i in range(events.RING_SIZE):
            pub.publish(M.Dropped(count=i))
        wait_forwarded(events.RING_SIZE)
        mid = time.time_ns()
        for i in range(events.RING_SIZE, events.RING_SIZE + 50):
            pub.publish(M.Dropped(count=i))
        wait_forwarded(events.RING_SIZE + 50)
    finally:
        pub.close()
    everything = events_of(stream.history(0))
    assert len(everything) == events.RING_SIZE  # the oldest batch is cut to fit
    assert everything[0][2].body.count == 50 and everything[0][1] == 51  # seq follows the cut
    assert [e.body.count for _t, _s, e in everything] == list(range(50, events.RING_SIZE + 50))
    recent = events_of(stream.history(mid))
    assert [e.body.count for _t, _s, e in recent] == list(range(events.RING_SIZE, events.RING_SIZE + 50))


def test_stream_reports_bind_failures(bus):
    s = EventStream(bus.ctx, "ipc:///nonexistent-dir/x/events.in", "ipc:///nonexistent-dir/x/events.sock")
    s.start()
    with pytest.raises(zmq.ZMQError):
        s.wait_ready()
    s.join(5)
    assert not s.is_alive()


def test_events_of_one_topic_travel_in_batches_each_with_its_own_seq(bus):
    bus.start_stream()
    sub = bus.sub()
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="sentry", batch_max=8)
    try:
        wait_live(pub)
        for i in range(20):
            pub.publish(M.Dropped(count=i))
        pub.publish(M.StatusChanged(container_id="web", old="created", new="running"))  # another topic: a new batch
        pub.publish(M.Dropped(count=20))
        pub.send_pending()
        messages = recv_messages(sub)
    finally:
        pub.close()
        sub.close()
    sizes = [len(unpack_events(m)) for m in messages]
    assert sizes == [8, 8, 4, 1, 1]
    got = events_of(messages)
    assert [s for _t, s, _e in got] == list(range(1, 23))
    assert [t for t, _s, _e in got] == [b"sbx.-.sentry.dropped"] * 20 + [b"sbx.web.sentry.status", b"sbx.-.sentry.dropped"]
    assert [e.body.count for _t, _s, e in got if e.type == "event.dropped"] == list(range(21))
    assert len({e.id for _t, _s, e in got}) == 22  # every event its own envelope
    assert pub.published == 22


def test_a_batch_goes_out_within_the_flush_interval_without_a_flush(bus):
    """No owner loop (the sentry's thread publishes): the process's flusher sends the open batch."""
    bus.start_stream()
    sub = bus.sub()
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="sentry")
    try:
        wait_live(pub)
        t0 = time.monotonic()
        pub.publish(M.Dropped(count=7))
        assert sub.poll(2000), "the open batch was never sent"
        waited = time.monotonic() - t0
        got = events_of([sub.recv_multipart()])
    finally:
        pub.close()
        sub.close()
    assert [(t, s, e.body.count) for t, s, e in got] == [(b"sbx.-.sentry.dropped", 1, 7)]
    assert waited < 0.5


def test_a_dropped_batch_is_a_seq_gap_of_its_size(bus):
    """Batches the stream cannot take are lost whole; the next batch's seq shows how many events."""
    pub = Publisher(bus.ctx, bus.ep.events_in, sandbox_id="sbx", actor="a", batch_max=5)
    pub.BACKLOG = 10  # before the stream exists: two batches wait, the third is dropped
    try:
        for i in range(15):
            pub.publish(M.Dropped(count=i))
        stream = bus.start_stream()
        wait_live(pub)
        pub.publish(M.Dropped(count=15))
        pub.send_pending()
        deadline = time.monotonic() + 5
        while stream.forwarded < 11:
            assert time.monotonic() < deadline, stream.forwarded
            time.sleep(0.01)
    finally:
        pub.close()
    seqs = [s for _t, s, _e in events_of(stream.history(0))]
    assert seqs == list(range(1, 11)) + [16]  # 11..15 lost: a gap of 5


def test_unpack_events_refuses_malformed_messages():
    good = events.event_frames(b"s.-.a.k", 3, [b"x", b"y"])
    assert unpack_events(good) == [("s.-.a.k", 3, b"x"), ("s.-.a.k", 4, b"y")]
    assert events.batch_count(good[2]) == 2
    assert events.batch_count(codec.pack([b"e"] * 70000)) == 70000
    bad = [
        good[:2],
        [b"\xff\xfe", good[1], good[2]],
        [good[0], codec.pack(-1), good[2]],
        [good[0], codec.pack(True), good[2]],
        [good[0], good[1], codec.pack([])],
        [good[0], good[1], codec.pack(["str"])],
        [good[0], good[1], b"\xc1"],
    ]
    for frames in bad:
        with pytest.raises(errors.ProtocolError):
            unpack_events(frames)
