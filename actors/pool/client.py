"""The pool client: claims sandboxes from many node agents, drives them, fails over.

    from zentry.actors.pool.client import Client

    with Client(["tcp://10.0.0.2:7711", "tcp://10.0.0.3:7711"], server_key=K, client_secret=S) as pools:
        with pools.claim("python") as sb:
            result = sb.exec(["python3", "-c", "print(6 * 7)"])
            print(result.exit_status, result.stdout)
            sb.put("/tmp/in.txt", b"data")
            data = sb.get("/tmp/in.txt")

Endpoints are ``ipc://`` paths of local agents (``zentry pool serve --root R``
listens on ``R/pool-agent/pool.sock``) or ``tcp://HOST:PORT`` (CURVE: the
agents' public key and this client's secret key). A ``tcp://`` host that
resolves to several addresses (a Kubernetes headless Service) stands for one
agent each, re-resolved every ``RESOLVE_EVERY`` seconds.

No cluster state of zentry's own: a claim asks every reachable node's
``pool.status`` (at most every ``STATUS_TTL`` seconds, counting its own
claims in between), and goes to the least loaded node that has the pool,
preferring nodes with a warm sandbox. A node that does not answer within
``NODE_TIMEOUT`` is skipped for ``DOWN_FOR`` seconds; its handles then fail
with :class:`NodeUnreachable`, naming the node and the handle.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlsplit

import zmq

from zentry.bus import envelope as envmod
from zentry.bus.codec import MAX_BIN
from zentry.bus.errors import InvalidArgument, LimitReached, NodeUnreachable, NotFound, ProtocolError, ZentryError, from_wire
from zentry.bus.message import Message
from zentry.bus.messages import (
    Error,
    PoolClaim,
    PoolClaimed,
    PoolExec,
    PoolExited,
    PoolFile,
    PoolGet,
    PoolOutput,
    PoolPut,
    PoolRelease,
    PoolStatus,
    PoolStatusReply,
)

NODE_TIMEOUT = 2.0
DOWN_FOR = 5.0
STATUS_TTL = 0.5
RESOLVE_EVERY = 30.0
#: while waiting for a long command, a node is asked pool.status this often to notice it died
PROBE_EVERY = 1.0


@dataclass
class ExecResult:
    exit_status: int
    stdout: bytes
    stderr: bytes
    duration_ns: int = 0
    timed_out: bool = False


class _Node:
    """One node agent's socket."""

    def __init__(self, ctx: zmq.Context, endpoint: str, server_key: bytes | None, keypair: tuple[bytes, bytes] | None) -> None:
        self.endpoint = endpoint
        self.name = endpoint
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if endpoint.startswith("tcp://["):
            self.sock.ipv6 = True
        if endpoint.startswith("tcp://"):
            if not server_key:
                raise InvalidArgument(f"refusing to connect to {endpoint} without CURVE keys (the agents' public key)")
            public, secret = keypair or zmq.curve_keypair()
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey = public
            self.sock.curve_secretkey = secret
        elif not endpoint.startswith("ipc://"):
            raise InvalidArgument(f"unsupported pool endpoint {endpoint!r} (ipc:// or tcp://)")
        self.sock.connect(endpoint)
        self.down_until = 0.0
        self.status: PoolStatusReply | None = None
        self.status_at = 0.0
        self.extra_claims = 0

    def send(self, msg: Message) -> str:
        mid, frame = envmod.encode_message(msg, sender="pool-client")
        self.sock.send(frame)
        return mid

    def recv_for(self, mid: str, deadline: float) -> Message | None:
        """The next message answering ``mid`` before ``deadline``, else None (errors raised)."""
        env = self.recv_any((mid,), deadline)
        return None if env is None else _body(env)

    def recv_any(self, mids, deadline: float):
        """The next envelope answering one of ``mids`` before ``deadline``, else None."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                if deadline - time.monotonic() <= 0:
                    return None
                continue
            try:
                env = envmod.decode(self.sock.recv())
            except ProtocolError:
                continue
            if env.parent in mids:
                return env
            # else a late answer to an abandoned request

    def request(self, msg: Message, timeout: float) -> Message:
        mid = self.send(msg)
        reply = self.recv_for(mid, time.monotonic() + timeout)
        if reply is None:
            self.down_until = time.monotonic() + DOWN_FOR
            raise NodeUnreachable(f"pool node {self.name} ({self.endpoint}) did not answer {msg.TAG} within {timeout:g}s")
        return reply

    def close(self) -> None:
        self.sock.close(linger=0)


def _body(env) -> Message:
    if isinstance(env.body, Error):
        raise from_wire(env.body.code, env.body.message, env.body.details)
    return env.body


class Sandbox:
    """A claimed sandbox: exec, put, get, release (also on leaving a ``with`` block)."""

    def __init__(self, client: "Client", node: _Node, claimed: PoolClaimed) -> None:
        self.client = client
        self.node = node
        self.handle = claimed.handle
        self.pool = claimed.pool
        self.node_name = claimed.node
        self.expires_ns = claimed.expires_ns
        self.released = False

    @property
    def ref(self) -> str:
        """``handle@endpoint``: what ``zentry pool exec`` takes."""
        return f"{self.handle}@{self.node.endpoint}"

    def _call(self, msg: Message, timeout: float | None, on_output: Callable[[int, bytes], None] | None = None) -> Message:
        node = self.node
        if node.down_until > time.monotonic():
            raise NodeUnreachable(f"sandbox {self.handle}: its node {node.name} ({node.endpoint}) is unreachable")
        mid = node.send(msg)
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            step = time.monotonic() + PROBE_EVERY
            if deadline is not None:
                step = min(step, deadline)
            reply = node.recv_for(mid, step)
            if isinstance(reply, PoolOutput):
                if on_output is not None:
                    on_output(reply.fd, reply.data)
                continue
            if reply is not None:
                return reply
            if deadline is not None and time.monotonic() >= deadline:
                raise NodeUnreachable(f"sandbox {self.handle}: no answer to {msg.TAG} from {node.name} ({node.endpoint}) within {timeout:g}s")
            # still working, or gone? (a reply to the probe says alive; the request's own may come first)
            probe = node.send(PoolStatus())
            probe_deadline = time.monotonic() + NODE_TIMEOUT
            while True:
                env = node.recv_any((mid, probe), probe_deadline)
                if env is None:
                    node.down_until = time.monotonic() + DOWN_FOR
                    raise NodeUnreachable(f"sandbox {self.handle}: its node {node.name} ({node.endpoint}) stopped answering; the sandbox is lost")
                if env.parent == probe:
                    break
                reply = _body(env)
                if not isinstance(reply, PoolOutput):
                    return reply
                if on_output is not None:
                    on_output(reply.fd, reply.data)

    @staticmethod
    def _check_size(what: str, data: bytes) -> None:
        if len(data) > MAX_BIN:
            raise LimitReached(f"{what} of {len(data)} bytes: a pool message carries at most {MAX_BIN} bytes (MAX_BIN)")

    def exec(self, args: list[str], *, env: list[str] | None = None, cwd: str = "", user: str = "", stdin: bytes = b"",
             timeout: float = 0, on_output: Callable[[int, bytes], None] | None = None) -> ExecResult:
        """Run ``args``; with ``on_output(fd, data)`` the output streams to it instead of the result."""
        self._check_size("stdin", stdin)
        msg = PoolExec(handle=self.handle, args=list(args), env=list(env or []), cwd=cwd, user=user, stdin=stdin,
                       timeout_ms=int(timeout * 1000), stream=on_output is not None)
        reply = self._call(msg, timeout + 30 if timeout else None, on_output)
        assert isinstance(reply, PoolExited)
        return ExecResult(reply.exit_status, reply.stdout, reply.stderr, reply.duration_ns, reply.timed_out)

    def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._check_size(path, data)
        self._call(PoolPut(handle=self.handle, path=path, data=data, mode=mode), 60)

    def get(self, path: str) -> bytes:
        reply = self._call(PoolGet(handle=self.handle, path=path), 60)
        assert isinstance(reply, PoolFile)
        return reply.data

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.client._forget(self)
        self._call(PoolRelease(handle=self.handle), NODE_TIMEOUT * 5)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.release()
        except (NodeUnreachable, NotFound):
            if exc[0] is None:
                raise


class Client:
    """Claims from the least loaded of ``endpoints`` (a list, or one string, comma-separated)."""

    def __init__(self, endpoints: Iterable[str] | str, *, server_key: bytes | None = None, client_secret: bytes | None = None,
                 timeout: float = NODE_TIMEOUT) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        self.given = list(endpoints)
        if not self.given:
            raise InvalidArgument("no pool endpoints given")
        self.server_key = server_key
        self.keypair = (zmq.curve_public(client_secret), client_secret) if client_secret else None
        self.timeout = timeout
        self.ctx = zmq.Context()
        self.nodes: dict[str, _Node] = {}
        self.resolved_at = 0.0
        self.sandboxes: set[Sandbox] = set()
        self._resolve()

    # --- nodes ---------------------------------------------------------------------
    def _resolve(self) -> None:
        wanted = []
        for ep in self.given:
            wanted.extend(expand(ep))
        for ep in wanted:
            if ep not in self.nodes:
                self.nodes[ep] = _Node(self.ctx, ep, self.server_key, self.keypair)
        self.resolved_at = time.monotonic()

    def node(self, endpoint: str) -> _Node:
        if endpoint not in self.nodes:
            self.nodes[endpoint] = _Node(self.ctx, endpoint, self.server_key, self.keypair)
        return self.nodes[endpoint]

    def refresh(self, force: bool = False) -> dict[str, PoolStatusReply]:
        """pool.status of every node not known down, asked at once."""
        now = time.monotonic()
        if now - self.resolved_at > RESOLVE_EVERY:
            self._resolve()
        asked = {}
        for node in self.nodes.values():
            if node.down_until > now:
                continue
            if force or node.status is None or now - node.status_at > STATUS_TTL:
                asked[node] = node.send(PoolStatus())
        deadline = now + self.timeout
        for node, mid in asked.items():
            try:
                reply = node.recv_for(mid, deadline)
            except ZentryError:  # an agent that answers status with an error is not one to claim from
                reply = None
            if reply is None:
                node.down_until = time.monotonic() + DOWN_FOR
                node.status = None
                continue
            node.status = reply
            node.name = reply.node
            node.status_at = time.monotonic()
            node.extra_claims = 0
        return {n.endpoint: n.status for n in self.nodes.values() if n.status is not None and n.down_until <= time.monotonic()}

    def _candidates(self, pool: str) -> list[_Node]:
        out = []
        for node in self.nodes.values():
            st = node.status
            if st is None or node.down_until > time.monotonic():
                continue
            entry = next((p for p in st.pools if p.get("name") == pool), None)
            if entry is None:
                continue
            warm = entry.get("warm", 0) - node.extra_claims
            capacity = sum(p.get("max", 0) for p in st.pools) or 1
            load = st.load + node.extra_claims / capacity
            out.append((warm <= 0, load, node))
        out.sort(key=lambda t: (t[0], t[1]))
        return [n for _cold, _load, n in out]

    # --- the API -------------------------------------------------------------------------
    def claim(self, pool: str, *, ttl: float = 0, idle: float = 0, owner: str = "", timeout: float = 60.0) -> Sandbox:
        """A sandbox of ``pool`` from the least loaded node that has it."""
        self.refresh()
        tried: list[str] = []
        errors: list[str] = []
        for attempt in range(2):
            for node in self._candidates(pool):
                if node.endpoint in tried:
                    continue
                tried.append(node.endpoint)
                try:
                    reply = node.request(PoolClaim(pool=pool, ttl_ms=int(ttl * 1000), idle_ms=int(idle * 1000), owner=owner), timeout)
                except (NodeUnreachable, LimitReached, NotFound) as err:
                    errors.append(str(err))
                    continue
                node.extra_claims += 1
                sb = Sandbox(self, node, reply)
                self.sandboxes.add(sb)
                return sb
            self.refresh(force=True)
        if not tried:
            known = ", ".join(f"{n.name}" for n in self.nodes.values() if n.status is not None) or "none answered"
            raise NotFound(f"no reachable pool node has a pool {pool!r} (nodes: {known})")
        raise LimitReached(f"cannot claim a {pool} sandbox: " + "; ".join(errors))

    def attach(self, ref: str) -> Sandbox:
        """The sandbox named by ``handle@endpoint`` (``Sandbox.ref``), e.g. from another process."""
        handle, sep, endpoint = ref.partition("@")
        if not sep or not handle or not endpoint:
            raise InvalidArgument(f"{ref!r} is not a pool handle (HANDLE@ENDPOINT, as zentry pool claim prints)")
        node = self.node(endpoint)
        sb = Sandbox(self, node, PoolClaimed(handle=handle, pool="", node=endpoint, expires_ns=0))
        self.sandboxes.add(sb)
        return sb

    def status(self) -> dict[str, PoolStatusReply]:
        return self.refresh(force=True)

    def _forget(self, sb: Sandbox) -> None:
        self.sandboxes.discard(sb)

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        self.ctx.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def expand(endpoint: str) -> list[str]:
    """``tcp://name:port`` -> one endpoint per address the name resolves to (others as given)."""
    if not endpoint.startswith("tcp://"):
        return [endpoint]
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port
    if not host or port is None:
        raise InvalidArgument(f"{endpoint!r}: give tcp://HOST:PORT")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [endpoint]
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise InvalidArgument(f"{endpoint!r}: cannot resolve {host}: {err.strerror}") from err
    out = []
    for family, _t, _p, _c, addr in infos:
        ep = f"tcp://[{addr[0]}]:{port}" if family == socket.AF_INET6 else f"tcp://{addr[0]}:{port}"
        if ep not in out:
            out.append(ep)
    return out
