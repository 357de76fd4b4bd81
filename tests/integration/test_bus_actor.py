"""Actors and clients as real processes over ipc: request/reply, errors,
deadlines, retries, dead actors, the control lane, shutdown, events.

Each test forks a child that runs a small test actor (test-only message types
are registered for this module and removed afterwards, so the catalogue
test does not see them); the parent talks to it with ``Client`` or with a
raw DEALER. Every child is reaped; a test fails if one is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

import zentry.bus.messages as M
from zentry.bus import codec, envelope
from zentry.bus.actor import DEFERRED, Actor, Request, handles
from zentry.bus.client import Client
from zentry.bus.endpoints import Endpoints
from zentry.bus.envelope import Envelope, PROTOCOL_VERSION
from zentry.bus.errors import ActorGone, Internal, NotFound, Timeout, UnknownMessage
from zentry.bus.events import EventStream, unpack_events
from zentry.bus.message import REGISTRY, Message, doc, message

TEST_TAGS = ("test.echo", "test.slow", "test.fail", "test.missing", "test.later", "test.flaky", "test.flaky_once",
             "test.bad_reply", "test.huge_reply", "test.echoed", "test.ask")


def _declare() -> SimpleNamespace:
    """Test-only message types and the test actor (registered by the fixture)."""

    @message("test.echo", "request", idempotent=True)
    class Echo(Message):
        """Echo text back."""

        text: str = doc("what to echo")

    @message("test.echoed", "reply")
    class Echoed(Message):
        """The echo."""

        text: str = doc("what was sent")
        pid: int = doc("who answered")

    @message("test.slow", "request")
    class Slow(Message):
        """Block the actor's loop (a badly behaved handler)."""

        seconds: float = doc("how long to sleep")

    @message("test.fail", "request")
    class Fail(Message):
        """Raise ValueError."""

    @message("test.missing", "request")
    class Missing(Message):
        """Raise NotFound."""

        what: str = doc("the thing not found")

    @message("test.later", "request")
    class Later(Message):
        """Answer after a delay, from a timer (deferred reply)."""

        seconds: float = doc("delay")
        text: str = doc("what to echo")

    @message("test.flaky", "request", idempotent=True)
    class Flaky(Message):
        """Ignore the first attempt of each request id; answer the second."""

    @message("test.flaky_once", "request")
    class FlakyOnce(Message):
        """The same, but not idempotent: the client must not re-send."""

    @message("test.bad_reply", "request")
    class BadReply(Message):
        """A handler bug: return something that is not a reply."""

    @message("test.huge_reply", "request")
    class HugeReply(Message):
        """A handler bug: return a reply over the frame limit."""

    @message("test.ask", "request")
    class Ask(Message):
        """A read-only request the actor still answers while it stops."""

    class TestActor(Actor):
        name = "echo"
        heartbeat_interval = 0.2
        answered_while_stopping = frozenset({"test.ask"})

        def stopping_grace(self) -> float:
            return 2.0 if os.path.exists(os.path.join(self.marker_dir, "grace")) else 0.0

        def __init__(self, *a, marker_dir: str, **kw) -> None:
            super().__init__(*a, **kw)
            self.marker_dir = marker_dir
            self.attempts: dict[str, int] = {}

        @handles(Echo)
        def echo(self, msg: Echo, req: Request) -> Message:
            return Echoed(text=msg.text, pid=os.getpid())

        @handles(Ask)
        def ask(self, msg: Ask, req: Request) -> Message:
            return Echoed(text="asked", pid=os.getpid())

        @handles(Slow)
        def slow(self, msg: Slow, req: Request) -> Message:
            Path(self.marker_dir, f"slow-{req.id}").touch()
            time.sleep(msg.seconds)
            return M.Ok()

        @handles(Fail)
        def fail(self, msg: Fail, req: Request) -> Message:
            raise ValueError("the handler failed on purpose")

        @handles(Missing)
        def missing(self, msg: Missing, req: Request) -> Message:
            raise NotFound(f"container {msg.what!r} does not exist")

        @handles(Later)
        def later(self, msg: Later, req: Request) -> object:
            self.call_later(msg.seconds, lambda: req.reply(Echoed(text=msg.text, pid=os.getpid())))
            return DEFERRED

        @handles(Flaky, FlakyOnce)
        def flaky(self, msg: Message, req: Request) -> object:
            n = self.attempts[req.id] = self.attempts.get(req.id, 0) + 1
            if n == 1:
                return DEFERRED  # never answered: the caller's deadline passes
            return Echoed(text=f"attempt {n}", pid=os.getpid())

        @handles(BadReply)
        def bad_reply(self, msg: Message, req: Request) -> object:
            return {"not": "a message"}

        @handles(HugeReply)
        def huge_reply(self, msg: Message, req: Request) -> Message:
            return M.States(states=[{"x": "y" * 1000}] * 9000)

    return SimpleNamespace(**{c.__name__: c for c in (Echo, Echoed, Slow, Fail, Missing, Later, Flaky, FlakyOnce,
                                                       BadReply, HugeReply, Ask, TestActor)})


@pytest.fixture(scope="module")
def T():
    ns = _declare()
    yield ns
    for tag in TEST_TAGS:
        REGISTRY.pop(tag, None)


class Running:
    """A forked test actor, the parent's event stream, and helpers."""

    def __init__(self, T: SimpleNamespace, bus_dir: str) -> None:
        self.T = T
        self.bus_dir = bus_dir
        self.ep = Endpoints(bus_dir)
        self.ctx = zmq.Context()
        self.stream = EventStream(self.ctx, self.ep.events_in, self.ep.events)
        self.stream.start()
        self.stream.wait_ready()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(self.ep.events)
        time.sleep(0.05)  # let the SUB's subscription reach the stream
        self.pid = os.fork()
        if self.pid == 0:  # the child: run the actor, never return into pytest
            code = 1
            try:
                actor = T.TestActor(self.ep, sandbox_id="sbx", marker_dir=bus_dir)
                code = actor.run()
            finally:
                os._exit(code)
        self.status: int | None = None
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.ep.path("echo.sock")) and os.path.exists(self.ep.path("echo.ctl"))):
            assert time.monotonic() < deadline, "actor did not bind"
            assert self.poll_exit() is None, "actor died while starting"
            time.sleep(0.005)
        with self.control() as c:
            c.request(M.Ping(), timeout=5)

    def client(self, **kw) -> Client:
        return Client(self.ep.actor("echo"), ctx=self.ctx, peer_pid=self.pid, **kw)

    def control(self, **kw) -> Client:
        return Client(self.ep.control("echo"), ctx=self.ctx, peer_pid=self.pid, **kw)

    def dealer(self, endpoint: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        return s

    def wait_marker(self, prefix: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not any(n.startswith(prefix) for n in os.listdir(self.bus_dir)):
            assert time.monotonic() < deadline, f"no {prefix} marker"
            time.sleep(0.002)

    def poll_exit(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def wait_exit(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll_exit() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.status

    def events(self, until, timeout: float = 5.0) -> list[tuple[bytes, int, Envelope]]:
        """Receive events until ``until(events)`` is true (or fail at timeout)."""
        got: list[tuple[bytes, int, Envelope]] = []
        deadline = time.monotonic() + timeout
        while not until(got):
            left = deadline - time.monotonic()
            assert left > 0, f"events wanted but not seen; got {[(t, s, e.type) for t, s, e in got]}"
            if self.sub.poll(int(left * 1000) + 1):
                for topic, seq, frame in unpack_events(self.sub.recv_multipart()):
                    got.append((topic.encode(), seq, envelope.decode(frame)))
        return got

    def close(self) -> None:
        try:
            if self.poll_exit() is None:
                try:
                    with self.control() as c:
                        c.request(M.Shutdown(reason="test over"), timeout=2)
                except Exception:
                    pass
                if self.wait_exit(3) is None:
                    os.kill(self.pid, signal.SIGKILL)
                    self.wait_exit(5)
        finally:
            if self.status is None:  # last resort: never leave a child
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.sub.close()
            self.stream.stop()
            self.stream.join(5)
            assert not self.stream.is_alive()
            self.ctx.term()


@pytest.fixture
def actor(T):
    bus_dir = tempfile.mkdtemp(prefix="zb-", dir="/tmp")  # short: ipc paths are limited to 107 bytes
    os.chmod(bus_dir, 0o700)
    run = Running(T, bus_dir)
    try:
        yield run
    finally:
        run.close()
        shutil.rmtree(bus_dir, ignore_errors=True)
    with pytest.raises(ProcessLookupError):
        os.kill(run.pid, 0)  # reaped: not even a zombie


def raw_request(sock: zmq.Socket, body: Message | None = None, *, fields: list | None = None) -> str:
    """Send one request frame on a raw DEALER; returns its id."""
    if fields is None:
        env = Envelope.wrap(body, sender="raw")
        sock.send(env.encode())
        return env.id
    sock.send(codec.pack(fields))
    return fields[2]


def raw_reply(sock: zmq.Socket, timeout: float = 5) -> Envelope:
    assert sock.poll(int(timeout * 1000)), "no reply"
    return envelope.decode(sock.recv())


# --- request/reply -------------------------------------------------------------

def test_request_reply(actor, T):
    with actor.client() as c:
        reply = c.request(T.Echo(text="héllo"), timeout=5)
        assert reply == T.Echoed(text="héllo", pid=actor.pid)
        assert c.request(M.Ping(), timeout=5).pid == actor.pid  # ping is answered on the main socket too
        start = time.perf_counter()
        for i in range(200):
            assert c.request(T.Echo(text=str(i)), timeout=5).text == str(i)
        assert time.perf_counter() - start < 5


def test_reply_names_the_request_as_parent(actor, T):
    sock = actor.dealer(actor.ep.actor("echo"))
    try:
        mid = raw_request(sock, T.Echo(text="x"))
        reply = raw_reply(sock)
        assert reply.parent == mid and reply.sender == "echo" and reply.type == "test.echoed"
    finally:
        sock.close()


def test_error_replies_raise_the_same_class(actor, T):
    with actor.client() as c:
        with pytest.raises(NotFound, match="container 'web' does not exist") as info:
            c.request(T.Missing(what="web"), timeout=5)
        assert info.value.code == "not_found"
        with pytest.raises(Internal, match="ValueError: the handler failed on purpose"):
            c.request(T.Fail(), timeout=5)
        # the actor survived both
        assert c.request(T.Echo(text="still here"), timeout=5).text == "still here"


def test_type_the_actor_does_not_handle_is_unknown_message(actor):
    with actor.client() as c:
        with pytest.raises(UnknownMessage, match="echo does not handle container.start"):
            c.request(M.Start(container_id="c"), timeout=5)


def test_handler_bugs_in_the_reply_become_internal_errors(actor, T):
    # Regression: a reply that is not a message, or too large to encode,
    # used to raise out of the loop and kill the actor.
    with actor.client() as c:
        with pytest.raises(Internal, match="bad reply to test.bad_reply"):
            c.request(T.BadReply(), timeout=5)
        with pytest.raises(Internal, match="exceeds"):
            c.request(T.HugeReply(), timeout=5)
        assert c.request(T.Echo(text="alive"), timeout=5).text == "alive"
    assert actor.poll_exit() is None


def test_bad_frames_get_structured_errors_and_are_counted(actor, T):
    with actor.control() as ctl:
        before = ctl.request(M.Ping(), timeout=5).bad_frames
    sock = actor.dealer(actor.ep.actor("echo"))
    try:
        sock.send(b"\xc1 not msgpack")  # id unreadable: counted, not answered
        sock.send_multipart([b"part one", b"\x93\x01\x02\x03"])  # two frames: the last one is decoded
        mid = raw_request(sock, fields=[PROTOCOL_VERSION, "container.kill", "bad-body-1", "", "raw", 1, {"container_id": "c", "signal": "nine"}])
        reply = raw_reply(sock)
        assert (reply.parent, reply.body.code) == (mid, "protocol")
        assert "field 'signal' must be int" in reply.body.message
        raw_request(sock, fields=[PROTOCOL_VERSION, "no.such.type", "unknown-1", "", "raw", 1, {}])
        reply = raw_reply(sock)
        assert (reply.parent, reply.body.code) == ("unknown-1", "unknown_message")
        raw_request(sock, fields=[PROTOCOL_VERSION + 1, "ping", "future-1", "", "raw", 1, {}])
        reply = raw_reply(sock)
        assert (reply.parent, reply.body.code) == ("future-1", "protocol")
        assert "not supported" in reply.body.message
        # a well-formed event sent as a request: refused, but not a bad frame
        ev = raw_request(sock, M.Dropped(count=1))
        reply = raw_reply(sock)
        assert (reply.parent, reply.body.code) == (ev, "protocol")
        assert not sock.poll(200), "a frame without a readable id must not be answered"
    finally:
        sock.close()
    with actor.control() as ctl:
        pong = ctl.request(M.Ping(), timeout=5)
    assert pong.bad_frames - before == 5
    assert actor.poll_exit() is None


# --- deadlines, retries, dead actors --------------------------------------------

def test_deadline_raises_timeout(actor, T):
    with actor.client() as c:
        start = time.monotonic()
        with pytest.raises(Timeout, match="no reply to test.slow"):
            c.request(T.Slow(seconds=1.0), timeout=0.2)
        elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 0.8


def test_idempotent_request_is_retried_with_the_same_id(actor, T):
    with actor.client() as c:
        start = time.monotonic()
        reply = c.request(T.Flaky(), timeout=0.3, retries=1)
        assert reply.text == "attempt 2"  # the actor saw the same id twice
        assert 0.3 <= time.monotonic() - start < 2
        with pytest.raises(Timeout):
            c.request(T.Flaky(), timeout=0.2, retries=0)


def test_non_idempotent_request_is_never_resent(actor, T):
    with actor.client() as c:
        start = time.monotonic()
        with pytest.raises(Timeout):
            c.request(T.FlakyOnce(), timeout=0.3, retries=3)
        assert time.monotonic() - start < 0.9  # one deadline, not four


def test_deferred_reply_from_a_timer(actor, T):
    with actor.client() as c, actor.client() as c2:
        start = time.monotonic()
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("r", c.request(T.Later(seconds=0.3, text="late"), timeout=5)))
        t.start()
        time.sleep(0.05)
        # the actor is free while the deferred request waits
        assert c2.request(T.Echo(text="meanwhile"), timeout=1).text == "meanwhile"
        assert time.monotonic() - start < 0.3
        t.join(5)
        assert got["r"].text == "late"
        assert time.monotonic() - start >= 0.3


def test_killed_actor_gives_actor_gone_quickly(actor, T):
    killer = threading.Thread(target=lambda: (actor.wait_marker("slow-"), os.kill(actor.pid, signal.SIGKILL)))
    killer.start()
    try:
        with actor.client() as c:
            start = time.monotonic()
            with pytest.raises(ActorGone, match=f"pid {actor.pid}"):
                c.request(T.Slow(seconds=30), timeout=30)
            assert time.monotonic() - start < 2
    finally:
        killer.join(10)
    assert os.WIFSIGNALED(actor.wait_exit(5))


def test_missing_socket_is_actor_gone_at_once(T, tmp_path):
    with Client("ipc://" + str(tmp_path / "nobody.sock")) as c:
        start = time.monotonic()
        with pytest.raises(ActorGone, match="no actor listens"):
            c.request(M.Ping(), timeout=10)
        assert time.monotonic() - start < 0.5


def test_socket_gone_after_the_first_request_is_actor_gone_within_a_slice(T, tmp_path):
    """The socket file is stat-ed before a client's first request only; a later
    request to a vanished actor (no pid known) fails after one silent slice,
    not at its deadline."""
    ctx = zmq.Context()
    path = tmp_path / "short.sock"
    server = ctx.socket(zmq.ROUTER)
    server.bind("ipc://" + str(path))
    try:
        with Client("ipc://" + str(path), ctx=ctx) as c:
            with pytest.raises(Timeout):  # a first request: the file exists (a bare ROUTER never answers)
                c.request(M.Ping(), timeout=0.1, retries=0)
            server.close(linger=0)
            os.unlink(path)
            start = time.monotonic()
            with pytest.raises(ActorGone, match="no actor listens"):
                c.request(M.Ping(), timeout=10)
            assert time.monotonic() - start < 1.0
    finally:
        server.close(linger=0)
        ctx.term()


# --- the control lane -------------------------------------------------------------

def test_control_lane_is_served_before_queued_main_requests(actor, T):
    """The actor is single-threaded: while a slow handler runs, five echoes
    queue on the main socket and then a ping on the control socket. When the
    handler returns, the ping must be answered before any queued echo."""
    with actor.control() as ctl:
        ctl.request(M.Ping(), timeout=5)
        base = ctl.request(M.Ping(), timeout=5).handled  # replies sent before this pong
    main = actor.dealer(actor.ep.actor("echo"))
    control = actor.dealer(actor.ep.control("echo"))
    try:
        slow_id = raw_request(main, T.Slow(seconds=0.5))
        actor.wait_marker("slow-")
        echo_ids = [raw_request(main, T.Echo(text=str(i))) for i in range(5)]
        time.sleep(0.05)  # the echoes are queued first...
        ping_id = raw_request(control, M.Ping())  # ...then the ping
        pong = raw_reply(control)
        replies = [raw_reply(main) for _ in range(6)]
    finally:
        main.close()
        control.close()
    assert pong.parent == ping_id
    assert [r.parent for r in replies] == [slow_id, *echo_ids]
    # Only the previous pong and the slow request had been answered.
    assert pong.body.handled == base + 2
    assert all(pong.time_ns <= r.time_ns for r in replies[1:])


def test_shutdown_fails_deferred_and_queued_requests(actor, T):
    main = actor.dealer(actor.ep.actor("echo"))
    try:
        deferred = raw_request(main, T.Later(seconds=30, text="never"))
        time.sleep(0.1)  # the deferred request is now held by the actor
        slow = raw_request(main, T.Slow(seconds=0.4))
        actor.wait_marker("slow-")
        with actor.control() as ctl:
            queued = raw_request(main, T.Echo(text="queued behind the slow one"))
            start = time.monotonic()
            assert isinstance(ctl.request(M.Shutdown(reason="test"), timeout=5), M.Ok)
            assert time.monotonic() - start < 1.5
        replies = {r.parent: r.body for r in (raw_reply(main) for _ in range(3))}
    finally:
        main.close()
    assert isinstance(replies[slow], M.Ok)
    for mid in (deferred, queued):
        assert isinstance(replies[mid], M.Error) and replies[mid].code == "actor_gone", replies[mid]
        assert "stopping (test)" in replies[mid].message
    status = actor.wait_exit(5)
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_stopping_actor_still_answers_its_read_only_requests(actor, T):
    """What an actor declares answered_while_stopping (the controller's
    stream.history) is served when queued at the stop and during its
    stopping_grace; every other request queued then is refused."""
    Path(actor.bus_dir, "grace").touch()
    main = actor.dealer(actor.ep.actor("echo"))
    try:
        slow = raw_request(main, T.Slow(seconds=0.4))
        actor.wait_marker("slow-")
        with actor.control() as ctl:
            asked = raw_request(main, T.Ask())
            echo = raw_request(main, T.Echo(text="queued behind the slow one"))
            assert isinstance(ctl.request(M.Shutdown(reason="test"), timeout=5), M.Ok)
        replies = {r.parent: r.body for r in (raw_reply(main) for _ in range(3))}
        late = raw_request(main, T.Ask())  # the loop has ended: within the grace
        late_reply = raw_reply(main)
        refused = raw_request(main, T.Echo(text="too late"))
        refused_reply = raw_reply(main)
    finally:
        main.close()
    assert isinstance(replies[slow], M.Ok)
    assert replies[asked] == T.Echoed(text="asked", pid=actor.pid)
    assert isinstance(replies[echo], M.Error) and replies[echo].code == "actor_gone", replies[echo]
    assert late_reply.parent == late and late_reply.body == T.Echoed(text="asked", pid=actor.pid)
    assert refused_reply.parent == refused and refused_reply.body.code == "actor_gone"
    status = actor.wait_exit(10)
    assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_shutdown_through_client_raises_actor_gone_for_waiters(actor, T):
    with actor.client() as c:
        threading.Timer(0.2, lambda: Client(actor.ep.control("echo")).request(M.Shutdown(), timeout=5)).start()
        start = time.monotonic()
        with pytest.raises(ActorGone, match="is stopping"):
            c.request(T.Later(seconds=30, text="never"), timeout=10)
        assert time.monotonic() - start < 2
    assert actor.wait_exit(5) is not None


# --- events ----------------------------------------------------------------------

def test_started_heartbeat_and_request_events(actor, T):
    with actor.client() as c:
        reply_to = Envelope.wrap(T.Echo(text="e"), sender="cli")
        c.sock.send(reply_to.encode())
        assert c.sock.poll(5000)
        c.sock.recv()

    def have_all(evs):
        types = [e.type for _t, _s, e in evs]
        return "event.request" in types and types.count("event.heartbeat") >= 2

    evs = actor.events(have_all)
    by_type = {}
    for topic, seq, env in evs:
        by_type.setdefault(env.type, []).append((topic, seq, env))
    topic, _seq, hb = by_type["event.heartbeat"][0]
    assert topic == b"sbx.-.echo.heartbeat"
    assert hb.body.actor == "echo" and hb.body.pid == actor.pid and hb.sender == "echo"
    topic, _seq, req_ev = by_type["event.request"][0]
    assert topic == b"sbx.-.echo.request"
    assert req_ev.parent == reply_to.id
    assert (req_ev.body.request, req_ev.body.sender, req_ev.body.error) == ("test.echo", "cli", "")
    seqs = [s for _t, s, _e in evs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The stream's ring has what was forwarded, ActorStarted first.
    history = [e for frames in actor.stream.history(0) for e in unpack_events(frames)]
    topic, seq, frame = history[0]
    first = envelope.decode(frame)
    assert first.type == "event.actor_started" and first.body.pid == actor.pid
    assert seq == 1
    assert topic == "sbx.-.echo.actor_started"


# --- tcp only with CURVE --------------------------------------------------------

@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq built without CURVE")
def test_tcp_actor_with_curve_answers_only_curve_clients(tmp_path):
    public, secret = zmq.curve_keypair()

    class TcpActor(Actor):
        name = "remote"
        heartbeat_interval = 0
        curve_secret_key = secret

    port = free_port_pair()
    ep = Endpoints(str(tmp_path))
    ep_tcp = type("TcpEndpoints", (), {"actor": lambda self, n: f"tcp://127.0.0.1:{port}",
                                        "control": lambda self, n: f"tcp://127.0.0.1:{port + 1}",
                                        "events_in": None, "bus_dir": ep.bus_dir})()
    actor = TcpActor(ep_tcp, sandbox_id="s", publish_events=False)  # type: ignore[arg-type]
    t = threading.Thread(target=actor.run)
    t.start()
    try:
        time.sleep(0.2)
        with Client(f"tcp://127.0.0.1:{port}", curve_server_key=public) as c:
            assert c.request(M.Ping(), timeout=5).actor == "remote"
        with Client(f"tcp://127.0.0.1:{port}") as plain:  # no CURVE: the handshake never completes
            with pytest.raises(Timeout):
                plain.request(M.Ping(), timeout=0.5, retries=0)
    finally:
        with Client(f"tcp://127.0.0.1:{port + 1}", curve_server_key=public) as c:
            c.request(M.Shutdown(), timeout=5)
        t.join(5)
    assert not t.is_alive()


def free_port_pair() -> int:
    """A TCP port whose successor is free too (found by binding port 0)."""
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65535:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")
