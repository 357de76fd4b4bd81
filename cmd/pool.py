"""zentry pool: warm sandbox pools (the node agent, and a client of many agents).

    zentry pool serve --config pools.toml          the node agent (one per host; its sandboxes under --root)
    zentry pool claim python                       prints HANDLE@ENDPOINT
    zentry pool exec HANDLE@ENDPOINT -- CMD ARG... runs CMD; its output and exit status are the command's
    zentry pool put|get HANDLE@ENDPOINT PATH       a file in from stdin / out to stdout
    zentry pool release HANDLE@ENDPOINT
    zentry pool status                             every node's pools

Client commands talk to ``--connect`` (comma-separated endpoints, a DNS name
resolving to many, or $ZENTRY_POOL), by default the agent under --root;
``tcp://`` needs ``--server-key`` and ``--client-key-file`` (CURVE). The
design is in docs/pools.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys

HELP = "warm sandbox pools: serve (node agent), claim, exec, put, get, release, status"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="pool_verb", metavar="SUBCOMMAND", required=True)
    serve = sub.add_parser("serve", help="run the node agent")
    serve.add_argument("--config", required=True, help="the agent's config file (JSON, or TOML when it ends in .toml)")
    for name, helptext in (("claim", "claim a warm sandbox of POOL; prints HANDLE@ENDPOINT"),
                           ("exec", "run a command in a claimed sandbox"),
                           ("put", "write a file in a claimed sandbox (content from stdin)"),
                           ("get", "print a file of a claimed sandbox"),
                           ("release", "release (destroy) a claimed sandbox"),
                           ("status", "the pools of every node")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--connect", default=os.environ.get("ZENTRY_POOL", ""),
                       help="node endpoints, comma-separated (ipc://PATH, tcp://HOST:PORT); default $ZENTRY_POOL, else the agent under --root")
        q.add_argument("--server-key", default=os.environ.get("ZENTRY_POOL_SERVER_KEY"), help="the agents' CURVE public key (z85, or a file)")
        q.add_argument("--client-key-file", default=os.environ.get("ZENTRY_POOL_CLIENT_KEY"), help="this client's CURVE secret key file")
        if name == "claim":
            q.add_argument("pool", metavar="POOL")
            q.add_argument("--ttl", default="0", help="destroy it this long after the claim (default: the pool's)")
            q.add_argument("--idle", default="0", help="destroy it after this long unused (default: the pool's)")
            q.add_argument("--owner", default="", help="a label for status and the tap")
        elif name == "status":
            q.add_argument("--format", default="text", choices=["text", "json"])
        else:
            q.add_argument("ref", metavar="HANDLE@ENDPOINT")
        if name == "exec":
            q.add_argument("--env", "-e", action="append", default=[], help="KEY=VALUE (repeat); default: the pool's env")
            q.add_argument("--cwd", default="")
            q.add_argument("--user", "-u", default="", help="uid[:gid]")
            q.add_argument("--timeout", default="0", help="kill the command after this long")
            q.add_argument("--stdin", "-i", action="store_true", help="pass this command's stdin (read whole) to the command")
            q.add_argument("command", nargs="+", help="command and arguments (after --)")
        if name in ("put", "get"):
            q.add_argument("path", metavar="PATH")
        if name == "put":
            q.add_argument("--mode", default="644", help="octal permission bits (default 644)")


def run(args, ctx) -> int:
    if args.pool_verb == "serve":
        return _serve(args, ctx)
    return _client_command(args, ctx)


def zentry_binary(configured: str = "") -> str:
    import shutil

    for candidate in (configured, os.environ.get("ZENTRY_BIN", ""), sys.argv[0] if os.path.basename(sys.argv[0]) == "zentry" else "",
                      shutil.which("zentry") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    from zentry.bus.errors import InvalidArgument

    raise InvalidArgument("cannot find the zentry command for the agent's sandboxes: set zentry in the config or $ZENTRY_BIN")


def local_endpoint(root: str) -> str:
    from zentry.actors.pool.agent import AGENT_DIR
    from zentry.bus.endpoints import Endpoints, bus_dir_for

    return Endpoints(bus_dir_for(os.path.join(os.path.abspath(root), AGENT_DIR))).actor("pool")


def _serve(args, ctx) -> int:
    from zentry.actors.pool import config as cfg
    from zentry.actors.pool.agent import PoolAgent

    config = cfg.load(args.config)
    agent = PoolAgent(config, ctx.root, zentry_binary(config.zentry))

    def stop(signum, _frame):
        agent.stop(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    endpoints = " ".join([local_endpoint(ctx.root), *config.listen])
    print(f"zentry pool: node {config.node} serving {endpoints} (pools: {', '.join(config.pools)})", file=sys.stderr, flush=True)
    status = agent.run()
    agent.remove_dir()
    return status


def _client(args, ctx):
    from zentry.actors.pool.client import Client
    from zentry.bus.tap import read_key

    server_key = read_key(args.server_key, secret=False) if args.server_key else None
    secret = read_key(args.client_key_file, secret=True) if args.client_key_file else None
    return Client(args.connect or local_endpoint(ctx.root), server_key=server_key, client_secret=secret)


def _client_command(args, ctx) -> int:
    from zentry.actors.pool.config import parse_duration

    with _client(args, ctx) as client:
        verb = args.pool_verb
        if verb == "claim":
            sb = client.claim(args.pool, ttl=parse_duration(args.ttl, "--ttl"), idle=parse_duration(args.idle, "--idle"), owner=args.owner)
            print(sb.ref)
            return 0
        if verb == "status":
            statuses = client.status()
            if args.format == "json":
                print(json.dumps({ep: st.to_wire() for ep, st in statuses.items()}, indent=2))
                return 0
            print(f"{'NODE':<16} {'ENDPOINT':<40} {'POOL':<14} {'WARM':>5} {'CLAIMED':>8} {'STARTING':>9} {'MAX':>5}")
            for ep, st in statuses.items():
                for p in st.pools:
                    print(f"{st.node:<16} {ep:<40} {p['name']:<14} {p['warm']:>5} {p['claimed']:>8} {p['starting']:>9} {p['max']:>5}")
            down = [n.endpoint for n in client.nodes.values() if n.endpoint not in statuses]
            for ep in down:
                print(f"{'?':<16} {ep:<40} unreachable", file=sys.stderr)
            return 0 if statuses else 1
        sb = client.attach(args.ref)
        if verb == "release":
            sb.release()
            return 0
        if verb == "put":
            sb.put(args.path, sys.stdin.buffer.read(), mode=int(args.mode, 8))
            return 0
        if verb == "get":
            sys.stdout.buffer.write(sb.get(args.path))
            sys.stdout.buffer.flush()
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        stdin = sys.stdin.buffer.read() if args.stdin else b""

        def out(fd: int, data: bytes) -> None:
            stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
            stream.write(data)
            stream.flush()

        result = sb.exec(command, env=args.env, cwd=args.cwd, user=args.user, stdin=stdin,
                         timeout=parse_duration(args.timeout, "--timeout"), on_output=out)
        if result.timed_out:
            print(f"zentry pool: {sb.handle}: killed after --timeout {args.timeout}", file=sys.stderr)
        return result.exit_status
