"""The pool client against fake node agents (threads answering pool.* on ipc
ROUTER sockets): least-loaded spreading, failover when a node goes away,
DNS expansion; and the agent's config file."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from zentry.actors.pool import config as cfg
from zentry.actors.pool.client import Client, NodeUnreachable, expand
from zentry.bus import envelope as envmod
from zentry.bus.errors import ConfigError, LimitReached
from zentry.bus.messages import Error, Ok, PoolClaim, PoolClaimed, PoolExec, PoolExited, PoolRelease, PoolStatus, PoolStatusReply


class FakeNode(threading.Thread):
    """Answers pool.status from its counters, pool.claim by counting, pool.exec at once."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, *, warm: int, capacity: int = 100, claimed: int = 0) -> None:
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = endpoint
        self.name = name
        self.warm = warm
        self.capacity = capacity
        self.claimed = claimed
        self.claims = 0
        self.alive = True
        self.refuse = False
        self.long_exec = False  # pool.exec answered only when the next pool.status comes, just before it
        self.held: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, frame = self.sock.recv_multipart()
            if not self.alive:
                continue  # a hung node: reads, never answers
            env = envmod.decode(frame)
            msg = env.body
            if isinstance(msg, PoolStatus):
                while self.held:  # the command ended while the probe was on its way
                    self.sock.send_multipart([ident, self.held.pop()])
                reply = PoolStatusReply(node=self.name, pools=[{"name": "py", "warm": self.warm, "claimed": self.claimed, "starting": 0,
                                                                "target": 2, "max": self.capacity}],
                                        sandboxes=self.warm + self.claimed, max_sandboxes=0, memory_budget=0, memory_reserved=0,
                                        load=self.claimed / self.capacity)
            elif isinstance(msg, PoolClaim):
                if self.refuse or self.claimed >= self.capacity:
                    reply = Error(code=LimitReached.code, message=f"node {self.name}: full")
                else:
                    self.claims += 1
                    self.claimed += 1
                    reply = PoolClaimed(handle=f"{self.name}-{self.claims}", pool=msg.pool, node=self.name, expires_ns=0)
            elif isinstance(msg, PoolExec) and self.long_exec:
                self.held.append(envmod.encode_message(PoolExited(handle=msg.handle, exit_status=3, stdout=b"", stderr=b""),
                                                       sender="pool", parent=env.id)[1])
                continue
            elif isinstance(msg, PoolExec):
                reply = PoolExited(handle=msg.handle, exit_status=0, stdout=self.name.encode(), stderr=b"")
            elif isinstance(msg, PoolRelease):
                self.claimed -= 1
                reply = Ok()
            else:
                reply = Error(code="unknown_message", message="?")
            self.sock.send_multipart([ident, envmod.encode_message(reply, sender="pool", parent=env.id)[1]])
        self.sock.close(linger=0)


@pytest.fixture
def nodes(tmp_path):
    ctx = zmq.Context()
    made = []

    def make(name: str, **kw) -> FakeNode:
        node = FakeNode(ctx, f"ipc://{tmp_path}/{name}.sock", name, **kw)
        node.start()
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop.set()
        node.join(5)
    ctx.term()


def test_claims_go_to_the_least_loaded_node_with_warm_sandboxes(nodes):
    busy = nodes("busy", warm=5, claimed=60)
    idle = nodes("idle", warm=5, claimed=0)
    cold = nodes("cold", warm=0, claimed=0)
    with Client([busy.endpoint, idle.endpoint, cold.endpoint]) as client:
        held = [client.claim("py") for _ in range(4)]
    assert idle.claims == 4 and busy.claims == 0 and cold.claims == 0, [h.node_name for h in held]


def test_claims_spread_as_load_evens_out(nodes):
    a = nodes("a", warm=50, claimed=0)
    b = nodes("b", warm=50, claimed=10)
    with Client([a.endpoint, b.endpoint]) as client:
        for _ in range(30):
            client.claim("py")
    # a takes the first ten alone, then both share
    assert a.claims >= 10 and b.claims >= 5 and a.claims + b.claims == 30, (a.claims, b.claims)
    assert abs(a.claimed - b.claimed) <= 3


def test_a_refused_claim_tries_the_next_node(nodes):
    full = nodes("full", warm=1, claimed=0)
    other = nodes("other", warm=1, claimed=50)
    full.refuse = True  # its status looks best, its claims are refused (raced by other clients)
    with Client([full.endpoint, other.endpoint]) as client:
        sb = client.claim("py")
    assert sb.node_name == "other" and full.claims == 0


def test_failover_when_a_node_stops_answering(nodes):
    a = nodes("a", warm=5)
    b = nodes("b", warm=5, claimed=50)
    with Client([a.endpoint, b.endpoint], timeout=1.0) as client:
        sb = client.claim("py")
        assert sb.node_name == "a" and sb.exec(["x"]).stdout == b"a"
        a.alive = False
        t = time.monotonic()
        with pytest.raises(NodeUnreachable, match=f"sandbox {sb.handle}.*a .*(stopped answering|unreachable)"):
            sb.exec(["x"])
        assert time.monotonic() - t < 6
        t = time.monotonic()
        with pytest.raises(NodeUnreachable, match="unreachable"):
            sb.exec(["x"])  # its node is known down: at once
        assert time.monotonic() - t < 0.5
        fresh = client.claim("py")
        assert fresh.node_name == "b"


def test_a_long_command_whose_answer_comes_during_a_probe(nodes):
    """While a command runs the client asks its node's status every second: the
    command's answer that arrives while it waits for the probe's is kept, not lost."""
    a = nodes("a", warm=1)
    a.long_exec = True
    with Client([a.endpoint]) as client:
        sb = client.claim("py")
        result = []
        worker = threading.Thread(target=lambda: result.append(sb.exec(["x"])), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the answer was lost: exec waits on"
        assert result[0].exit_status == 3


def test_no_node_answers(nodes, tmp_path):
    with Client([f"ipc://{tmp_path}/nobody.sock"], timeout=0.3) as client:
        with pytest.raises(Exception, match="no reachable pool node has a pool 'py'"):
            client.claim("py")


def test_expand_resolves_names_and_keeps_addresses():
    assert expand("tcp://10.1.2.3:7711") == ["tcp://10.1.2.3:7711"]
    assert expand("ipc:///x/pool.sock") == ["ipc:///x/pool.sock"]
    assert "tcp://127.0.0.1:7711" in expand("tcp://localhost:7711")
    with pytest.raises(Exception, match="HOST:PORT"):
        expand("tcp://localhost")


def test_tcp_needs_curve_keys():
    with pytest.raises(Exception, match="CURVE"):
        Client(["tcp://127.0.0.1:1"])


# --- the agent's config file -------------------------------------------------------------


def test_config_toml_and_json(tmp_path):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (tmp_path / "a.toml").write_text(f'node = "n1"\nmemory_budget = "1g"\n[pools.py]\nrootfs = "{rootfs}"\nwarm = 2\nmax = 5\n'
                                     'ttl = "10m"\nidle = "500ms"\nmemory = "64m"\n[pools.py.overrides]\nhostname = "h"\n')
    c = cfg.load(str(tmp_path / "a.toml"))
    pool = c.pools["py"]
    assert (c.node, c.memory_budget, pool.warm, pool.max, pool.ttl, pool.idle, pool.memory) == ("n1", 1 << 30, 2, 5, 600.0, 0.5, 64 << 20)
    assert pool.config["hostname"] == "h" and pool.config["root"]["path"] == str(rootfs)
    (tmp_path / "b.json").write_text('{"pools": {"x": {"rootfs": "rootfs"}}}')
    assert cfg.load(str(tmp_path / "b.json")).pools["x"].config["root"]["path"] == str(rootfs)  # relative to the file


@pytest.mark.parametrize("text, message", [
    ('{"pools": {}}', "no pools"),
    ('{"pools": {"x": {"rootfs": "rootfs", "warm": 5, "max": 2}}}', "0 <= warm <= max"),
    ('{"pools": {"x": {"rootfs": "rootfs", "bundle": "b"}}}', "exactly one of bundle or rootfs"),
    ('{"pools": {"x": {"rootfs": "rootfs", "ttl": "soon"}}}', "pools.x.ttl: 'soon' is not a duration"),
    ('{"pools": {"x": {"rootfs": "rootfs"}}, "memory_budget": "1g"}', "needs every pool's memory limit"),
    ('{"pools": {"x": {"rootfs": "rootfs"}}, "listen": ["tcp://0.0.0.0:1"]}', "needs CURVE"),
    ('{"pools": {"x": {"rootfs": "rootfs", "wrm": 1}}}', "unknown keys wrm"),
    ('{"pools": {"Bad Name": {"rootfs": "rootfs"}}}', "a pool name is"),
    ('not json', "not valid JSON"),
])
def test_config_errors_name_the_file_and_key(tmp_path, text, message):
    (tmp_path / "rootfs").mkdir()
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        cfg.load(str(path))
    assert str(path) in str(err.value)
