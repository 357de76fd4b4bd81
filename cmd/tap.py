"""zentry tap: watch the event streams of sandboxes live (text or JSON lines), or relay them over CURVE.

    zentry tap [ID...]                     every sandbox under --root (or those named), new ones too
    zentry tap --format json --timeout 10  JSON lines: topic, seq, id, parent, sender, time_ns, type, body
    zentry tap --since 30s                 the controllers' recent rings first, then live
    zentry tap --serve tcp://0.0.0.0:7700 --server-secret-file S --authorized-keys K
    zentry tap --connect tcp://host:7700 --server-key PUB --client-key-file C

Lost events (seq gaps) are reported in the stream (``tap.dropped``) and
their total on stderr when the tap ends. The subscriber side is
``zentry.bus.tap``.
"""

from __future__ import annotations

import os
import signal
import sys
import time

HELP = "watch sandboxes' events live (all under --root, or the IDs given)"


def _csv(values: list[str] | None) -> set[str]:
    return {v for value in values or [] for v in value.split(",") if v}


def add_arguments(p) -> None:
    p.add_argument("ids", nargs="*", metavar="ID", help="sandbox or container ids to follow (default: all, including new ones)")
    p.add_argument("--actor", action="append", help="only events of these actors (controller, sandbox, sentry, gofer, forwarder); repeat or comma-separate")
    p.add_argument("--kind", action="append", help="only these event kinds (status, request, syscall, process_exit, ...)")
    p.add_argument("--syscall", action="append", help="only syscall events of these syscalls (openat, ...)")
    p.add_argument("--container", action="append", help="only events about these containers")
    p.add_argument("--topic", action="append", help="only topics starting with this prefix (<sandbox>.<container>.<actor>.<kind>)")
    p.add_argument("--format", default="text", choices=["text", "json"], help="output format (json: one object a line)")
    p.add_argument("--count", type=int, default=0, help="stop after N events")
    p.add_argument("--timeout", default=None, help="stop after this long (seconds, or 30s, 5m)")
    p.add_argument("--since", default=None, help="first print what the sandboxes published this long ago (30s, 5m)")
    p.add_argument("--connect", default=None, metavar="ENDPOINT", help="follow a remote stream (tcp://HOST:PORT, CURVE)")
    p.add_argument("--server-key", default=None, help="the remote stream's CURVE public key (z85, or a file holding it)")
    p.add_argument("--client-key-file", default=None, help="this client's CURVE secret key file")
    p.add_argument("--serve", default=None, metavar="ENDPOINT", help="relay the followed streams to this endpoint (tcp:// needs CURVE keys)")
    p.add_argument("--server-secret-file", default=None, help="the relay's CURVE secret key file")
    p.add_argument("--authorized-keys", default=None, help="client public keys allowed to follow the relay, one a line")


def build_filters(args, ids: set[str]):
    from zentry.bus.tap import Filters

    return Filters(
        actors=_csv(args.actor),
        kinds=_csv(args.kind),
        syscalls=_csv(args.syscall),
        containers=_csv(args.container),
        topics=list(args.topic or []),
        ids=ids,
    )


class _Stopper:
    """SIGTERM/SIGINT end the tap cleanly (with its summary), not with a traceback."""

    def __init__(self) -> None:
        self.stopped = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._stop)

    def _stop(self, signum, frame) -> None:
        self.stopped = True

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _poll_ms(deadline: float | None) -> int | None:
    """How long the next poll may wait (200 ms at most, so signals are seen); None once past ``deadline``."""
    if deadline is None:
        return 200
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    return min(200, int(left * 1000) + 1)


def run(args, ctx) -> int:
    from zentry.cmd import long_running

    long_running()
    from zentry.bus.errors import InvalidArgument
    from zentry.bus.tap import Tap, keypair_from_secret, parse_duration, read_key, resolve_ids

    timeout = parse_duration(args.timeout) if args.timeout else None
    since_ns = time.time_ns() - int(parse_duration(args.since) * 1e9) if args.since else None
    if args.count < 0:
        raise InvalidArgument("--count must be positive")
    if args.connect and args.serve:
        raise InvalidArgument("--connect and --serve cannot be combined")
    if args.connect:
        if args.ids:
            raise InvalidArgument("a remote tap follows what the relay serves; filter with --topic or --container")
        if args.since:
            raise InvalidArgument("--since needs the sandboxes' controllers: not available over --connect")
        server_key = read_key(args.server_key, secret=False) if args.server_key else None
        keypair = keypair_from_secret(read_key(args.client_key_file, secret=True)) if args.client_key_file else None
        filters = build_filters(args, set())
        tap = Tap(remote=args.connect, filters=filters, curve_server_key=server_key, curve_keypair=keypair)
    else:
        ids = resolve_ids(ctx.root, args.ids)
        tap = Tap(root=ctx.root, filters=build_filters(args, ids), since_ns=since_ns)
    stopper = _Stopper()
    try:
        if args.serve:
            return _serve(args, tap, timeout, stopper)
        return _print(args, tap, timeout, stopper)
    finally:
        stopper.restore()
        tap.close()


def _print(args, tap, timeout: float | None, stopper: _Stopper) -> int:
    from zentry.bus.tap import Gap, format_gap_text, format_json, format_text

    out = sys.stdout
    as_json = args.format == "json"
    colour = not as_json and out.isatty() and not os.environ.get("NO_COLOR")
    deadline = time.monotonic() + timeout if timeout is not None else None
    shown = 0
    try:
        while not stopper.stopped:
            wait = _poll_ms(deadline)
            if wait is None:
                break
            items = tap.poll(wait)
            done = False
            for item in items:
                if isinstance(item, Gap):
                    out.write((format_json(item) if as_json else format_gap_text(item, colour)) + "\n")
                    continue
                out.write((format_json(item) if as_json else format_text(item, colour)) + "\n")
                shown += 1
                if args.count and shown >= args.count:
                    done = True
                    break
            if items:
                out.flush()
            if done:
                break
    except BrokenPipeError:
        # the reader went away (| head): not an error; keep Python's exit flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    finally:
        _summary(tap, shown)
    return 0


def _summary(tap, shown: int, relayed: int | None = None, relay_dropped: int = 0) -> None:
    line = f"zentry tap: {shown} events shown, {tap.received} received, {tap.dropped} dropped"
    if relayed is not None:
        line = f"zentry tap: {relayed} events relayed, {tap.received} received, {tap.dropped} dropped, {relay_dropped} not relayed (slow clients)"
    if tap.bad_frames:
        line += f", {tap.bad_frames} undecodable"
    print(line, file=sys.stderr, flush=True)


class _AuthorizedKeys:
    """ZAP credentials provider: only the listed client public keys may subscribe."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def relay_batches(events: list) -> list[tuple[list[bytes], int]]:
    """Stream messages for a relay: runs of events with one topic and consecutive
    seqs become one batch (as the sandbox's own stream sends them), at most
    BATCH_MAX events or BATCH_BYTES of envelopes each. A seq that does not
    follow starts a new message, so the remote tap still sees every gap.
    Returns (frames, event count) pairs in order."""
    from zentry.bus.events import BATCH_BYTES, BATCH_MAX, event_frames

    out: list[tuple[list[bytes], int]] = []
    topic, first, datas, size = None, 0, [], 0

    def close() -> None:
        if datas:
            out.append((event_frames(topic.encode(), first, list(datas)), len(datas)))

    for ev in events:
        follows = ev.topic == topic and ev.seq == first + len(datas)
        if not follows or len(datas) >= BATCH_MAX or size + len(ev.data) > BATCH_BYTES:
            close()
            topic, first, datas, size = ev.topic, ev.seq, [], 0
        datas.append(ev.data)
        size += len(ev.data)
    close()
    return out


def _serve(args, tap, timeout: float | None, stopper: _Stopper) -> int:
    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    from zentry.bus.endpoints import bind_private, check_endpoint
    from zentry.bus.errors import InvalidArgument
    from zentry.bus.events import PUB_HWM
    from zentry.bus.tap import TapEvent, read_authorized_keys, read_key

    endpoint = args.serve
    secret = read_key(args.server_secret_file, secret=True) if args.server_secret_file else None
    check_endpoint(endpoint, secret)  # tcp:// only with CURVE; ipc:// without it only in a 0700 directory
    authorized = None
    if secret:
        if not args.authorized_keys:
            raise InvalidArgument(f"refusing to serve {endpoint} to any client: give --authorized-keys")
        authorized = read_authorized_keys(args.authorized_keys)
    auth = None
    xpub = tap.ctx.socket(zmq.XPUB)
    relayed = relay_dropped = 0
    try:
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.SNDHWM, PUB_HWM)
        if secret:
            auth = ThreadAuthenticator(tap.ctx)
            auth.start()
            auth.configure_curve_callback("*", _AuthorizedKeys(authorized))
            xpub.curve_server = True
            xpub.curve_secretkey = secret
            xpub.curve_publickey = zmq.curve_public(secret)
        bind_private(xpub, endpoint)  # ipc: 0600 in a directory check_endpoint found private
        public = zmq.curve_public(secret).decode() if secret else "-"
        print(f"zentry tap: serving {xpub.getsockopt_string(zmq.LAST_ENDPOINT)} server-key {public}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + timeout if timeout is not None else None
        while not stopper.stopped:
            wait = _poll_ms(deadline)
            if wait is None:
                break
            for frames, count in relay_batches([item for item in tap.poll(wait) if isinstance(item, TapEvent)]):
                try:
                    xpub.send_multipart(frames, flags=zmq.NOBLOCK)
                    relayed += count
                except zmq.Again:
                    relay_dropped += count  # never wait for a remote client
            while xpub.poll(0):
                xpub.recv()  # (un)subscriptions: XPUB filters per client itself
    finally:
        xpub.close(linger=0)
        if auth is not None:
            auth.stop()
        _summary(tap, 0, relayed, relay_dropped)
    return 0
