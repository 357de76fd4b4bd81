"""The actor loop: a ROUTER socket, a handler table, a control lane, timers.

An actor subclass declares its handlers explicitly::

    class Controller(Actor):
        name = "controller"

        @handles(Start)
        def start(self, msg: Start, req: Request) -> Message: ...

A handler returns the reply message, or ``DEFERRED`` after keeping ``req`` to
answer later with ``req.reply(...)`` (e.g. ``wait``). An exception in a
handler becomes an ``Error`` reply; it never kills the actor. Frames the
decoder refuses are counted and answered with a structured error when their
id can be read. ``Ping`` and ``Shutdown`` arrive on a separate control socket
that is always served first, so they never wait behind slow work.

Lifecycle hooks: ``on_start`` (sockets bound, before serving), ``on_stop``,
``on_failure(exc)`` (the loop itself crashed). Requests still deferred when
the actor stops are failed with ``ActorGone`` at once.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from typing import Any, Callable

import zmq
import zmq.backend
from zmq import zmq_poll

from zentry.bus import envelope as envmod
from zentry.bus.endpoints import Endpoints, bind_private, check_endpoint
from zentry.bus.envelope import Envelope
from zentry.bus.errors import ActorGone, Internal, ProtocolError, UnknownMessage, ZentryError, to_wire
from zentry.bus.events import Publisher
from zentry.bus.log import get_logger
from zentry.bus.message import Message
from zentry.bus.messages import ActorStarted, ActorStopped, Error, Heartbeat, Ok, Ping, Pong, RequestHandled, Shutdown

log = get_logger("zentry.actor")

# Plain ints: the zmq enums' __and__ costs more than the syscall-free check itself.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK
#: The backend's send, without pyzmq's Python-level wrapper (routing_id/group/
#: Frame handling we never use): ~0.4 µs per part on the reply path.
_send = getattr(zmq.backend, "Socket", zmq.Socket).send


def _recv_request(sock: zmq.Socket) -> list[bytes]:
    """One message from a ROUTER: ``[identity, ..., frame]``.

    Cheaper than ``recv_multipart``, which asks ZMQ_RCVMORE through a
    getsockopt (and an enum) per part: the identity always has a part after
    it, and a Frame's ``more`` is a plain read."""
    parts = [sock.recv()]
    while True:
        part = sock.recv(copy=False)
        parts.append(part.bytes)
        if not part.more:
            return parts

#: A handler's return value meaning "I will reply later through req.reply()".
DEFERRED = object()


def handles(*types: type[Message]) -> Callable:
    """Mark a method as the handler of the given request types."""

    def mark(fn: Callable) -> Callable:
        fn._zentry_handles = types  # type: ignore[attr-defined]
        return fn

    return mark


class Request:
    """A request being answered: its envelope and where the reply goes."""

    __slots__ = ("actor", "sock", "identity", "env", "started_ns", "answered")

    def __init__(self, actor: "Actor", sock: zmq.Socket, identity: bytes, env: Envelope) -> None:
        self.actor = actor
        self.sock = sock
        self.identity = identity
        self.env = env
        self.started_ns = time.perf_counter_ns()
        self.answered = False

    @property
    def id(self) -> str:
        return self.env.id

    def reply(self, msg: Message) -> None:
        """Send the reply (once); later calls are ignored."""
        if self.answered:
            return
        self.answered = True
        self.actor._send_reply(self, msg)


class Actor:
    """Base class of controller, sandbox, gofer (and test actors)."""

    name = "actor"
    heartbeat_interval = 10.0
    #: how long the event publisher may keep trying to deliver after close
    #: (None: its LINGER); the controller sets 0 once its own stream has ended
    events_linger_ms: int | None = None
    #: CURVE secret key (z85) of the actor's sockets; required for tcp:// endpoints.
    curve_secret_key: bytes | None = None
    #: Request types still answered once the loop has ended (read-only ones:
    #: the controller's ``stream.history``, which a tap that found a
    #: short-lived sandbox asks for as its controller ends); every other
    #: request queued then is refused with ActorGone.
    answered_while_stopping: frozenset[str] = frozenset()
    _table: dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(getattr(cls, "_table", {}))
        for attr, fn in vars(cls).items():
            for t in getattr(fn, "_zentry_handles", ()):
                table[t.TAG] = attr
        cls._table = table

    def __init__(self, endpoints: Endpoints, *, sandbox_id: str, publish_events: bool = True) -> None:
        self.endpoints = endpoints
        self.sandbox_id = sandbox_id
        self.publish_events = publish_events
        self.pid = os.getpid()
        self.started_ns = time.monotonic_ns()
        self.handled = 0
        self.errors = 0
        self.bad_frames = 0
        self.ctx: zmq.Context | None = None
        self.events: Publisher | None = None
        self._stopping: str | None = None
        self._pending: set[Request] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._fd_watches: dict[int, Callable[[int], None]] = {}
        self._poller = zmq.Poller()

    # --- lifecycle hooks (override) ----------------------------------------
    def on_start(self) -> None:
        """Sockets are bound; set up before the first request is served."""

    def on_stop(self) -> None:
        """The loop has ended (normally); release what on_start made."""

    def on_failure(self, exc: BaseException) -> None:
        """The loop itself crashed (not a handler: those become error replies)."""

    def stopping_grace(self) -> float:
        """Seconds to keep answering ``answered_while_stopping`` requests that
        arrive after the loop (and on_stop) ended; 0: only those queued by then."""
        return 0.0

    # --- services for subclasses --------------------------------------------
    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def watch_fd(self, fd: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(fd)`` from the loop whenever ``fd`` is readable."""
        self._fd_watches[fd] = callback
        self._poller.register(fd, zmq.POLLIN)

    def unwatch_fd(self, fd: int) -> None:
        if self._fd_watches.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def stop_with(self, pid: int, name: str, on_gone: Callable[[], None] | None = None) -> None:
        """Stop when process ``pid`` (the peer ``name``) dies, after ``on_gone()``.

        Actors of one sandbox watch each other this way (a pidfd, so a reused
        pid is never mistaken for the peer); ``SystemFailure`` if it is gone
        already.
        """
        from zentry.bus.errors import SystemFailure
        from zentry.sentry.abi import libc

        try:
            fd = libc.pidfd_open(pid)
        except OSError:
            raise SystemFailure(f"the {name} (pid {pid}) is gone") from None

        def gone(_fd: int) -> None:
            self.unwatch_fd(fd)
            os.close(fd)
            if on_gone is not None:
                on_gone()
            self.stop(f"{name} gone")

        self.watch_fd(fd, gone)

    def publish(self, msg: Message, *, parent: str = "", container_id: str | None = None, time_ns: int | None = None) -> None:
        if self.events is not None:
            self.events.publish(msg, parent=parent, container_id=container_id, time_ns=time_ns)

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end after the current message."""
        if self._stopping is None:
            self._stopping = reason

    # --- the loop --------------------------------------------------------------
    def run(self) -> int:
        """Bind, serve until stopped, clean up. Returns an exit status."""
        self.ctx = zmq.Context()
        router = control = None
        try:
            router = self._bind(self.endpoints.actor(self.name))
            control = self._bind(self.endpoints.control(self.name))
            self._poller.register(control, zmq.POLLIN)
            self._poller.register(router, zmq.POLLIN)
            self.on_start()
            # After on_start: the controller binds the stream there, and a
            # publisher that connected before the bind would wait out zmq's
            # reconnect interval, losing a short container's first events.
            if self.publish_events:
                # No flusher thread for this one: the loop polls its socket,
                # and a zmq socket must not be used by two threads at once.
                # The loop sends the open batch before every wait instead (an
                # event waits at most for the handler that published it).
                self.events = Publisher(self.ctx, self.endpoints.events_in, sandbox_id=self.sandbox_id, actor=self.name,
                                        flush_interval=0)
            if self.events is not None and self.events.sock is not None:
                # readable when the stream subscribes: send what waited for it
                self._poller.register(self.events.sock, zmq.POLLIN)
            self.publish(ActorStarted(actor=self.name, pid=self.pid))
            if self.heartbeat_interval:
                self.call_later(self.heartbeat_interval, self._heartbeat)
            self._loop(router, control)
            # Said before on_stop: the controller's on_stop ends the event
            # stream this event must still cross.
            self.publish(ActorStopped(actor=self.name, pid=self.pid, reason=self._stopping or "stopped"))
            self._stopped_published = True
            if self.events is not None:
                # out now: the controller's stream ends in on_stop, and an event
                # still batched then would hold close() for its 200 ms wait
                self.events.flush()
            self.on_stop()
            return 0
        except BaseException as exc:
            log.exception("%s loop failed", self.name)
            self.on_failure(exc)
            return 1
        finally:
            reason = self._stopping or "failed"
            for req in list(self._pending):
                req.reply(Error(code=ActorGone.code, message=f"{self.name} is stopping ({reason}); request not answered"))
            if control is not None:
                self._refuse_queued(control, reason)
            if router is not None:
                self._answer_while_stopping(router, reason)
                self._refuse_queued(router, reason)
            if not getattr(self, "_stopped_published", False):
                self.publish(ActorStopped(actor=self.name, pid=self.pid, reason=reason))
            if self.events is not None:
                self.events.close(linger_ms=self.events_linger_ms)
            for sock in (router, control):
                if sock is not None:
                    sock.close(linger=100)
            # destroy, not term: a socket some step failed to close must not
            # keep this process alive forever (term waits for every socket).
            self.ctx.destroy(linger=100)

    def _bind(self, endpoint: str) -> zmq.Socket:
        check_endpoint(endpoint, self.curve_secret_key)  # tcp only with CURVE
        sock = self.ctx.socket(zmq.ROUTER)
        if self.curve_secret_key:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret_key
        sock.setsockopt(zmq.LINGER, 100)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if endpoint.startswith("ipc://"):
            try:
                os.unlink(endpoint[len("ipc://"):])
            except FileNotFoundError:
                pass
        bind_private(sock, endpoint)
        return sock

    def _loop(self, router: zmq.Socket, control: zmq.Socket) -> None:
        items = self._poller.sockets  # zmq_poll on the Poller's own list, without its wrapper
        timers = self._timers
        while self._stopping is None:
            events = self.events
            if events is not None and events.pending:
                events.send_pending()  # what the last handlers published goes out before we sleep
            timeout = -1
            if timers:
                timeout = max(0, int((timers[0][0] - time.monotonic()) * 1000) + 1)
            # One poll per main-socket message (it costs less than asking each
            # socket for ZMQ_EVENTS); registration order puts control first.
            for sock, _ev in zmq_poll(items, timeout):
                if sock is control:
                    # Control lane first, always: drained before every
                    # main-socket message, so a ping or shutdown that arrived
                    # while a slow handler ran is served before the main
                    # requests queued behind it.
                    while control.getsockopt(_EVENTS) & _POLLIN:
                        self._serve(control, _recv_request(control))
                elif sock is router:
                    # (a control request that came during this poll's other
                    # work waits at most this one message: the next poll has it first)
                    if self._stopping is None:
                        self._serve(router, _recv_request(router))
                elif events is not None and sock is events.sock:
                    events.flush()  # the stream's subscription: send what waited for it
                else:
                    callback = self._fd_watches.get(sock)
                    if callback is not None:
                        callback(sock)
            if timers and timers[0][0] <= time.monotonic():
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    _t, _n, fn = heapq.heappop(timers)
                    fn()

    def _answer_while_stopping(self, sock: zmq.Socket, reason: str) -> None:
        """Serve the ``answered_while_stopping`` requests queued on ``sock`` and
        those arriving within ``stopping_grace()``; refuse the others."""
        if not self.answered_while_stopping:
            return
        for _ in range(1024):  # bounded, whatever keeps arriving
            try:
                grace = self.stopping_grace()  # asked again after each request: it may be over
            except Exception:  # a broken grace must not keep queued callers waiting
                log.exception("%s: stopping_grace failed", self.name)
                grace = 0.0
            if not sock.poll(max(0, int(grace * 1000))):
                return
            frames = sock.recv_multipart()
            try:
                fields, _mid = envmod.decode_header(frames[-1])
            except ProtocolError:
                fields = None
            if len(frames) >= 2 and fields is not None and fields[1] in self.answered_while_stopping:
                self._serve(sock, frames)
            else:
                self._refuse(sock, frames, reason)

    def _refuse_queued(self, sock: zmq.Socket, reason: str) -> None:
        """Fail at once the requests already queued on ``sock`` that the loop
        will never read (the actor is stopping), instead of letting their
        callers wait out their deadlines."""
        for _ in range(1024):
            if not sock.poll(0):
                return
            self._refuse(sock, sock.recv_multipart(), reason)

    def _refuse(self, sock: zmq.Socket, frames: list[bytes], reason: str) -> None:
        """Answer one request the stopping actor will not serve with ActorGone."""
        if len(frames) < 2:
            return
        try:
            _fields, mid = envmod.decode_header(frames[-1])
        except ProtocolError:
            return
        bogus = Envelope(type="?", id=mid, parent="", sender="?", time_ns=0, body=Ok())
        Request(self, sock, frames[0], bogus).reply(
            Error(code=ActorGone.code, message=f"{self.name} is stopping ({reason}); request not answered")
        )

    def _serve(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.bad_frames += 1
            return
        identity, frame = frames[0], frames[-1]
        try:
            env = envmod.decode(frame)
        except (ProtocolError, UnknownMessage) as err:
            self.bad_frames += 1
            mid = err.details.get("id")
            if mid:
                bogus = Envelope(type="?", id=str(mid), parent="", sender="?", time_ns=0, body=Ok())
                req = Request(self, sock, identity, bogus)
                req.reply(Error(code=err.code, message=str(err)))
            return
        req = Request(self, sock, identity, env)
        if env.body.KIND != "request":
            req.reply(Error(code=ProtocolError.code, message=f"{env.type} is a {env.body.KIND}, not a request"))
            return
        attr = self._table.get(env.type)
        if attr is None:
            req.reply(Error(code=UnknownMessage.code, message=f"{self.name} does not handle {env.type}"))
            return
        self._pending.add(req)
        try:
            result = getattr(self, attr)(env.body, req)
        except Exception as exc:  # becomes the caller's error, never the actor's death
            if not isinstance(exc, ZentryError):
                log.exception("%s: handler for %s failed", self.name, env.type)
            code, message = to_wire(exc)
            result = Error(code=code, message=message)
        if result is not DEFERRED:
            req.reply(result if result is not None else Ok())

    def _send_reply(self, req: Request, msg: Message) -> None:
        self._pending.discard(req)
        self.handled += 1
        try:
            if not isinstance(msg, Message) or msg.KIND != "reply":
                raise TypeError(f"handler returned {msg!r}, not a reply message")
            frame = envmod.encode_message(msg, sender=self.name, parent=req.env.id)[1]
        except Exception as exc:  # a handler's bad reply is its caller's error, never the actor's death
            log.exception("%s: cannot send the reply to %s", self.name, req.env.type)
            msg = Error(code=Internal.code, message=f"{self.name}: bad reply to {req.env.type}: {exc}")
            frame = Envelope.wrap(msg, sender=self.name, parent=req.env.id).encode()
        is_error = isinstance(msg, Error)
        if is_error:
            self.errors += 1
        # Stamped before the reply leaves: an actor that waited for this reply
        # stamps its own request event later, so event times follow causality.
        duration_ns = time.perf_counter_ns() - req.started_ns
        sent_ns = time.time_ns()
        try:
            _send(req.sock, req.identity, _SNDMORE_NOBLOCK)
            _send(req.sock, frame, _NOBLOCK)
        except zmq.ZMQError:
            pass  # the caller went away (a ROUTER drops what it cannot route; this is belt and braces)
        if req.env.type != Ping.TAG and self.events is not None:
            self.events.publish(
                RequestHandled(
                    request=req.env.type,
                    sender=req.env.sender,
                    duration_ns=duration_ns,
                    error=msg.code if is_error else "",
                    message=msg.message if is_error else "",
                ),
                parent=req.env.id,
                container_id=getattr(req.env.body, "container_id", None),
                time_ns=sent_ns,
            )

    def _heartbeat(self) -> None:
        self.publish(
            Heartbeat(
                actor=self.name,
                pid=self.pid,
                uptime_ns=time.monotonic_ns() - self.started_ns,
                handled=self.handled,
                published=self.events.published if self.events else 0,
            )
        )
        self.call_later(self.heartbeat_interval, self._heartbeat)

    # --- the control lane's own requests ----------------------------------------
    @handles(Ping)
    def _ping(self, msg: Ping, req: Request) -> Message:
        return Pong(
            actor=self.name,
            pid=self.pid,
            uptime_ns=time.monotonic_ns() - self.started_ns,
            handled=self.handled,
            errors=self.errors,
            bad_frames=self.bad_frames,
        )

    @handles(Shutdown)
    def _shutdown(self, msg: Shutdown, req: Request) -> Message:
        self.stop(msg.reason or "shutdown requested")
        return Ok()


Actor._table = {t.TAG: attr for attr, fn in vars(Actor).items() for t in getattr(fn, "_zentry_handles", ())}
