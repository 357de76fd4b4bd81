"""zentry metrics-server: Prometheus metrics for every sandbox under --root, over HTTP.

    zentry metrics-server [--listen unix:PATH | --listen HOST:PORT] [--timeout 1h]

Series are described in ``zentry.actors.metrics``. They name containers and
show their CPU, memory and process counts, so who may read them is an
explicit choice:

- by default the server listens on a unix socket of mode 0600 in a 0700
  directory (``/run/zentry-metrics/<hash of the root>.sock``): only root
  (the socket's owner) can connect; a Prometheus scraping through a local
  proxy, or ``curl --unix-socket``, reads it;
- ``--listen HOST:PORT`` serves TCP: anyone who can reach that address,
  every local user included for 127.0.0.1, reads the metrics. Choose it
  only where that is intended.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

HELP = "serve Prometheus metrics for every sandbox under --root"

#: where the default sockets live (one per --root, named by a hash of it)
SOCKET_DIR = "/run/zentry-metrics"


def add_arguments(p) -> None:
    p.add_argument("--listen", default=None, metavar="ADDR",
                   help=f"unix:PATH (owner-only socket; default {SOCKET_DIR}/<root hash>.sock) or HOST:PORT "
                        "(TCP: readable by anyone who can connect; port 0 picks one)")
    p.add_argument("--timeout", default=None, help="stop after this long (seconds, or 30s, 5m)")


def default_socket(root: str) -> str:
    import hashlib

    return os.path.join(SOCKET_DIR, hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:20] + ".sock")


def parse_listen(text: str) -> tuple[str, int]:
    from zentry.bus.errors import InvalidArgument

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"invalid --listen {text!r} (unix:PATH or HOST:PORT)")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_unix(path: str, registry):
    """An HTTP server for ``registry`` on a unix socket of mode 0600 (in a directory checked private)."""
    import socketserver

    from prometheus_client.exposition import MetricsHandler

    from zentry.bus.errors import InvalidArgument

    class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True
        # BaseHTTPRequestHandler wants a (host, port) for the peer; a unix peer has none
        def get_request(self):
            conn, _ = self.socket.accept()
            return conn, ("local", 0)

        server_name = "localhost"
        server_port = 0

    try:
        os.unlink(path)  # a socket left by a killed server (the directory is ours alone)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)
    try:
        server = UnixHTTPServer(path, MetricsHandler.factory(registry))
    except OSError as err:
        raise InvalidArgument(f"cannot listen on unix:{path}: {err.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    thread = threading.Thread(target=server.serve_forever, name="zentry-metrics-http", daemon=True)
    thread.start()
    return server


def run(args, ctx) -> int:
    from zentry.cmd import long_running

    long_running()
    from zentry.actors.metrics import MetricsFeeder, make_registry
    from zentry.bus.tap import parse_duration

    listen = args.listen or f"unix:{default_socket(ctx.root)}"
    timeout = parse_duration(args.timeout) if args.timeout else None
    if not listen.startswith("unix:"):
        parse_listen(listen)  # refuse a bad address before starting anything
    ctx.store().check_root()  # a root others can write is refused here too
    registry, metrics = make_registry(ctx.root)
    feeder = MetricsFeeder(ctx.root, metrics)
    feeder.start()
    feeder.wait_ready()
    if listen.startswith("unix:"):
        from zentry.bus.endpoints import check_private_socket_dir, make_private_dir

        path = os.path.abspath(listen[len("unix:"):])
        if args.listen is None:
            make_private_dir(SOCKET_DIR)
        check_private_socket_dir(path, f"serve metrics on unix:{path}")  # a directory only we can enter (never chmod'ed for the user)
        server = serve_unix(path, registry)
        where = f"unix:{path} (mode 0600)"
    else:
        from prometheus_client import start_http_server

        host, port = parse_listen(listen)
        server, _thread = start_http_server(port, addr=host, registry=registry)
        where = f"http://{host}:{server.server_address[1]}/metrics (TCP: readable by anyone who can connect)"
    print(f"zentry metrics-server: serving {where}", file=sys.stderr, flush=True)
    done = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        done.wait(timeout)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        server.shutdown()
        server.server_close()
        if listen.startswith("unix:"):
            try:
                os.unlink(os.path.abspath(listen[len("unix:"):]))
            except FileNotFoundError:
                pass
        feeder.stop()
        feeder.join(5)
    return 0
