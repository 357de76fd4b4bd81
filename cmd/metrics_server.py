"""zentry metrics-server: Prometheus metrics for every sandbox under --root, over HTTP.

    zentry metrics-server --listen 127.0.0.1:9090 [--timeout 1h]

Series are described in ``zentry.actors.metrics``. The listener serves
read-only metrics; bind it to loopback (the default) or a trusted network.
"""

from __future__ import annotations

import signal
import sys
import threading

HELP = "serve Prometheus metrics for every sandbox under --root"


def add_arguments(p) -> None:
    p.add_argument("--listen", default="127.0.0.1:9090", metavar="ADDR", help="HOST:PORT to serve /metrics on (default 127.0.0.1:9090; port 0 picks one)")
    p.add_argument("--timeout", default=None, help="stop after this long (seconds, or 30s, 5m)")


def parse_listen(text: str) -> tuple[str, int]:
    from zentry.bus.errors import InvalidArgument

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"invalid --listen {text!r} (HOST:PORT)")
    return host.strip("[]") or "0.0.0.0", int(port)


def run(args, ctx) -> int:
    from zentry.cmd import long_running

    long_running()
    from prometheus_client import start_http_server

    from zentry.actors.metrics import MetricsFeeder, make_registry
    from zentry.bus.tap import parse_duration

    host, port = parse_listen(args.listen)
    timeout = parse_duration(args.timeout) if args.timeout else None
    registry, metrics = make_registry(ctx.root)
    feeder = MetricsFeeder(ctx.root, metrics)
    feeder.start()
    feeder.wait_ready()
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    print(f"zentry metrics-server: serving http://{host}:{bound}/metrics", file=sys.stderr, flush=True)
    done = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        done.wait(timeout)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        feeder.stop()
        feeder.join(5)
    return 0
