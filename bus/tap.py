"""The subscriber side of the tap: finding sandboxes, following their streams, filtering, drop counting, formatting.

A :class:`Tap` follows the event streams (``events.sock``, see
``bus/events.py``) of the sandboxes under one ``--root`` — all of them, or
those named by sandbox or container id — and rescans the root every
``rescan_interval`` seconds so that sandboxes created later are followed
too; the root and each directory in it are also watched with inotify, so
that a sandbox is found the moment its ``events.sock`` (or ``state.json``)
appears, not at the next rescan: a short-lived container can come and go
between two. A sandbox directory is followed as soon as its ``events.sock``
exists, before its ``state.json`` does (``create`` binds the stream first); what it
published before the tap connected is fetched from the controller's ring
with a ``stream.history`` request and merged in front of the live events
(duplicates removed by envelope id). The ring is asked for once the tap's
subscription is known to be in effect (its first live message, or
``SUBSCRIBE_WAIT`` of quiet), so that nothing falls between the ring's
snapshot and the live events. A controller that is stopping still
answers (``bus/events.py``: HISTORY_ASK_WAIT); one gone for good (its bus
directory removed, or its pid dead) is not waited for. A remote tap follows
one ``tcp://`` stream (``zentry tap --serve`` on another host) over CURVE instead.

Each stream message is a batch of one publisher's events under one topic
(``bus/events.py``); the tap unpacks it and handles every event on its own.
Every stream is subscribed to in full and filtered here, never by
subscription prefix: ``seq`` counts every event of a publisher, so a
prefix-filtered subscription would show its own filtering as losses. A
publisher is (sandbox, actor, sender pid) — the pid is the prefix of every
envelope id it makes — and a jump in its ``seq`` is reported as a
:class:`Gap`; a ``seq`` that goes back is a restarted publisher, not a loss.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import struct
import time
from typing import Any, Iterable, Iterator

import zmq
from zmq.utils import z85

from zentry.bus import envelope as envmod
from zentry.bus.endpoints import Endpoints, bus_dir_for
from zentry.bus.envelope import Envelope
from zentry.bus.access import check_private
from zentry.bus.errors import InvalidArgument, PermissionDenied, ProtocolError, UnknownMessage
from zentry.bus.events import HISTORY_ASK_WAIT, batch_count, event_frames, unpack_events
from zentry.bus.messages import History, HistoryReply, RequestHandled
from zentry.bus.proc import pid_alive
from zentry.bus.value import Value
from zentry.sentry.abi import libc

#: Seconds between two scans of the root for new or gone sandboxes.
RESCAN_INTERVAL = 0.2
#: Seconds a sandbox stays followed after it left the root (its last events).
GONE_GRACE = 1.0
#: Events a tap queues per stream before the stream drops for it.
TAP_RCVHWM = 100_000
#: How long a tap waits for a controller's ring before going on without it.
HISTORY_TIMEOUT = 10.0
#: A new stream's ring is fetched once its first live message shows that the
#: tap's subscription is in effect, or after this many seconds of quiet: an
#: event the stream forwarded between the ring's snapshot and the
#: subscription taking effect would otherwise be lost (a seq gap). A
#: stopping controller counts on it (``bus/events.py``).
SUBSCRIBE_WAIT = HISTORY_ASK_WAIT
#: A controller found gone while its ring is awaited: how long a reply it
#: sent just before may still take to arrive (milliseconds).
LAST_REPLY_WAIT_MS = 100
#: Live stream messages (batches) held per sandbox while its ring is on the way; beyond: their events counted lost.
HISTORY_BUFFER = 20_000
#: Sender name of the tap's own requests (their request events are not shown).
TAP_SENDER = "tap"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)?")
_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``30s``, ``500ms``, ``5m``, ``1h`` or plain seconds -> seconds."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise InvalidArgument(f"invalid duration {text!r} (e.g. 30s, 500ms, 5m, 1h)")
    return float(m.group(1)) * _SCALE[m.group(2)]


class _Record(Value):
    """The tap's records: mutable, so unhashable."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]


# --- discovery ----------------------------------------------------------------------


class SandboxInfo(_Record):
    """One sandbox as the root shows it."""

    __slots__ = ("sandbox_id", "bus_dir", "controller_pid", "containers")

    def __init__(self, sandbox_id: str, bus_dir: str, controller_pid: int = 0, containers: set[str] | None = None) -> None:
        self.sandbox_id = sandbox_id
        self.bus_dir = bus_dir
        self.controller_pid = controller_pid  # 0: not yet recorded (being created)
        self.containers = containers if containers is not None else set()

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self.bus_dir)


def discover(root: str) -> dict[str, SandboxInfo]:
    """Sandboxes under ``root``: from each ``<id>/state.json``, or, for a
    sandbox still being created (no state yet), from its ``events.sock``.

    A root others can write is refused (PermissionDenied, as every command
    refuses it); a container directory or state file others can write is
    skipped, and a stream is only ever looked for in the bus directory the
    root implies for a sandbox, never where a state file says.
    """
    out: dict[str, SandboxInfo] = {}
    root = os.path.abspath(root)
    try:
        check_private(root, "state root", directory=True, st=os.stat(root))
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        cdir = os.path.join(root, name)
        try:
            check_private(cdir, "container directory", directory=True)
            fd = os.open(os.path.join(cdir, "state.json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            bus = bus_dir_for(cdir)
            if name not in out and os.path.exists(os.path.join(bus, "events.sock")):
                out[name] = SandboxInfo(name, bus, 0, {name})
            continue
        except (OSError, PermissionDenied):
            continue  # not a directory, or not private
        try:
            with os.fdopen(fd, "rb") as f:
                check_private(os.path.join(cdir, "state.json"), "state file", directory=False, st=os.fstat(f.fileno()))
                data = json.loads(f.read())
        except (OSError, ValueError, RecursionError, PermissionDenied):
            continue  # being rewritten, or not ours
        if not isinstance(data, dict):
            continue
        sid = str(data.get("sandbox_id") or name)
        if "/" in sid or sid in (".", ".."):
            continue
        bus = bus_dir_for(os.path.join(root, sid))
        info = out.get(sid)
        if info is None or (info.controller_pid == 0 and sid == name):
            containers = info.containers if info is not None else set()
            info = out[sid] = SandboxInfo(sid, bus, int(data.get("controller_pid") or 0), containers)
        info.containers.add(name)
    return out


class RootWatch:
    """inotify on a root and on every directory in it: ``fd`` turns readable
    when a sandbox directory, its ``events.sock`` or its ``state.json``
    appears. Watches are added by :meth:`refresh`, at every rescan; a
    directory's watch goes when the directory does (``IN_IGNORED``), so a
    directory made again under the same name is watched again."""

    MASK = libc.IN_CREATE | libc.IN_MOVED_TO | libc.IN_ONLYDIR
    _EVENT = struct.Struct("iIII")  # struct inotify_event { int wd; u32 mask, cookie, len; char name[len]; }

    def __init__(self, root: str) -> None:
        self.root = root
        self.fd = libc.inotify_init1()
        self.watched: dict[str, int] = {}  # name ("" for the root) -> watch descriptor

    def refresh(self) -> None:
        """Watch the root (once it exists) and each directory in it, before the
        rescan looks into them: nothing that appears after is missed."""
        try:
            if "" not in self.watched:
                self.watched[""] = libc.inotify_add_watch(self.fd, self.root, self.MASK)
            names = os.listdir(self.root)
        except OSError:
            return  # no root yet: polled until it exists
        for name in names:
            if name not in self.watched:
                try:
                    self.watched[name] = libc.inotify_add_watch(self.fd, os.path.join(self.root, name), self.MASK)
                except OSError:
                    continue  # not a directory, gone, or not ours to watch

    def changed(self) -> bool:
        """Read what is pending (a rescan finds what it was about, an overflow
        included); True if anything appeared or went."""
        seen = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return seen
            if not data:
                return seen
            seen = True
            at = 0
            while at + self._EVENT.size <= len(data):
                wd, mask, _cookie, size = self._EVENT.unpack_from(data, at)
                at += self._EVENT.size + size
                if mask & libc.IN_IGNORED:
                    self.watched = {n: w for n, w in self.watched.items() if w != wd}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def resolve_ids(root: str, ids: Iterable[str]) -> set[str]:
    """Ids to follow: exact names kept as given (they may appear later),
    a unique prefix of an existing container expanded to it."""
    try:
        existing = os.listdir(root)
    except OSError:
        existing = []
    out = set()
    for wanted in ids:
        if wanted in existing:
            out.add(wanted)
            continue
        matches = [n for n in existing if n.startswith(wanted)]
        out.add(matches[0] if len(matches) == 1 else wanted)
    return out


# --- what a tap yields --------------------------------------------------------------


class TapEvent(_Record):
    """One event off a stream, decoded, with its envelope as it travelled."""

    __slots__ = ("topic", "seq", "env", "data", "history")

    def __init__(self, topic: str, seq: int, env: Envelope, data: bytes, history: bool = False) -> None:
        self.topic = topic
        self.seq = seq
        self.env = env
        self.data = data  # the encoded envelope
        self.history = history  # came from the controller's ring, not live

    @property
    def frames(self) -> list[bytes]:
        """This event alone as a stream message (a batch of one), e.g. to relay it."""
        return event_frames(self.topic.encode(), self.seq, [self.data])

    @property
    def parts(self) -> list[str]:
        parts = self.topic.split(".")
        # ids may contain dots: sandbox and container are what is left of the last two
        if len(parts) > 4:
            parts = [".".join(parts[:-3]), *parts[-3:]]
        return parts

    @property
    def sandbox(self) -> str:
        return self.parts[0]

    @property
    def container(self) -> str:
        # a container id with dots would make the topic ambiguous; the body knows
        cid = getattr(self.env.body, "container_id", None)
        if cid:
            return cid
        parts = self.parts
        return parts[1] if len(parts) == 4 else "-"

    @property
    def actor(self) -> str:
        return self.parts[-2] if len(self.parts) >= 2 else self.env.sender

    @property
    def kind(self) -> str:
        return self.parts[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "seq": self.seq,
            "id": self.env.id,
            "parent": self.env.parent,
            "sender": self.env.sender,
            "time_ns": self.env.time_ns,
            "type": self.env.type,
            "body": self.env.body.to_wire(),
        }


class Gap(_Record):
    """Events a publisher sent that this tap never got."""

    __slots__ = ("sandbox", "actor", "publisher", "count", "after_seq", "seq", "time_ns")

    def __init__(self, sandbox: str, actor: str, publisher: str, count: int, after_seq: int, seq: int, time_ns: int) -> None:
        self.sandbox = sandbox
        self.actor = actor
        self.publisher = publisher  # the sender pid (hex) of the publisher's envelope ids
        self.count = count
        self.after_seq = after_seq
        self.seq = seq
        self.time_ns = time_ns

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "tap.dropped",
            "sandbox": self.sandbox,
            "actor": self.actor,
            "publisher": self.publisher,
            "count": self.count,
            "after_seq": self.after_seq,
            "seq": self.seq,
            "time_ns": self.time_ns,
        }


class SeqTracker:
    """The last seq per publisher; turns jumps into :class:`Gap`s."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str, str], int] = {}
        self.dropped = 0

    def feed(self, ev: TapEvent) -> Gap | None:
        publisher = ev.env.id.split("-", 1)[0]
        key = (ev.sandbox, ev.actor, publisher)
        last = self.last.get(key)
        self.last[key] = ev.seq
        if last is None or ev.seq <= last:  # first sight, or a restarted publisher
            return None
        missing = ev.seq - last - 1
        if missing <= 0:
            return None
        self.dropped += missing
        return Gap(ev.sandbox, ev.actor, publisher, missing, last, ev.seq, ev.env.time_ns)


class Filters(_Record):
    """What the user asked to see (every list empty: everything)."""

    __slots__ = ("actors", "kinds", "syscalls", "containers", "topics", "ids")

    def __init__(self, actors: set[str] | None = None, kinds: set[str] | None = None, syscalls: set[str] | None = None,
                 containers: set[str] | None = None, topics: list[str] | None = None, ids: set[str] | None = None) -> None:
        self.actors = actors if actors is not None else set()
        self.kinds = kinds if kinds is not None else set()
        self.syscalls = syscalls if syscalls is not None else set()
        self.containers = containers if containers is not None else set()
        self.topics = topics if topics is not None else []
        self.ids = ids if ids is not None else set()  # sandbox or container ids to follow

    def match(self, ev: TapEvent) -> bool:
        if self.ids and ev.sandbox not in self.ids and ev.container not in self.ids:
            return False
        if self.actors and ev.actor not in self.actors:
            return False
        if self.kinds and ev.kind not in self.kinds:
            return False
        if self.containers and ev.container not in self.containers:
            return False
        if self.topics and not any(ev.topic.startswith(p) for p in self.topics):
            return False
        if self.syscalls and getattr(ev.env.body, "syscall", None) not in self.syscalls:
            return False
        return True

    def match_gap(self, gap: Gap) -> bool:
        if self.ids and gap.sandbox not in self.ids:
            return True  # a sandbox we follow for one of its containers
        return not self.actors or gap.actor in self.actors

    def follows(self, info: SandboxInfo) -> bool:
        return not self.ids or info.sandbox_id in self.ids or bool(info.containers & self.ids)


def _own_request(ev: TapEvent) -> bool:
    """The request events of the tap's own history requests: not the user's business."""
    body = ev.env.body
    return isinstance(body, RequestHandled) and body.sender == TAP_SENDER


# --- following streams --------------------------------------------------------------


class _Stream:
    """One followed stream: its SUB socket, and the history request in flight."""

    def __init__(self, tap: "Tap", key: str, endpoint: str, sub: zmq.Socket) -> None:
        self.tap = tap
        self.key = key
        self.endpoint = endpoint
        self.sub = sub
        self.info: SandboxInfo | None = None
        self.gone_at: float | None = None
        self.hist_sock: zmq.Socket | None = None
        self.hist_id = ""
        self.hist_deadline = 0.0
        self.hist_since: int | None = None  # ring wanted since then, not yet asked for
        self.hist_at = 0.0  # ask at the latest then (monotonic)
        self.buffer: list[list[bytes]] = []
        self.seen: set[str] = set()  # ids that came from the ring

    def ask_history(self, since_ns: int) -> None:
        info = self.info
        assert info is not None
        ctl = info.endpoints.actor("controller")
        if not os.path.exists(ctl[len("ipc://"):]):
            return
        sock = self.tap.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ctl)
        self.hist_id, frame = envmod.encode_message(History(since_ns=since_ns), sender=TAP_SENDER)
        sock.send(frame)
        self.hist_sock = sock
        self.hist_deadline = time.monotonic() + self.tap.history_timeout
        self.tap._poller.register(sock, zmq.POLLIN)

    def controller_gone(self) -> bool:
        """The controller asked for the ring will never answer: it removed its
        bus directory (its last act, after its socket closed), or died."""
        info = self.info
        if info is None:
            return True
        if not os.path.exists(info.endpoints.actor("controller")[len("ipc://"):]):
            return True
        return bool(info.controller_pid) and not pid_alive(info.controller_pid)

    @property
    def waiting(self) -> bool:
        """Live messages are buffered: the ring is wanted and has not been merged yet."""
        return self.hist_sock is not None or self.hist_since is not None

    def end_history(self, wait_ms: int = 0) -> list[list[bytes]]:
        """Stop waiting (after ``wait_ms`` for a reply on its way); the ring's frames, if a reply came."""
        frames: list[list[bytes]] = []
        sock = self.hist_sock
        if sock is None:
            return frames
        while sock.poll(wait_ms):
            wait_ms = 0
            try:
                env = envmod.decode(sock.recv())
            except (ProtocolError, UnknownMessage):
                continue
            if env.parent == self.hist_id and isinstance(env.body, HistoryReply):
                frames = env.body.events
                self.tap.history_truncated += env.body.truncated
                break
        self.tap._poller.unregister(sock)
        sock.close(linger=0)
        self.hist_sock = None
        return frames

    def close(self) -> None:
        if self.hist_sock is not None:
            self.tap._poller.unregister(self.hist_sock)
            self.hist_sock.close(linger=0)
            self.hist_sock = None
        self.tap._poller.unregister(self.sub)
        self.sub.close(linger=0)


class Tap:
    """Follow the event streams of a root's sandboxes (or one remote stream).

    ``poll(timeout_ms)`` returns the next :class:`TapEvent`\\ s that pass
    ``filters`` and the :class:`Gap`\\ s found, in arrival order per stream.
    """

    def __init__(
        self,
        *,
        root: str | None = None,
        filters: Filters | None = None,
        since_ns: int | None = None,
        remote: str | None = None,
        curve_server_key: bytes | None = None,
        curve_keypair: tuple[bytes, bytes] | None = None,
        ctx: zmq.Context | None = None,
        rescan_interval: float = RESCAN_INTERVAL,
        history_timeout: float = HISTORY_TIMEOUT,
        backfill: bool = True,
    ) -> None:
        if (root is None) == (remote is None):
            raise InvalidArgument("a tap follows either a root or one remote stream")
        self.root = root
        self.filters = filters or Filters()
        self.since_ns = since_ns
        self.started_ns = time.time_ns()
        self.backfill = backfill
        self.rescan_interval = rescan_interval
        self.history_timeout = history_timeout
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self._poller = zmq.Poller()
        self.streams: dict[str, _Stream] = {}
        self._by_sock: dict[zmq.Socket, _Stream] = {}
        self.seq = SeqTracker()
        self.received = 0
        self.bad_frames = 0
        self.history_truncated = 0
        self.buffer_overflow = 0
        self._next_scan = 0.0
        self._first_scan = True
        self._watch: RootWatch | None = None
        if remote is not None:
            if not remote.startswith("tcp://") and not remote.startswith("ipc://"):
                raise InvalidArgument(f"unsupported tap endpoint {remote!r} (tcp:// with CURVE, or ipc://)")
            if remote.startswith("tcp://") and not curve_server_key:
                raise InvalidArgument(f"refusing to connect to {remote} without CURVE keys (--server-key)")
            self._open(remote, remote, curve_server_key, curve_keypair)
            return
        try:
            self._watch = RootWatch(root)
        except OSError:
            pass  # no inotify instance left for this user: rescans only
        else:
            self._poller.register(self._watch.fd, zmq.POLLIN)
        try:
            self.rescan()
        except BaseException:
            self.close()  # e.g. a root others can write: refused, nothing left open
            raise

    # --- streams ----------------------------------------------------------------------
    def _open(self, key: str, endpoint: str, server_key: bytes | None = None, keypair: tuple[bytes, bytes] | None = None) -> _Stream:
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, TAP_RCVHWM)
        # found the moment events.sock appears (inotify), between the stream's
        # bind and its listen: refused, retry soon, not after zmq's 100 ms
        sub.setsockopt(zmq.RECONNECT_IVL, 5)
        if server_key:
            public, secret = keypair or zmq.curve_keypair()
            sub.curve_serverkey = server_key
            sub.curve_publickey = public
            sub.curve_secretkey = secret
        sub.setsockopt(zmq.SUBSCRIBE, b"")  # everything: see the module docstring
        sub.connect(endpoint)
        stream = _Stream(self, key, endpoint, sub)
        self.streams[key] = stream
        self._by_sock[sub] = stream
        self._poller.register(sub, zmq.POLLIN)
        return stream

    def _close(self, stream: _Stream) -> None:
        for sock in (stream.sub, stream.hist_sock):
            self._by_sock.pop(sock, None)
        stream.close()
        self.streams.pop(stream.key, None)

    def rescan(self) -> None:
        """Follow new sandboxes of the root; let go of those gone for a while."""
        if self.root is None:
            return
        now = time.monotonic()
        self._next_scan = now + self.rescan_interval
        if self._watch is not None:
            self._watch.refresh()
        found = discover(self.root)
        for sid, info in found.items():
            if not self.filters.follows(info):
                continue
            stream = self.streams.get(sid)
            if stream is not None and stream.info is not None and stream.info.bus_dir != info.bus_dir:
                self._close(stream)  # re-created elsewhere
                stream = None
            if stream is None:
                stream = self._open(sid, info.endpoints.events)
                stream.info = info
                since = self._history_since()
                if since is not None and (info.controller_pid == 0 or pid_alive(info.controller_pid)):
                    stream.hist_since = since  # asked for in poll (SUBSCRIBE_WAIT)
                    stream.hist_at = now + SUBSCRIBE_WAIT
            else:
                stream.info = info
                stream.gone_at = None
        for sid, stream in list(self.streams.items()):
            if sid in found:
                continue
            if stream.gone_at is None:
                stream.gone_at = now
            elif now - stream.gone_at > GONE_GRACE and not stream.waiting:
                self._close(stream)
        self._first_scan = False

    def _history_since(self) -> int | None:
        """Since when to fetch a new stream's ring, or None for live only."""
        if self._first_scan:
            return self.since_ns
        if not self.backfill:
            return self.since_ns
        # found after the tap started: what it published before we connected
        return min(self.started_ns, self.since_ns) if self.since_ns is not None else self.started_ns

    # --- events -------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 100) -> list[TapEvent | Gap]:
        """Wait up to ``timeout_ms`` for events; returns what passed the filters and the gaps."""
        out: list[TapEvent | Gap] = []
        now = time.monotonic()
        if self.root is not None:
            timeout_ms = max(0, min(timeout_ms, int((self._next_scan - now) * 1000) + 1))
        for stream in list(self.streams.values()):
            if stream.hist_since is not None:
                if now >= stream.hist_at:
                    self._ask_history(stream, out)
                else:
                    timeout_ms = max(0, min(timeout_ms, int((stream.hist_at - now) * 1000) + 1))
            elif stream.hist_sock is not None and (now > stream.hist_deadline or stream.controller_gone()):
                self._finish_history(stream, out, wait_ms=LAST_REPLY_WAIT_MS)
        if self._poller.sockets:
            ready = dict(self._poller.poll(timeout_ms))
        else:
            # nothing followed yet (an empty or missing root): pyzmq returns at
            # once from a poll of no sockets, which made the tap spin a core
            time.sleep(timeout_ms / 1000)
            ready = {}
        rescan = False
        for sock in ready:
            if self._watch is not None and sock == self._watch.fd:
                rescan = self._watch.changed() or rescan
                continue
            stream = self._by_sock.get(sock)
            if stream is None:
                continue
            if sock is stream.hist_sock:
                self._finish_history(stream, out)
                continue
            for _ in range(4096):  # then give the other streams their turn
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if stream.waiting:
                    if len(stream.buffer) < HISTORY_BUFFER:
                        stream.buffer.append(frames)
                    else:  # lost: counted in events, as seq gaps are
                        self.buffer_overflow += max(1, batch_count(frames[2])) if len(frames) == 3 else 1
                    continue
                self._take(stream, frames, out, history=False)
            if stream.hist_since is not None and stream.buffer:
                self._ask_history(stream, out)  # live messages flow: the subscription is in effect
        if self.root is not None and (rescan or time.monotonic() >= self._next_scan):
            self.rescan()
        return out

    def _ask_history(self, stream: _Stream, out: list) -> None:
        since, stream.hist_since = stream.hist_since, None
        if since is not None:
            stream.ask_history(since)
        if stream.hist_sock is not None:
            self._by_sock[stream.hist_sock] = stream
        else:  # no controller to ask: what was buffered goes out now
            self._finish_history(stream, out)

    def _finish_history(self, stream: _Stream, out: list, wait_ms: int = 0) -> None:
        self._by_sock.pop(stream.hist_sock, None)
        ring = stream.end_history(wait_ms)
        for frames in ring:
            self._take(stream, frames, out, history=True)
        buffered, stream.buffer = stream.buffer, []
        for frames in buffered:
            self._take(stream, frames, out, history=False)

    def _take(self, stream: _Stream, frames: list[bytes], out: list, *, history: bool) -> None:
        """One stream message (a batch of events) in: decoded, de-duplicated, gaps counted, filtered."""
        try:
            events = unpack_events(frames)
        except ProtocolError:
            self.bad_frames += 1
            return
        for topic, seq, data in events:
            try:
                env = envmod.decode(data)
            except (ProtocolError, UnknownMessage):
                self.bad_frames += 1
                continue
            if history:
                stream.seen.add(env.id)
            elif env.id in stream.seen:
                continue  # already shown from the ring
            ev = TapEvent(topic, seq, env, data, history)
            self.received += 1
            gap = self.seq.feed(ev)
            if gap is not None and self.filters.match_gap(gap):
                out.append(gap)
            if _own_request(ev):
                continue
            if self.filters.match(ev):
                out.append(ev)

    @property
    def dropped(self) -> int:
        return self.seq.dropped + self.buffer_overflow

    def drain(self, duration: float) -> Iterator[TapEvent | Gap]:
        """Everything for ``duration`` seconds (tests, benches)."""
        deadline = time.monotonic() + duration
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            yield from self.poll(int(left * 1000) + 1)

    def close(self) -> None:
        for stream in list(self.streams.values()):
            self._close(stream)
        if self._watch is not None:
            self._poller.unregister(self._watch.fd)
            self._watch.close()
            self._watch = None
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- CURVE keys -------------------------------------------------------------------------

_CERT_KEY = re.compile(r'^\s*(public|secret)-key\s*=\s*"([^"]{40})"', re.M)


def read_key(path_or_key: str, *, secret: bool) -> bytes:
    """A z85 CURVE key from a file (a bare 40-character key, or a ZeroMQ
    certificate's ``public-key``/``secret-key`` line) or, for a public key,
    given inline."""
    want = "secret" if secret else "public"
    if not secret and len(path_or_key.strip()) == 40 and not os.path.exists(path_or_key):
        text = path_or_key
    else:
        try:
            with open(path_or_key) as f:
                text = f.read()
        except OSError as err:
            raise InvalidArgument(f"cannot read the CURVE {want} key {path_or_key!r}: {err.strerror}") from err
    keys = {kind: value for kind, value in _CERT_KEY.findall(text)}
    key = keys.get(want) or (text.strip() if not keys else "")
    if len(key) != 40:
        raise InvalidArgument(f"{path_or_key!r} does not hold a z85 CURVE {want} key (40 characters)")
    try:
        z85.decode(key.encode())
    except (ValueError, KeyError) as err:
        raise InvalidArgument(f"{path_or_key!r}: not a z85 key: {err}") from err
    return key.encode()


def keypair_from_secret(secret: bytes) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a z85 secret key."""
    return zmq.curve_public(secret), secret


def read_authorized_keys(path: str) -> set[bytes]:
    """Client public keys allowed to follow a served stream: one z85 key a line, ``#`` comment lines."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise InvalidArgument(f"cannot read authorized keys {path!r}: {err.strerror}") from err
    keys = set()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):  # z85 keys may contain '#': whole-line comments only
            continue
        if len(line) != 40:
            raise InvalidArgument(f"{path}: {line!r} is not a z85 CURVE public key")
        keys.add(line.encode())
    if not keys:
        raise InvalidArgument(f"{path}: no authorized client keys")
    return keys


# --- formatting ---------------------------------------------------------------------

_COLOURS = {
    "status": "\x1b[1;32m",
    "request": "\x1b[36m",
    "syscall": "\x1b[33m",
    "process_start": "\x1b[1;34m",
    "process_exit": "\x1b[1;34m",
    "signal": "\x1b[35m",
    "hook": "\x1b[35m",
    "dropped": "\x1b[1;31m",
    "actor_started": "\x1b[2m",
    "actor_stopped": "\x1b[2m",
    "heartbeat": "\x1b[2m",
}
_RESET = "\x1b[0m"
_ERR = "\x1b[31m"


def _clock(time_ns: int) -> str:
    t = datetime.datetime.fromtimestamp(time_ns / 1e9)
    return t.strftime("%H:%M:%S.") + f"{time_ns // 1000 % 1_000_000:06d}"


def _dur(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:.2f}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e3:.0f}us"


def _arg(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return repr(value)
    return str(value)


def describe(ev: TapEvent) -> str:
    """The key fields of one event, strace-like for syscalls."""
    b = ev.env.body
    kind = ev.kind
    if kind == "syscall":
        res = "? (continued)" if getattr(b, "continued", False) else f"-1 {b.errno}" if b.errno else str(b.result)
        return f"[{b.pid}] {b.syscall}({', '.join(_arg(a) for a in b.args)}) = {res} <{_dur(b.duration_ns)}>"
    if kind == "request":
        text = f"{b.request} from {b.sender} in {_dur(b.duration_ns)}"
        return text + (f" error={b.error}: {b.message}" if b.error else "")
    if kind == "status":
        return f"{b.old} -> {b.new}"
    if kind == "process_start":
        return f"pid={b.pid}{' exec' if b.exec else ''} {' '.join(b.args)}"
    if kind == "process_exit":
        return f"pid={b.pid} status={b.exit_status}"
    if kind == "signal":
        return f"signal={b.signal} pids={','.join(map(str, b.pids))}"
    if kind == "hook":
        return f"{b.hook} {b.path} exit={b.exit_code} in {_dur(b.duration_ns)}" + (f" error={b.error}" if b.error else "")
    if kind == "mount":
        return f"rootfs={b.rootfs} mounts={b.mounts} in {_dur(b.duration_ns)}"
    if kind == "file":
        return f"{b.op} {b.path}" + (f" error={b.error}" if b.error else "")
    if kind == "heartbeat":
        return f"pid={b.pid} up={_dur(b.uptime_ns)} handled={b.handled} published={b.published}"
    if kind in ("actor_started", "actor_stopped"):
        return f"pid={b.pid}" + (f" reason={b.reason!r}" if getattr(b, "reason", "") else "")
    if kind == "dropped":
        return f"count={b.count}"
    return " ".join(f"{k}={_arg(v)}" for k, v in b.to_wire().items() if k != "container_id")


def format_text(ev: TapEvent, colour: bool = False) -> str:
    """``time sandbox/container actor kind fields id=… parent=…``; ring events marked ``(ring)``."""
    where = ev.sandbox if ev.container == "-" else f"{ev.sandbox}/{ev.container}"
    text = describe(ev)
    causality = f"id={ev.env.id}" + (f" parent={ev.env.parent}" if ev.env.parent else "")
    ring = " (ring)" if ev.history else ""
    kind = ev.kind
    if colour:
        c = _COLOURS.get(kind, "")
        if getattr(ev.env.body, "error", "") or getattr(ev.env.body, "errno", ""):
            c = _ERR
        return f"\x1b[2m{_clock(ev.env.time_ns)}\x1b[0m {where} {ev.actor} {c}{kind}{_RESET} {text} \x1b[2m{causality}{ring}{_RESET}"
    return f"{_clock(ev.env.time_ns)} {where} {ev.actor} {kind} {text} {causality}{ring}"


def format_gap_text(gap: Gap, colour: bool = False) -> str:
    line = f"{_clock(gap.time_ns)} {gap.sandbox} {gap.actor} tap.dropped {gap.count} events lost (publisher {gap.publisher}, seq {gap.after_seq + 1}..{gap.seq - 1})"
    return f"\x1b[1;31m{line}{_RESET}" if colour else line


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def format_json(item: TapEvent | Gap) -> str:
    return json.dumps(item.to_json(), separators=(",", ":"), default=_json_default, ensure_ascii=False)
