"""The pool fault campaign: each process a pool is made of SIGKILLed while
sandboxes are warm and one is claimed with a command running, then:

1. the claimed handle's running exec, and every later call on it, fails with
   a clear error naming the sandbox or the node: never a hang (every wait
   here is bounded);
2. fail closed: no process of an old sandbox outlives what it depends on
   (its template's sentry serves its seccomp listener): each one is gone
   within seconds;
3. the pool recovers: it is warm again and a fresh claim runs a command;
4. nothing leaks: the leak guard (processes, mounts, cgroups, the --root),
   and no cgroup directory of the old template under ``/sys/fs/cgroup/*/zentry``;
5. ``zentry list`` on the agent's root shows the live template alone.

Victims: the template's controller, its sandbox actor (the sentry's host),
its init (the spawner), the claimed sandbox's init (each also with the
agent stalled by SIGSTOP meanwhile, so that it learns every end at once, in
any order), and the node agent itself (restarted on the same root, which
must clean up). The template's gofer is a victim too, but as for any
container its death ends nothing: there the command must run on and the
pool go on serving. A sandbox killed during its setup is held there
deterministically: the test traces the spawner (ptrace, helpers/trace.py,
no hook in zentry), so that its next sandbox stops at its birth or at a
chosen system call of its setup, and kills it there.

One agent per test (the leak guard judges each test alone); ~40 s in all.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from helpers import trace
from helpers.bundle import zentry_command
from helpers.faults import cgroup_pids, container_cgroups, gone, read_record
from helpers.pool import PoolAgent, sandboxes, templates
from helpers.wait import wait_for

pytestmark = pytest.mark.root

POOL = {"bb": {"warm": 2, "max": 4}}
#: a sandbox process may outlive what it depends on by this much at most
FAIL_CLOSED_WITHIN = 5.0
#: the running exec must have answered by then
EXEC_ANSWER_WITHIN = 20.0


@pytest.fixture
def agent(zentry_root, tmp_path, busybox_rootfs):
    pools = {name: dict(spec, rootfs=str(busybox_rootfs())) for name, spec in POOL.items()}
    made = PoolAgent(zentry_root, tmp_path, pools, name="fault").start()
    yield made
    live_templates = list(templates(made.root)) if made.proc is not None else []
    assert made.stop() == 0, made.log()
    assert not [d for tid in live_templates for d in template_cgroups(tid)]  # the sandboxes' cgroups went with it
    assert "Traceback" not in made.log(), made.log()
    assert not os.path.exists(made.root) or os.listdir(made.root) == [], os.listdir(made.root)


@pytest.fixture
def client(agent):
    from zentry.actors.pool.client import Client

    with Client(agent.endpoint) as c:
        yield c


def containers(root) -> list[str]:
    """Every container ``zentry list`` shows on ``root`` (any status)."""
    r = subprocess.run([*zentry_command(), "--root", str(root), "list", "--format", "json"], capture_output=True, text=True,
                       check=True, timeout=60)
    return sorted(c["id"] for c in json.loads(r.stdout or "[]"))


def template_cgroups(tid: str) -> list[str]:
    return sorted(d for d in glob.glob(f"/sys/fs/cgroup/*/zentry/{tid}") if os.path.isdir(d))


class Running:
    """``args`` run through the claimed sandbox ``ref`` in a thread of its own (its own client)."""

    def __init__(self, endpoint: str, ref: str, args: list[str]) -> None:
        self.error: BaseException | None = None
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(endpoint, ref, args), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str, ref: str, args: list[str]) -> None:
        from zentry.actors.pool.client import Client

        try:
            with Client(endpoint) as c:
                self.result = c.attach(ref).exec(args)
        except BaseException as err:  # judged by the test
            self.error = err

    def outcome(self, timeout: float) -> BaseException:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the running exec did not answer within {timeout}s of the fault"
        assert self.error is not None, f"the running exec ended without an error: {self.result}"
        return self.error


def running_in(sandbox_init: int, argv0: str, timeout: float = 10.0) -> int:
    """The pid of the process ``argv0`` that ``sandbox_init`` started."""
    def find() -> int:
        for p in _children(sandbox_init):
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0].endswith(argv0.encode()):
                        return p
            except OSError:
                pass
        return 0
    pid = wait_for(find, timeout=timeout)
    assert pid, f"{argv0} did not start in the sandbox"
    return pid


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def sentry_fds(pid: int) -> list[str]:
    """What the template's sandbox actor (the sentry) holds open, by kind (a listener is an anon_inode)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        out.append(target.split(":[")[0] if ":[" in target else target)
    return sorted(out)


def live(pids) -> list[int]:
    return sorted(p for p in pids if not gone(p))


class Scene:
    """A warm pool with one sandbox claimed and running ``sleep 30``: who is who."""

    def __init__(self, agent: PoolAgent, client, command=("sleep", "30")) -> None:
        from zentry.actors.pool.client import Sandbox

        self.agent = agent
        self.root = agent.root
        (self.tid, self.spawner), = templates(self.root).items()
        record = read_record(self.root, self.tid)
        self.actors = {name: int(record.get(f"{name}_pid") or 0) for name in ("controller", "sandbox", "gofer")}
        assert all(self.actors.values()), record
        self.sb: Sandbox = client.claim("bb", owner="fault")
        assert self.sb.exec(["true"]).exit_status == 0
        self.sandboxes = sandboxes(self.root)
        assert len(self.sandboxes) == 3 and self.sb.handle in self.sandboxes, self.sandboxes
        self.running = Running(agent.endpoint, self.sb.ref, list(command))
        self.sleep = running_in(self.sandboxes[self.sb.handle], "sleep")
        # every process of every sandbox (inits, the sleep) and the spawner: in the template's cgroups
        self.processes = cgroup_pids(container_cgroups(self.tid)) - set(self.actors.values())
        assert self.sleep in self.processes and set(self.sandboxes.values()) <= self.processes

    def victim(self, name: str) -> int:
        if name in self.actors:
            return self.actors[name]
        if name == "spawner":
            return self.spawner
        if name == "sandbox-init":
            return self.sandboxes[self.sb.handle]
        raise KeyError(name)


@contextlib.contextmanager
def stalled_agent(agent: PoolAgent, stalled: bool = True):
    """The agent stopped (SIGSTOP) inside the block, when ``stalled``."""
    if stalled:
        os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if stalled:
            os.kill(agent.proc.pid, signal.SIGCONT)


def assert_clear_error(err: BaseException, sb, *says: str) -> None:
    """A NotFound, SystemFailure or NodeUnreachable naming the sandbox, saying ``says``."""
    from zentry.bus.errors import NodeUnreachable, NotFound, SystemFailure

    assert isinstance(err, (NotFound, SystemFailure, NodeUnreachable)), repr(err)
    text = str(err)
    assert sb.handle in text and all(s in text for s in says), text


def assert_gone_within(pids, seconds: float, what: str) -> None:
    left = wait_for(lambda: not live(pids), timeout=seconds, step=0.02)
    assert left, f"{what} still alive {seconds}s after the fault: {live(pids)}"


def assert_recovered(agent: PoolAgent, client, old_tid: str) -> None:
    agent.wait_warm(60)
    with client.claim("bb") as fresh:
        assert fresh.exec(["echo", "ok"]).stdout == b"ok\n"
    assert wait_for(lambda: not template_cgroups(old_tid), timeout=30), template_cgroups(old_tid)
    assert wait_for(lambda: old_tid not in containers(agent.root), timeout=30), containers(agent.root)
    live_templates = templates(agent.root)
    assert len(live_templates) == 1 and old_tid not in live_templates, live_templates
    assert containers(agent.root) == sorted(live_templates)


TEMPLATE_VICTIMS = ["controller", "sandbox", "spawner"]


@pytest.mark.parametrize("victim, stalled", [*((v, False) for v in TEMPLATE_VICTIMS), ("spawner", True)],
                         ids=[*TEMPLATE_VICTIMS, "spawner-agent-stalled"])
def test_a_template_actor_killed_takes_its_sandboxes_and_is_replaced(victim, stalled, agent, client):
    """The template's controller, sentry host or init dies: every sandbox of it
    ends within seconds (none runs on with its listener unserved), the claimed
    handle fails clearly, and a new template serves the pool. With the agent
    stalled meanwhile (SIGSTOP), it learns every end at once, in any order."""
    from zentry.bus.errors import NotFound

    scene = Scene(agent, client)
    with stalled_agent(agent, stalled):
        os.kill(scene.victim(victim), signal.SIGKILL)
        killed = time.monotonic()
        assert_gone_within(scene.processes, FAIL_CLOSED_WITHIN, "sandbox processes")
    err = scene.running.outcome(EXEC_ANSWER_WITHIN - (time.monotonic() - killed))
    assert_clear_error(err, scene.sb, f"template {scene.tid}")
    with pytest.raises(NotFound) as later:
        scene.sb.exec(["true"], timeout=10)
    assert_clear_error(later.value, scene.sb, "node fault", f"template {scene.tid}")
    assert_recovered(agent, client, scene.tid)


@pytest.mark.parametrize("stalled", [False, True], ids=["agent-running", "agent-stalled"])
def test_a_sandbox_whose_init_is_killed_mid_command(stalled, agent, client):
    """The claimed sandbox's init dies (the OOM killer, an administrator): its
    command with it, the claimant is told, the other sandboxes stay warm. With
    the agent stalled meanwhile (SIGSTOP), it learns both ends at once: the
    spawner's report of the exit and the sandbox's channel's end."""
    from zentry.bus.errors import NotFound

    scene = Scene(agent, client)
    own = {scene.sandboxes[scene.sb.handle], scene.sleep}
    others = {sid: pid for sid, pid in scene.sandboxes.items() if sid != scene.sb.handle}
    with stalled_agent(agent, stalled):
        os.kill(scene.victim("sandbox-init"), signal.SIGKILL)
        assert_gone_within(own, FAIL_CLOSED_WITHIN, "the sandbox's processes")
        # reaped by the spawner: its report is waiting for the agent
        assert wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in own), timeout=FAIL_CLOSED_WITHIN)
    err = scene.running.outcome(EXEC_ANSWER_WITHIN)
    assert_clear_error(err, scene.sb, "its init exited")
    with pytest.raises(NotFound) as later:
        scene.sb.exec(["true"], timeout=10)
    assert_clear_error(later.value, scene.sb, "node fault", "its init exited")
    agent.wait_warm(60)
    assert others.items() <= sandboxes(agent.root).items()  # untouched
    with client.claim("bb") as fresh:
        assert fresh.exec(["echo", "ok"]).stdout == b"ok\n"
    assert containers(agent.root) == [scene.tid]
    assert wait_for(lambda: scene.sb.handle not in os.listdir(template_cgroups(scene.tid)[0]), timeout=30)


def test_the_gofer_killed_the_pool_serves_on(agent, client):
    """As a container's (docs/architecture.md): the gofer is not needed once the
    template runs. The running command ends normally, the claimed handle works,
    new sandboxes start (their mounts are copies of the template's table), and the
    agent's stop cleans everything (the fixture, the leak guard)."""
    scene = Scene(agent, client, ["sleep", "2"])
    os.kill(scene.victim("gofer"), signal.SIGKILL)
    scene.running.thread.join(EXEC_ANSWER_WITHIN)
    assert not scene.running.thread.is_alive() and scene.running.error is None, scene.running.error
    assert scene.running.result.exit_status == 0
    assert scene.sb.exec(["echo", "ok"]).stdout == b"ok\n"
    more = [client.claim("bb") for _ in range(3)]  # two warm, one started after the fault
    assert all(sb.exec(["true"]).exit_status == 0 for sb in more)
    for sb in [*more, scene.sb]:
        sb.release()
    agent.wait_warm(60)
    assert containers(agent.root) == [scene.tid] and list(templates(agent.root)) == [scene.tid]


SETUP_POINTS = {"birth": None, **{name: trace.SYSCALLS[name] for name in ("mount", "seccomp", "capset")}}


@pytest.mark.skipif(not trace.supported(), reason="the hold point is read from x86_64 registers")
@pytest.mark.parametrize("point", SETUP_POINTS)
def test_a_sandbox_killed_in_its_setup(point, agent, client):
    """A sandbox being made is held at a point of its setup (the test traces the
    spawner: at its birth, before it joins its cgroup; at its first mount, its
    cgroup joined; at its first seccomp filter, its root made; at capset, its
    listener handed to the sentry) and killed there: the start fails and is
    retried, its cgroup goes, the claim that caused it was served by a warm one."""
    (tid, spawner), = templates(agent.root).items()
    before = set(sandboxes(agent.root))
    sentry = int(read_record(agent.root, tid)["sandbox_pid"])
    fds = sentry_fds(sentry)
    hold = trace.HoldNextChild(spawner, SETUP_POINTS[point])
    try:
        sb = client.claim("bb")  # a warm one; its refill is the sandbox held
        child = hold.held(30)
        assert agent.status().pools[0]["starting"] == 1
        made = {d for d in os.listdir(template_cgroups(tid)[0]) if d.startswith("bb-")} - before - {sb.handle}
        assert len(made) == 1, made
        os.kill(child, signal.SIGKILL)
    finally:
        hold.close()
    assert_gone_within([child], FAIL_CLOSED_WITHIN, "the sandbox in setup")
    agent.wait_warm(60)
    assert sb.exec(["echo", "ok"]).stdout == b"ok\n"
    sb.release()
    current = set(sandboxes(agent.root))
    assert wait_for(lambda: not {d for d in made if d not in current and os.path.isdir(os.path.join(template_cgroups(tid)[0], d))},
                    timeout=30)
    with client.claim("bb") as fresh:
        assert fresh.exec(["true"]).exit_status == 0
    assert containers(agent.root) == [tid]
    # as many sandboxes as before, as many fds in the sentry: the held one's listener was dropped
    assert wait_for(lambda: len(sandboxes(agent.root)) == len(before) and sentry_fds(sentry) == fds, timeout=10), \
        (fds, sentry_fds(sentry), sandboxes(agent.root))


def test_the_agent_killed_and_restarted_on_its_root(agent, client):
    from zentry.bus.errors import NotFound

    scene = Scene(agent, client)
    agent.kill()
    killed = time.monotonic()
    assert_gone_within(scene.processes, FAIL_CLOSED_WITHIN, "sandbox processes")
    err = scene.running.outcome(EXEC_ANSWER_WITHIN - (time.monotonic() - killed))
    assert_clear_error(err, scene.sb, "stopped answering", agent.endpoint)
    agent.start()
    with pytest.raises(NotFound) as later:  # the restarted agent never knew it
        client.attach(scene.sb.ref).exec(["true"], timeout=10)
    assert_clear_error(later.value, scene.sb, "node fault", "no claimed sandbox")
    assert_recovered(agent, client, scene.tid)
