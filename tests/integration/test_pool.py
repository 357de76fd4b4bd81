"""The node agent (zentry pool serve) on this host: claim, exec, files, release,
expiry, limits, restart, the tap, metrics, CURVE; nothing left behind (the
leak guard checks processes, mounts, cgroups and the agent's --root)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import psutil
import pytest
import zmq

from helpers.bundle import zentry_command
from helpers.pool import PoolAgent, sandboxes

pytestmark = pytest.mark.root


@pytest.fixture
def make_agent(zentry_root, tmp_path, busybox_rootfs):
    agents = []
    rootfs = busybox_rootfs()

    def make(pools=None, **keys) -> PoolAgent:
        pools = pools or {"bb": {"warm": 2, "max": 4}}
        for spec in pools.values():
            if "bundle" not in spec:
                spec.setdefault("rootfs", str(rootfs))
        agent = PoolAgent(zentry_root, tmp_path, pools, name=f"n{len(agents)}", **keys)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        assert agent.stop() == 0, agent.log()
        assert "Traceback" not in agent.log(), agent.log()  # e.g. a thread killed under its sockets at stop
    for agent in agents:
        assert not os.path.exists(agent.root) or os.listdir(agent.root) == [], os.listdir(agent.root)


@pytest.fixture
def client_of():
    from zentry.actors.pool.client import Client

    clients = []

    def make(*endpoints, **kw) -> Client:
        clients.append(Client(list(endpoints), **kw))
        return clients[-1]

    yield make
    for c in clients:
        c.close()


def _containers(root) -> list[str]:
    r = subprocess.run([*zentry_command(), "--root", str(root), "list", "--format", "json"], capture_output=True, text=True, check=True)
    return sorted(c["id"] for c in json.loads(r.stdout or "[]"))


def _wait(pred, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_claim_exec_files_release_and_every_handout_starts_clean(make_agent, client_of):
    from zentry.bus.errors import NotFound

    agent = make_agent().start()
    client = client_of(agent.endpoint)
    with client.claim("bb", owner="t") as sb:
        r = sb.exec(["sh", "-c", 'echo "out $1 $FOO $(pwd)"; echo err >&2; read line; echo "in $line"; exit 7', "sh", "arg"],
                    env=["FOO=bar", "PATH=/bin"], cwd="/tmp", stdin=b"hello\n")
        assert (r.exit_status, r.stdout, r.stderr) == (7, b"out arg bar /tmp\nin hello\n", b"err\n")
        # the pool's process env and cwd by default; a signal is 128+N; a command that cannot start 255 (as runc exec)
        assert sb.exec(["sh", "-c", "echo $PATH; pwd"]).stdout == b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/\n"
        assert sb.exec(["sh", "-c", "kill -9 $$"]).exit_status == 137
        missing = sb.exec(["no-such-command"])
        assert missing.exit_status == 255 and b"no-such-command" in missing.stderr
        # under the container's seccomp filter, in its pid namespace (its init is the exec server)
        status = sb.exec(["cat", "/proc/self/status"]).stdout.decode()
        assert "Seccomp:\t2" in status
        assert sb.exec(["cat", "/proc/1/cmdline"]).stdout.startswith(b"/.zentry-pool-init\0")
        data = bytes(range(256)) * 1000
        sb.put("/tmp/data.bin", data, mode=0o600)
        assert sb.get("/tmp/data.bin") == data
        assert sb.exec(["stat", "-c", "%a %s", "/tmp/data.bin"]).stdout == b"600 256000\n"
        sb.exec(["sh", "-c", "echo dirty > /etc/marker; rm /bin/true"])
        with pytest.raises(NotFound, match="nope"):
            sb.get("/nope")
        handle = sb.handle
        assert sandboxes(agent.root).get(handle)
    # released: destroyed (never reused: its processes and cgroup are gone), and the pool refilled
    _wait(lambda: handle not in sandboxes(agent.root), what="the released sandbox to be deleted")
    agent.wait_warm(60)
    with client.claim("bb") as sb2:
        assert sb2.handle != handle
        r = sb2.exec(["sh", "-c", "cat /etc/marker 2>&1; ls /bin/true"])
        assert b"No such file" in r.stdout and b"/bin/true" in r.stdout
    with pytest.raises(NotFound, match="no claimed sandbox"):
        client.attach(f"{handle}@{agent.endpoint}").exec(["true"])


def test_streamed_output_and_timeout(make_agent, client_of):
    agent = make_agent({"bb": {"warm": 1, "max": 2}}).start()
    client = client_of(agent.endpoint)
    with client.claim("bb") as sb:
        chunks = []
        r = sb.exec(["sh", "-c", "echo one; sleep 0.3; echo two >&2; echo three"], on_output=lambda fd, d: chunks.append((fd, d)))
        assert r.exit_status == 0 and r.stdout == b""
        assert b"".join(d for fd, d in chunks if fd == 1) == b"one\nthree\n"
        assert b"".join(d for fd, d in chunks if fd == 2) == b"two\n"
        t = time.monotonic()
        r = sb.exec(["sleep", "30"], timeout=0.5)
        assert r.timed_out and r.exit_status == 137 and time.monotonic() - t < 10
        assert sb.exec(["true"]).exit_status == 0  # still usable


def test_ttl_and_idle_expiry(make_agent, client_of):
    from zentry.bus.errors import NotFound

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = make_agent({"bb": {"warm": 2, "max": 4, "idle": "2s"}}, metrics_listen=f"127.0.0.1:{port}").start()
    client = client_of(agent.endpoint)
    idle = client.claim("bb")
    ttl = client.claim("bb", ttl=2.5, idle=60)
    for _ in range(6):  # kept alive by use (a request every 0.5 s, idle after 2 s)
        assert idle.exec(["true"]).exit_status == 0
        time.sleep(0.5)
    time.sleep(3.5)
    for sb in (idle, ttl):
        with pytest.raises(NotFound, match="no claimed sandbox"):
            sb.exec(["true"])
    _wait(lambda: not ({idle.handle, ttl.handle} & set(sandboxes(agent.root))), what="expired sandboxes to be deleted")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'zentry_pool_expired_total{pool="bb",reason="idle"} 1.0' in metrics
    assert 'zentry_pool_expired_total{pool="bb",reason="ttl"} 1.0' in metrics


def test_limits_refuse_clearly(make_agent, client_of):
    from zentry.bus.errors import LimitReached

    agent = make_agent({"bb": {"warm": 1, "max": 2, "memory": "32m"}, "other": {"warm": 0, "max": 4, "memory": "32m"}},
                       memory_budget="80m").start()
    client = client_of(agent.endpoint)
    a = client.claim("bb")
    b = client.claim("bb")
    with pytest.raises(LimitReached, match=r"pool bb has no warm sandbox and the pool is at its maximum \(2 sandboxes\)"):
        client.claim("bb")
    # bb holds 64 MiB of the 80 MiB budget: another 32 MiB sandbox does not fit
    with pytest.raises(LimitReached, match="memory budget is spent"):
        client.claim("other")
    a.release()
    _wait(lambda: agent.status().pools[0]["warm"] == 1, what="refill after release")
    b.release()


def test_restart_cleans_what_a_killed_agent_left(make_agent, client_of, zentry_root):
    from zentry.bus.errors import NotFound

    agent = make_agent({"bb": {"warm": 2, "max": 4}}).start()
    client = client_of(agent.endpoint)
    sb = client.claim("bb")
    assert sb.exec(["true"]).exit_status == 0
    old = set(_containers(zentry_root))
    old_sandboxes = sandboxes(zentry_root)
    assert len(old) == 1 and len(old_sandboxes) >= 2  # the pool's template, its sandboxes
    agent.kill()
    restarted = make_agent({"bb": {"warm": 2, "max": 4}})
    restarted.root = agent.root
    restarted.start()
    _wait(lambda: not (old & set(_containers(zentry_root))), what="the old template to be deleted")
    assert not any(psutil.pid_exists(pid) for pid in old_sandboxes.values())
    assert len(_containers(zentry_root)) == 1 and len(sandboxes(zentry_root)) == 2
    with pytest.raises(NotFound, match="no claimed sandbox"):
        client.attach(sb.ref).exec(["true"])
    # a second agent on the same root is refused before it binds anything
    r = subprocess.run([*zentry_command(), "--root", str(zentry_root), "pool", "serve", "--config", str(restarted.config_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "another node agent serves" in r.stderr, r.stderr
    with client_of(restarted.endpoint).claim("bb") as fresh:
        assert fresh.exec(["true"]).exit_status == 0


def test_tap_events_with_parents_and_metrics(make_agent, client_of, zentry_root):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = make_agent({"bb": {"warm": 1, "max": 2}}, metrics_listen=f"127.0.0.1:{port}").start()
    tap = subprocess.Popen([*zentry_command(), "--root", str(zentry_root), "tap", "pool-agent", "--format", "json", "--kind",
                            "pool_claim,pool_exec,pool_release,pool_refill,request", "--timeout", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = client_of(agent.endpoint)
        import select

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the tap is subscribed: it shows our status requests
            client.status()
            if select.select([tap.stdout], [], [], 0.3)[0]:
                tap.stdout.readline()
                break
        sb = client.claim("bb")
        sb.exec(["true"])
        sb.release()
        agent.wait_warm(60)
        events = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = tap.stdout.readline()
            if not line:
                break
            events.append(json.loads(line))
            claims = [e["parent"] for e in events if e["type"] == "event.pool_claim"]
            refills = [e["parent"] for e in events if e["type"] == "event.pool_refill"]
            if claims and claims[0] in refills and any(e["type"] == "event.pool_release" for e in events):
                break
    finally:
        tap.terminate()
        tap.wait(10)
    by_type = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    requests = {e["parent"]: e["body"]["request"] for e in by_type.get("event.request", [])}
    claim, = by_type["event.pool_claim"]
    assert claim["body"]["handle"] == sb.handle and requests[claim["parent"]] == "pool.claim"
    ex, = by_type["event.pool_exec"]
    assert ex["body"]["args"] == ["true"] and requests[ex["parent"]] == "pool.exec"
    rel, = by_type["event.pool_release"]
    assert rel["body"]["reason"] == "released" and requests[rel["parent"]] == "pool.release"
    assert any(e["parent"] == claim["parent"] for e in by_type["event.pool_refill"])  # the refill the claim caused
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'zentry_pool_claim_seconds_count{pool="bb"} 1.0' in metrics
    assert 'zentry_pool_sandboxes{pool="bb",state="warm"} 1.0' in metrics
    assert 'zentry_pool_refill_failures_total{pool="bb"} 0.0' in metrics


def test_refill_failure_is_reported(make_agent, client_of, tmp_path):
    from zentry.bus.errors import SystemFailure

    agent = make_agent({"bad": {"warm": 0, "max": 2, "overrides": {"process": {"user": {"uid": 0, "gid": 0}}, "linux": {"namespaces": [{"type": "nosuch"}]}}}}).start()
    client = client_of(agent.endpoint)
    with pytest.raises(SystemFailure, match="pool bad: cannot start a sandbox"):
        client.claim("bad")


def test_bad_config_one_line(zentry_root, tmp_path):
    cfg = tmp_path / "p.toml"
    cfg.write_text('[pools.x]\nrootfs = "/nonexistent"\n')
    r = subprocess.run([*zentry_command(), "--root", str(zentry_root), "pool", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "is not a directory" in r.stderr, r.stderr
    cfg.write_text('listen = ["tcp://127.0.0.1:0"]\n[pools.x]\nrootfs = "/"\n')
    r = subprocess.run([*zentry_command(), "--root", str(zentry_root), "pool", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "needs CURVE" in r.stderr, r.stderr
    (tmp_path / "bad.key").write_text("not a key\n")
    (tmp_path / "clients").write_text(zmq.curve_keypair()[0].decode() + "\n")
    cfg.write_text(f'listen = ["tcp://127.0.0.1:0"]\nserver_secret_file = "{tmp_path}/bad.key"\nauthorized_keys = "{tmp_path}/clients"\n'
                   '[pools.x]\nrootfs = "/"\n')
    r = subprocess.run([*zentry_command(), "--root", str(zentry_root), "pool", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not hold a z85 CURVE secret key" in r.stderr, r.stderr
    assert os.listdir(zentry_root) == []


def test_remote_with_curve_only_authorized_clients(make_agent, client_of, tmp_path):
    from zentry.actors.pool.client import NodeUnreachable

    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    (tmp_path / "server.key").write_bytes(server_secret)
    (tmp_path / "clients").write_bytes(b"# allowed\n" + client_public + b"\n")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    agent = make_agent({"bb": {"warm": 1, "max": 2}}, listen=[endpoint], server_secret_file=str(tmp_path / "server.key"),
                       authorized_keys=str(tmp_path / "clients")).start()
    client = client_of(endpoint, server_key=server_public, client_secret=client_secret)
    with client.claim("bb") as sb:
        assert sb.exec(["echo", "remote"]).stdout == b"remote\n"
    stranger = client_of(endpoint, server_key=server_public, client_secret=zmq.curve_keypair()[1], timeout=1.0)
    assert stranger.status() == {}
    with pytest.raises(Exception, match="no reachable pool node"):
        stranger.claim("bb")
    with pytest.raises(Exception, match="CURVE"):
        client_of(endpoint)  # tcp without the server key is refused by the client itself
    assert NodeUnreachable


def test_exec_behaves_as_runc_exec(make_agent, client_of, busybox_bundle, tmp_path):
    """The same bundle as a pool template and as a runc container: the same
    commands give the same output and exit status through pool exec and runc exec."""
    import shutil

    runc = shutil.which("runc")
    if not runc:
        pytest.skip("runc not installed")
    bundle = busybox_bundle(["sleep", "1000000"])
    agent = make_agent({"bb": {"bundle": str(bundle), "warm": 1, "max": 2}}).start()
    runc_root = tmp_path / "runc"
    subprocess.run([runc, "--root", str(runc_root), "run", "-d", "--bundle", str(bundle), "pr1"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    try:
        cases = [
            (["sh", "-c", "echo out; echo err >&2; exit 7"], {}),
            (["sh", "-c", "kill -9 $$"], {}),
            (["sh", "-c", "echo $PATH; pwd; id; grep -E '^(Cap(Prm|Eff|Bnd)|NoNewPrivs):' /proc/self/status"], {}),
            (["sh", "-c", "pwd; echo $A"], {"cwd": "/tmp", "env": ["A=1"]}),
            (["no-such-command"], {}),
            (["/etc/passwd"], {}),
            (["true"], {"cwd": "/nonexistent"}),
        ]
        with client_of(agent.endpoint).claim("bb") as sb:
            for argv, opts in cases:
                ours = sb.exec(argv, env=opts.get("env"), cwd=opts.get("cwd", ""))
                flags = [*(f"--env={e}" for e in opts.get("env", [])), *([f"--cwd={opts['cwd']}"] if "cwd" in opts else [])]
                theirs = subprocess.run([runc, "--root", str(runc_root), "exec", *flags, "pr1", *argv], capture_output=True, timeout=60)
                assert ours.exit_status == theirs.returncode, (argv, ours, theirs)
                # (zentry adds its sentry's seccomp filter, which runc's config here has none of: stricter)
                if ours.exit_status != 255:  # (the start failures' messages are each runtime's own)
                    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr), argv
    finally:
        subprocess.run([runc, "--root", str(runc_root), "delete", "-f", "pr1"], capture_output=True, timeout=60)


def test_a_sandbox_whose_init_dies_is_replaced(make_agent, client_of, zentry_root):
    import signal

    from zentry.bus.errors import NotFound, SystemFailure

    agent = make_agent({"bb": {"warm": 1, "max": 3}}).start()
    client = client_of(agent.endpoint)
    sb = client.claim("bb")
    init_pid = sandboxes(zentry_root)[sb.handle]
    os.kill(init_pid, signal.SIGKILL)  # e.g. the OOM killer
    _wait(lambda: sb.handle not in sandboxes(zentry_root), what="the dead sandbox to be deleted")
    with pytest.raises((NotFound, SystemFailure)):
        sb.exec(["true"])
    agent.wait_warm(60)
    assert agent.status().pools[0]["claimed"] == 0


def test_sandboxes_are_apart_from_each_other_and_confined_as_runc(make_agent, client_of, busybox_bundle, tmp_path):
    """Two sandboxes of one pool share nothing writable and no namespace; each is
    as confined as a runc container of the same bundle and limits (same commands,
    same answers), with zentry's seccomp filter on top."""
    import shutil

    runc = shutil.which("runc")
    if not runc:
        pytest.skip("runc not installed")
    # (the built-in config: ambient capabilities, a writable root, no cgroup namespace)
    bundle = busybox_bundle(["sleep", "1000000"], use_cli=False)
    agent = make_agent({"bb": {"bundle": str(bundle), "warm": 2, "max": 3, "memory": "48m"}}).start()
    config = json.loads((bundle / "config.json").read_text())
    config["linux"].setdefault("resources", {})["memory"] = {"limit": 48 << 20}
    rbundle = tmp_path / "rb"
    rbundle.mkdir()
    (rbundle / "config.json").write_text(json.dumps(dict(config, root=dict(config["root"], path=str(bundle / "rootfs")))))
    runc_root = tmp_path / "runc"
    subprocess.run([runc, "--root", str(runc_root), "run", "-d", "--bundle", str(rbundle), "pa1"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def in_runc(*argv):
        r = subprocess.run([runc, "--root", str(runc_root), "exec", "pa1", *argv], capture_output=True, timeout=60)
        return r.returncode, r.stdout

    try:
        client = client_of(agent.endpoint)
        with client.claim("bb") as a, client.claim("bb") as b:
            def ns(sb):
                return sb.exec(["sh", "-c", "for n in mnt pid net ipc uts cgroup; do readlink /proc/self/ns/$n; done"]).stdout.split()
            host = [os.readlink(f"/proc/self/ns/{n}").encode() for n in ("mnt", "pid", "net", "ipc", "uts", "cgroup")]
            assert all(x != y and x != h for x, y, h in zip(ns(a), ns(b), host)), (ns(a), ns(b), host)
            # nothing written in one is seen in the other: the root, /tmp, /dev, /dev/shm, processes
            r = a.exec(["sh", "-c", "echo 1 > /etc/a && echo 1 > /tmp/a && echo 1 > /dev/a && echo 1 > /dev/shm/a && "
                                    "setsid sleep 1000 </dev/null >/dev/null 2>&1 &"])
            assert r.exit_status == 0, r
            r = b.exec(["sh", "-c", "ls /etc/a /tmp/a /dev/a /dev/shm/a 2>&1; ps -o comm | grep -c sleep"])
            assert r.stdout.count(b"No such file") == 4 and r.stdout.endswith(b"0\n"), r.stdout
            # the same answers as runc's container gives
            for argv in (["sh", "-c", "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status"],
                         ["sh", "-c", "id; hostname; ulimit -n; cat /proc/self/oom_score_adj"],
                         ["unshare", "-n", "true"], ["mount", "-t", "tmpfs", "t", "/tmp"], ["cat", "/proc/kcore"],
                         ["sh", "-c", "echo 1 > /proc/sys/kernel/domainname"], ["sh", "-c", "echo 1 > /sys/kernel/uevent_helper"],
                         ["sh", "-c", "ls /dev | sort"], ["sh", "-c", "ls -l /dev/null /dev/zero /dev/tty | cut -c1-10"],
                         ["sh", "-c", "head -c 1 /dev/kmsg 2>&1 >/dev/null; echo $?"]):
                theirs = in_runc(*argv)
                ours = b.exec(argv)
                assert (ours.exit_status, ours.stdout) == theirs, (argv, ours, theirs)
            # every mount runc makes is there, of the same type, with at least its flags (zentry masks
            # paths with nosuid,nodev,noexec too)
            def mounts(text: bytes) -> dict:
                out = {}
                for line in text.decode().splitlines():
                    f = line.split()
                    flags = {o for o in f[5].split(",") if o in ("ro", "nosuid", "nodev", "noexec")}
                    out.setdefault((f[4], f[f.index("-") + 1]), set()).update(flags)
                return out
            theirs = mounts(in_runc("cat", "/proc/self/mountinfo")[1])
            ours = mounts(a.exec(["cat", "/proc/self/mountinfo"]).stdout)
            # the root: the bundle's there; here an overlay of it with a fresh upper layer in memory
            assert ours.pop(("/", "overlay")) == theirs.pop(next(m for m in theirs if m[0] == "/"))
            # zentry adds its exec server, and the views a zentry container has (test_pool_views.py)
            views = {(path, "fuse") for path in ("/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/loadavg",
                                                 "/sys/devices/system/cpu/online")}
            assert set(ours) - set(theirs) == {("/.zentry-pool-init", "ext4")} | views and set(theirs) <= set(ours), (ours, theirs)
            assert all(ours[m] >= theirs[m] for m in theirs), [(m, ours[m], theirs[m]) for m in theirs if not ours[m] >= theirs[m]]
            # the pool's memory limit: a process that grows past it is killed in both
            assert a.exec(["tail", "/dev/zero"], timeout=60).exit_status == 137
            assert in_runc("tail", "/dev/zero")[0] == 137
            # zentry's seccomp filter (runc's container here has no profile at all)
            assert b"Seccomp:\t2" in a.exec(["cat", "/proc/self/status"]).stdout
    finally:
        subprocess.run([runc, "--root", str(runc_root), "delete", "-f", "pa1"], capture_output=True, timeout=60)


def test_a_template_that_dies_takes_its_sandboxes_and_is_replaced(make_agent, client_of, zentry_root):
    import signal

    from zentry.bus.errors import NotFound, SystemFailure

    from helpers.pool import templates

    agent = make_agent({"bb": {"warm": 2, "max": 4}}).start()
    client = client_of(agent.endpoint)
    sb = client.claim("bb")
    (tid, spawner), = templates(zentry_root).items()
    old = sandboxes(zentry_root)
    assert len(old) == 3
    os.kill(spawner, signal.SIGKILL)  # e.g. an administrator's `zentry kill`
    with pytest.raises((NotFound, SystemFailure)):
        sb.exec(["true"])
    _wait(lambda: tid not in _containers(zentry_root), what="the dead template to be deleted")
    assert not any(psutil.pid_exists(pid) for pid in old.values())
    agent.wait_warm(60)
    assert len(templates(zentry_root)) == 1 and not set(old) & set(sandboxes(zentry_root))
    with client.claim("bb") as fresh:
        assert fresh.exec(["echo", "ok"]).stdout == b"ok\n"


def test_a_pool_with_a_user_namespace_answers_as_runc(make_agent, client_of, busybox_bundle, tmp_path):
    """The spawner makes its sandboxes inside the template's user namespace: the
    ids of the template's mounts are translated, and the sandbox answers as a
    runc container of the same bundle does."""
    import shutil

    runc = shutil.which("runc")
    if not runc:
        pytest.skip("runc not installed")
    userns = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "user")],
              "uidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}],
              "gidMappings": [{"containerID": 0, "hostID": 300000, "size": 65536}]}
    import tempfile
    from pathlib import Path

    # runc makes the container's root as the mapped root: the bundle must be reachable by it
    public = Path(tempfile.mkdtemp(prefix="zpu-", dir="/tmp"))
    os.chmod(public, 0o755)
    bundle = public / "b"
    shutil.copytree(busybox_bundle(["sleep", "1000000"], use_cli=False, linux=userns), bundle, symlinks=True)
    # owned by the mapped root, as a user-namespaced rootfs is (an overlay cannot copy up unmapped owners)
    subprocess.run(["chown", "-hR", "300000:300000", str(bundle / "rootfs")], check=True)
    agent = make_agent({"bb": {"bundle": str(bundle), "warm": 1, "max": 2}}).start()
    runc_root = tmp_path / "runc"
    subprocess.run([runc, "--root", str(runc_root), "run", "-d", "--bundle", str(bundle), "pu1"], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    try:
        with client_of(agent.endpoint).claim("bb") as sb:
            for argv in (["cat", "/proc/self/uid_map", "/proc/self/gid_map"], ["id"],
                         # (/dev/mqueue: group 0 in zentry's containers, nobody in runc's: docs/runc-differences.md)
                         ["sh", "-c", "ls -ln /dev | grep -v mqueue | cut -c1-34 | sort"], ["sh", "-c", "ls -lnd /dev/pts /dev/shm | cut -c1-34"],
                         ["sh", "-c", "touch /tmp/x; echo $?; touch /x; echo $?; ls -ln /x | cut -c1-34"],
                         ["sh", "-c", "grep -E '^(Cap(Prm|Eff|Bnd)|NoNewPrivs):' /proc/self/status"]):
                theirs = subprocess.run([runc, "--root", str(runc_root), "exec", "pu1", *argv], capture_output=True, timeout=60)
                ours = sb.exec(argv)
                assert (ours.exit_status, ours.stdout) == (theirs.returncode, theirs.stdout), (argv, ours, theirs)
            assert b"Seccomp:\t2" in sb.exec(["cat", "/proc/self/status"]).stdout
    finally:
        subprocess.run([runc, "--root", str(runc_root), "delete", "-f", "pu1"], capture_output=True, timeout=60)
        agent.stop()
        shutil.rmtree(public)
