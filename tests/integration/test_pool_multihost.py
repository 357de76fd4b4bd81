"""Pools across hosts, on this machine: three "hosts" are network namespaces
joined by a bridge (which lives in a namespace of its own), each running its
own node agent (own --root, tcp with CURVE on an address this test assigns);
a client in a fourth namespace claims 60 sandboxes across them and runs a
command in each. Then one host's agent and sandboxes are killed: its handles
fail with a clear error, new claims land on the other hosts, nothing is left
on the survivors, and the killed host's agent, restarted, cleans up what it
left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import zmq

from helpers.pool import PoolAgent, sandboxes, templates

pytestmark = pytest.mark.root

HOSTS = 3
CLAIMS = 60
PORT = 7711
NET = "10.213.7"  # private, and only inside this test's namespaces

CLIENT = textwrap.dedent("""
    import json, sys, time
    from zentry.actors.pool.client import Client, NodeUnreachable

    endpoints, server_key, secret, claims = sys.argv[1].split(","), sys.argv[2].encode(), sys.argv[3].encode(), int(sys.argv[4])
    out = lambda **kw: (print(json.dumps(kw)), sys.stdout.flush())
    client = Client(endpoints, server_key=server_key, client_secret=secret)
    held = []
    for i in range(claims):
        sb = client.claim("bb", owner=f"job{i}")
        r = sb.exec(["sh", "-c", f"echo job{i} on $(hostname)"])
        assert r.exit_status == 0 and r.stdout.startswith(f"job{i} on".encode()), r
        held.append(sb)
    out(phase=1, nodes=[sb.node.endpoint for sb in held])
    sys.stdin.readline()  # the test kills a host
    results = []
    for sb in held:
        try:
            r = sb.exec(["true"])
            results.append([sb.node.endpoint, "ok", r.exit_status])
        except Exception as err:
            results.append([sb.node.endpoint, type(err).__name__, str(err)])
    fresh = []
    for i in range(10):
        sb = client.claim("bb")
        assert sb.exec(["true"]).exit_status == 0
        fresh.append(sb)
    for sb in held + fresh:
        if sb.node.down_until < time.monotonic():
            sb.release()
    out(phase=2, results=results, fresh=[sb.node.endpoint for sb in fresh])
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def network():
    tag = f"zp{os.getpid() % 100000}"
    bridge = f"{tag}-br"
    names = [f"{tag}-h{i}" for i in range(HOSTS)] + [f"{tag}-cl"]
    made = []
    try:
        for ns in [bridge, *names]:
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i, ns in enumerate(names):
            _ip("-n", bridge, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", bridge, "link", "set", f"v{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{NET}.{10 + i}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield names
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_sixty_claims_across_three_hosts_and_one_host_dies(network, tmp_path, leak_guard, busybox_rootfs):
    rootfs = busybox_rootfs()
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    (tmp_path / "server.key").write_bytes(server_secret)
    (tmp_path / "clients").write_bytes(client_public + b"\n")
    agents = []
    for i in range(HOSTS):
        root = tempfile.mkdtemp(prefix=f"zp{i}-", dir="/tmp")
        leak_guard.add_private_root(root)
        agents.append(PoolAgent(root, tmp_path, {"bb": {"rootfs": str(rootfs), "warm": 3, "max": 30, "ttl": "10m",
                                                        "overrides": {"hostname": f"host{i}"}}},
                                prefix=["nsenter", f"--net=/run/netns/{network[i]}"], name=f"host{i}",
                                listen=[f"tcp://{NET}.{10 + i}:{PORT}"], server_secret_file=str(tmp_path / "server.key"),
                                authorized_keys=str(tmp_path / "clients")))
    client = None
    try:
        for agent in agents:
            agent.start(wait_warm=False)
        for agent in agents:
            agent.wait_warm(180)
        endpoints = ",".join(f"tcp://{NET}.{10 + i}:{PORT}" for i in range(HOSTS))
        client = subprocess.Popen(["nsenter", f"--net=/run/netns/{network[-1]}", sys.executable, "-P", "-c", CLIENT, endpoints,
                                   server_public.decode(), client_secret.decode(), str(CLAIMS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = client.stdout.readline()
        assert line, client.stderr.read()
        nodes = json.loads(line)["nodes"]
        per_node = {ep: nodes.count(ep) for ep in set(nodes)}
        assert len(nodes) == CLAIMS and len(per_node) == HOSTS and min(per_node.values()) >= CLAIMS // HOSTS // 3, per_node

        # host 0 dies: its agent, then every process of its sandboxes
        victim = agents[0]
        victim_ep = f"tcp://{NET}.10:{PORT}"
        left = templates(victim.root)  # its pool's template (its spawner)
        left_sandboxes = sandboxes(victim.root)
        assert len(left) == 1 and len(left_sandboxes) >= 3
        victim.kill()
        for pid in [*left.values(), *left_sandboxes.values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line, client.stderr.read()
        report = json.loads(line)
        client.wait(60)
        for endpoint, outcome, detail in report["results"]:
            if endpoint == victim_ep:
                assert outcome == "NodeUnreachable" and ("unreachable" in detail or "stopped answering" in detail), (outcome, detail)
            else:
                assert (outcome, detail) == ("ok", 0)
        assert victim_ep not in report["fresh"] and len(report["fresh"]) == 10

        # the survivors: nothing claimed, only their warm sandboxes
        for agent in agents[1:]:
            st = agent.status()
            assert st.pools[0]["claimed"] == 0
            agent.wait_warm(120)
            _wait_count(agent, 3)

        # the killed host's agent, restarted, cleans up what it left
        victim.start(wait_warm=True, timeout=180)
        _wait_gone(victim, set(left))
        assert not set(left_sandboxes) & set(sandboxes(victim.root))
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        for agent in agents:
            agent.stop()


def _wait_count(agent, n: int, timeout: float = 60) -> None:
    """Its one template, and ``n`` sandboxes."""
    deadline = time.monotonic() + timeout
    while len(sandboxes(agent.root)) != n and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(templates(agent.root)) == 1 and len(sandboxes(agent.root)) == n, sandboxes(agent.root)


def _wait_gone(agent, ids: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while set(templates(agent.root)) & ids and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (set(templates(agent.root)) & ids)
