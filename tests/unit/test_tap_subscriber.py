"""The tap's subscriber side without root: discovery, filters, seq gaps, formats, keys, a live stream."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest
import zmq

import zentry.bus.messages as M
from zentry.bus import codec
from zentry.bus.endpoints import Endpoints
from zentry.bus.envelope import Envelope
from zentry.bus.errors import InvalidArgument, PermissionDenied
from zentry.bus.events import EventStream, Publisher, unpack_events
from zentry.bus.tap import (
    Filters,
    Gap,
    SeqTracker,
    Tap,
    TapEvent,
    discover,
    format_gap_text,
    format_json,
    format_text,
    parse_duration,
    read_authorized_keys,
    read_key,
)


def ev(topic: str, seq: int, body, *, id: str = "1a-1", parent: str = "", sender: str | None = None) -> TapEvent:
    env = Envelope(type=body.TAG, id=id, parent=parent, sender=sender or topic.split(".")[2], time_ns=1_700_000_000_123_456_789, body=body)
    return TapEvent(topic, seq, env, env.encode())


SYSCALL = M.Syscall(container_id="c1", pid=42, tid=42, syscall="openat", args=[-100, "/etc/hostname", 0], result=3, errno="", duration_ns=12_000)
STATUS = M.StatusChanged(container_id="c1", old="created", new="running")


def test_parse_duration():
    assert parse_duration("30s") == 30 and parse_duration("500ms") == 0.5 and parse_duration("2m") == 120
    assert parse_duration("1h") == 3600 and parse_duration("1.5") == 1.5
    with pytest.raises(InvalidArgument):
        parse_duration("soon")


def test_seq_gaps_per_publisher_and_restarts():
    t = SeqTracker()
    assert t.feed(ev("s.-.sandbox.heartbeat", 5, STATUS, id="a-1")) is None  # first sight: no baseline
    assert t.feed(ev("s.-.sandbox.heartbeat", 6, STATUS, id="a-2")) is None
    gap = t.feed(ev("s.-.sandbox.heartbeat", 10, STATUS, id="a-3"))
    assert (gap.count, gap.after_seq, gap.seq, gap.actor, gap.publisher) == (3, 6, 10, "sandbox", "a")
    # another process with the same actor name is another publisher
    assert t.feed(ev("s.-.sandbox.heartbeat", 1, STATUS, id="b-1")) is None
    # a publisher that restarted (seq back to 1) lost nothing
    assert t.feed(ev("s.-.sandbox.heartbeat", 1, STATUS, id="a-9")) is None
    assert t.dropped == 3
    text = format_gap_text(gap)
    assert "3 events lost" in text and "seq 7..9" in text
    assert json.loads(format_json(gap))["type"] == "tap.dropped"


def test_filters():
    sys_ev = ev("sb.c1.sentry.syscall", 1, SYSCALL)
    st_ev = ev("sb.c1.controller.status", 1, STATUS)
    assert Filters().match(sys_ev)
    assert Filters(actors={"sentry"}).match(sys_ev) and not Filters(actors={"sentry"}).match(st_ev)
    assert Filters(kinds={"status"}).match(st_ev) and not Filters(kinds={"status"}).match(sys_ev)
    assert Filters(syscalls={"openat"}).match(sys_ev) and not Filters(syscalls={"openat"}).match(st_ev)
    assert not Filters(syscalls={"read"}).match(sys_ev)
    assert Filters(containers={"c1"}).match(st_ev) and not Filters(containers={"c2"}).match(st_ev)
    assert Filters(topics=["sb.c1.sentry."]).match(sys_ev) and not Filters(topics=["sb.c1.sentry."]).match(st_ev)
    assert Filters(ids={"sb"}).match(st_ev) and Filters(ids={"c1"}).match(st_ev) and not Filters(ids={"x"}).match(st_ev)


def test_text_and_json_formats():
    line = format_text(ev("sb.c1.sentry.syscall", 3, SYSCALL, id="1a-7", parent=""))
    assert ' sb/c1 sentry syscall [42] openat(-100, "/etc/hostname", 0) = 3 <12us> id=1a-7' in line
    assert "parent=" not in line and "\x1b[" not in line
    line = format_text(ev("sb.c1.controller.status", 2, STATUS, id="1b-3", parent="99-1"))
    assert "sb/c1 controller status created -> running id=1b-3 parent=99-1" in line
    assert "\x1b[" in format_text(ev("sb.c1.controller.status", 2, STATUS), colour=True)
    refused = M.Syscall(container_id="c1", pid=1, tid=1, syscall="kexec_load", args=[], result=0, errno="ENOSYS", duration_ns=0)
    assert "kexec_load() = -1 ENOSYS" in format_text(ev("sb.c1.sentry.syscall", 1, refused))
    continued = M.Syscall(container_id="c1", pid=1, tid=1, syscall="openat", args=[-100, "/etc/passwd", 0], result=0, errno="",
                          duration_ns=0, continued=True)
    assert 'openat(-100, "/etc/passwd", 0) = ? (continued)' in format_text(ev("sb.c1.sentry.syscall", 1, continued))
    obj = json.loads(format_json(ev("sb.c1.controller.status", 2, STATUS, id="1b-3", parent="99-1")))
    assert obj == {"topic": "sb.c1.controller.status", "seq": 2, "id": "1b-3", "parent": "99-1", "sender": "controller",
                   "time_ns": 1_700_000_000_123_456_789, "type": "event.status", "body": {"container_id": "c1", "old": "created", "new": "running"}}


def test_keys(tmp_path):
    public, secret = zmq.curve_keypair()
    (tmp_path / "k").write_text(secret.decode() + "\n")
    assert read_key(str(tmp_path / "k"), secret=True) == secret
    assert read_key(public.decode(), secret=False) == public  # inline public key
    (tmp_path / "cert").write_text(f'curve\n    public-key = "{public.decode()}"\n    secret-key = "{secret.decode()}"\n')
    assert read_key(str(tmp_path / "cert"), secret=True) == secret
    assert read_key(str(tmp_path / "cert"), secret=False) == public
    (tmp_path / "bad").write_text("short\n")
    with pytest.raises(InvalidArgument):
        read_key(str(tmp_path / "bad"), secret=True)
    (tmp_path / "auth").write_text(f"# collector\n{public.decode()}\n\n")
    assert read_authorized_keys(str(tmp_path / "auth")) == {public}
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(InvalidArgument):
        read_authorized_keys(str(tmp_path / "empty"))


def test_discover_groups_containers_by_sandbox(tmp_path):
    def state(cid, **kw):
        os.makedirs(tmp_path / cid)
        (tmp_path / cid / "state.json").write_text(json.dumps({"id": cid, **kw}))

    state("pod", sandbox_id="pod", bus_dir=str(tmp_path / "pod"), controller_pid=11)
    state("member", sandbox_id="pod", bus_dir=str(tmp_path / "pod"), controller_pid=11)
    state("solo", sandbox_id="solo", bus_dir="/run/zentry-bus/abc", controller_pid=12)
    os.makedirs(tmp_path / "creating")  # being created: its stream is up, no state yet
    (tmp_path / "creating" / "events.sock").write_text("")
    os.makedirs(tmp_path / "junk")
    found = discover(str(tmp_path))
    assert set(found) == {"pod", "solo", "creating"}
    assert found["pod"].containers == {"pod", "member"} and found["pod"].controller_pid == 11
    # the bus directory is the one the root implies, never the one a state file names
    assert found["solo"].bus_dir == str(tmp_path / "solo")
    assert found["creating"].controller_pid == 0 and found["creating"].bus_dir == str(tmp_path / "creating")
    assert discover(str(tmp_path / "missing")) == {}
    assert Filters(ids={"member"}).follows(found["pod"]) and not Filters(ids={"member"}).follows(found["solo"])
    # entries others could have written are skipped; a root others can write is refused
    os.chmod(tmp_path / "solo" / "state.json", 0o666)
    os.chmod(tmp_path / "member", 0o777)
    found = discover(str(tmp_path))
    assert set(found) == {"pod", "creating"} and found["pod"].containers == {"pod"}
    os.chmod(tmp_path, 0o777)
    with pytest.raises(PermissionDenied, match="writable by group or others"):
        discover(str(tmp_path))
    os.chmod(tmp_path, 0o700)


def _stream(ctx, root: str, name: str) -> tuple[Endpoints, EventStream]:
    """A fake sandbox ``name`` under ``root``: its directory and its event stream, running in this process."""
    sdir = os.path.join(root, name)
    os.makedirs(sdir)
    ep = Endpoints(sdir)
    stream = EventStream(ctx, ep.events_in, ep.events)
    stream.start()
    stream.wait_ready()
    return ep, stream


@pytest.fixture
def fake_root():
    """A root with one fake sandbox ``sb`` whose stream runs in this process."""
    root = tempfile.mkdtemp(prefix="zt-", dir="/tmp")
    ctx = zmq.Context()
    ep, stream = _stream(ctx, root, "sb")
    sdir = os.path.join(root, "sb")
    with open(os.path.join(sdir, "state.json"), "w") as f:
        json.dump({"id": "sb", "sandbox_id": "sb", "bus_dir": sdir, "controller_pid": os.getpid()}, f)
    try:
        yield root, ctx, ep
    finally:
        stream.stop()
        stream.join(5)
        ctx.destroy(linger=0)
        shutil.rmtree(root, ignore_errors=True)


def _live(pub: Publisher) -> None:
    deadline = time.monotonic() + 5
    while not pub.flush():
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_tap_follows_a_stream_counts_gaps_and_filters(fake_root):
    root, ctx, ep = fake_root
    with Tap(root=root, filters=Filters(kinds={"status", "syscall"}), ctx=ctx) as tap:
        assert set(tap.streams) == {"sb"}
        time.sleep(0.2)  # the subscription reaches the stream
        pub = Publisher(ctx, ep.events_in, sandbox_id="sb", actor="controller")
        try:
            _live(pub)
            pub.publish(STATUS)
            pub.publish(M.Heartbeat(actor="controller", pid=1, uptime_ns=1, handled=0, published=1))  # filtered out
            pub.seq += 4  # four events lost on the way
            pub.publish(M.StatusChanged(container_id="c1", old="running", new="stopped"))
            got = list(tap.drain(1.0))
        finally:
            pub.close()
    events = [g for g in got if isinstance(g, TapEvent)]
    gaps = [g for g in got if isinstance(g, Gap)]
    assert [e.env.body.new for e in events] == ["running", "stopped"]
    assert [(g.count, g.after_seq, g.seq) for g in gaps] == [(4, 2, 7)]
    assert tap.received == 3 and tap.dropped == 4
    assert events[0].sandbox == "sb" and events[0].container == "c1" and events[0].actor == "controller" and events[0].kind == "status"


def test_tap_unpacks_batches_into_events_and_relays_them_one_by_one(fake_root):
    root, ctx, ep = fake_root
    with Tap(root=root, ctx=ctx) as tap:
        time.sleep(0.2)
        pub = Publisher(ctx, ep.events_in, sandbox_id="sb", actor="sentry")
        try:
            _live(pub)
            calls = [M.Syscall(container_id="c1", pid=42, tid=42, syscall="getpid", args=[], result=i, errno="", duration_ns=1)
                     for i in range(300)]
            for msg in calls:
                pub.publish(msg)  # one topic: a full batch (BATCH_MAX) then the rest
            pub.send_pending()
            got = [g for g in tap.drain(1.0) if isinstance(g, TapEvent)]
        finally:
            pub.close()
    assert [e.env.body for e in got] == calls
    assert [e.seq for e in got] == list(range(1, 301))
    assert tap.received == 300 and tap.dropped == 0 and tap.bad_frames == 0
    # relaying (zentry tap --serve) sends each event as a stream message of its own
    relayed = unpack_events(got[5].frames)
    assert relayed == [("sb.c1.sentry.syscall", 6, got[5].data)]


def test_tap_finds_sandboxes_created_after_it_started(tmp_path):
    root = tempfile.mkdtemp(prefix="zt-", dir="/tmp")
    ctx = zmq.Context()
    stream = None
    try:
        with Tap(root=root, ctx=ctx, rescan_interval=0.05, history_timeout=0.2) as tap:
            assert tap.streams == {}
            ep, stream = _stream(ctx, root, "late")
            sdir = os.path.join(root, "late")
            list(tap.drain(0.5))
            assert set(tap.streams) == {"late"}
            pub = Publisher(ctx, ep.events_in, sandbox_id="late", actor="gofer")
            try:
                _live(pub)
                pub.publish(M.ActorStarted(actor="gofer", pid=7))
                got = [g for g in tap.drain(0.5) if isinstance(g, TapEvent)]
            finally:
                pub.close()
            assert [g.topic for g in got] == ["late.-.gofer.actor_started"]
            stream.stop()
            stream.join(5)
            shutil.rmtree(sdir)
            list(tap.drain(1.5))  # gone, and its grace period over
            assert tap.streams == {}
    finally:
        if stream is not None:
            stream.stop()
        ctx.destroy(linger=0)
        shutil.rmtree(root, ignore_errors=True)


def test_a_new_sandbox_is_found_when_its_stream_appears_not_at_the_next_rescan():
    """inotify: a short-lived sandbox can come and go between two rescans."""
    root = tempfile.mkdtemp(prefix="zt-", dir="/tmp")
    ctx = zmq.Context()
    stream = None
    try:
        with Tap(root=root, ctx=ctx, rescan_interval=60) as tap:  # no rescan during the test
            list(tap.drain(0.1))
            _ep, stream = _stream(ctx, root, "quick")
            deadline = time.monotonic() + 2
            while "quick" not in tap.streams and time.monotonic() < deadline:
                list(tap.poll(50))
            assert set(tap.streams) == {"quick"}
    finally:
        if stream is not None:
            stream.stop()
            stream.join(5)
        ctx.destroy(linger=0)
        shutil.rmtree(root, ignore_errors=True)


def test_a_ring_from_a_controller_gone_for_good_is_not_waited_for():
    """The controller the tap asked removed its bus directory (its last act)
    without answering: the tap goes on at once, not after HISTORY_TIMEOUT."""
    root = tempfile.mkdtemp(prefix="zt-", dir="/tmp")
    ctx = zmq.Context()
    ep, stream = _stream(ctx, root, "gone")
    sdir = os.path.join(root, "gone")
    silent = ctx.socket(zmq.ROUTER)  # a controller that never answers
    silent.setsockopt(zmq.LINGER, 0)
    silent.bind(ep.actor("controller"))
    try:
        with Tap(root=root, ctx=ctx, since_ns=0, history_timeout=30) as tap:
            followed = tap.streams["gone"]
            deadline = time.monotonic() + 5
            while followed.hist_sock is None and time.monotonic() < deadline:
                list(tap.poll(50))
            assert followed.hist_sock is not None, "the tap never asked for the ring"
            assert silent.poll(5000), "the request never reached the controller"
            silent.close()
            stream.stop()
            stream.join(5)
            shutil.rmtree(sdir)
            start = time.monotonic()
            while followed.waiting and time.monotonic() - start < 5:
                list(tap.poll(50))
            assert not followed.waiting
            assert time.monotonic() - start < 2
    finally:
        stream.stop()
        ctx.destroy(linger=0)
        shutil.rmtree(root, ignore_errors=True)


def test_remote_tcp_tap_needs_curve_keys():
    with pytest.raises(InvalidArgument, match="CURVE"):
        Tap(remote="tcp://127.0.0.1:1")
    with pytest.raises(InvalidArgument):
        Tap(remote="udp://x")


def test_relay_sends_runs_of_consecutive_events_as_one_batch():
    from zentry.bus.events import BATCH_MAX, unpack_events
    from zentry.bus.tap import TapEvent
    from zentry.cmd.tap import relay_batches

    def ev(topic: str, seq: int) -> TapEvent:
        return TapEvent(topic, seq, None, f"{topic}#{seq}".encode())

    events = [ev("a", 5), ev("a", 6), ev("a", 7), ev("a", 9), ev("b", 10)] + [ev("c", n) for n in range(BATCH_MAX + 1)]
    batches = relay_batches(events)
    got = [[(t, s, d.decode()) for t, s, d in unpack_events(frames)] for frames, _count in batches]
    assert got[0] == [("a", 5, "a#5"), ("a", 6, "a#6"), ("a", 7, "a#7")]
    assert got[1] == [("a", 9, "a#9")]  # 8 is missing: the remote tap must see the gap
    assert got[2] == [("b", 10, "b#10")]
    assert [len(g) for g in got[3:]] == [BATCH_MAX, 1] and got[4] == [("c", BATCH_MAX, f"c#{BATCH_MAX}")]
    assert [count for _frames, count in batches] == [len(g) for g in got]
    # every event relayed once, in order
    assert [d for g in got for _t, _s, d in g] == [e.data.decode() for e in events]


def test_a_tap_of_a_missing_root_waits_instead_of_spinning(tmp_path):
    """Before any sandbox (the root not even made yet) poll() waits its timeout out."""
    with Tap(root=str(tmp_path / "not-yet"), filters=Filters()) as tap:
        calls, started, cpu = 0, time.monotonic(), time.process_time()
        while time.monotonic() - started < 0.5:
            assert tap.poll(100) == []
            calls += 1
        assert calls <= 10, calls  # ~100 ms each (a rescan may cut one short); it spun through thousands
        assert time.process_time() - cpu < 0.25
