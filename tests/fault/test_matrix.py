"""The fault matrix: every actor and the CLI SIGKILLed at every lifecycle point
we can hold, then `state` must tell the truth, `delete` must clean up and
nothing may leak.

A point is held deterministically (helpers/faults.py): a hook of each kind,
the container's own process or the CLI's read of config.json blocks on a
FIFO; the test kills its victim while the point is held, then releases it.
Roles are found from state.json, the container's cgroups and pid
namespace, and the zentry processes on the test's --root: not from a
process tree, which the design may change.

Each case asserts, in order:
1. the command in flight (if not the victim) ends, whatever its outcome: no hang;
2. `state` never says stopped (or "does not exist") while a process of the
   container lives, and settles on an answer the processes agree with;
3. `delete` (`delete --force` when state says running or paused; it must
   answer 0 also when the container no longer exists) removes it: state
   then says it does not exist, every process ever seen for the case is
   gone, and no cgroup names the container;
4. the leak guard (tests/conftest.py) finds no process, mount, cgroup or
   file left.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from helpers.bundle import zentry_command
from helpers.faults import Fifo, Observer, Roles, alive, children, cmdline, container_cgroups, finish, gone, hold_hook, kill
from helpers.wait import wait_for

pytestmark = pytest.mark.root

CREATE_HOOKS = ("prestart", "createRuntime", "createContainer")
START_HOOKS = ("startContainer", "poststart")


@dataclass
class Held:
    """A container held at a point: the command in flight (if any) and how to let it go."""

    cid: str
    proc: subprocess.Popen | None = None
    fifos: list[Fifo] = field(default_factory=list)
    release_data: bytes = b""
    roles: Roles | None = None

    def release(self) -> None:
        for fifo in self.fifos:
            fifo.release(self.release_data)


class Case:
    """What a point needs: the zentry fixture, bundles, a private dir, the id."""

    def __init__(self, zentry, busybox_bundle, tmp_path: Path, cid: str):
        self.zentry = zentry
        self.bundle = busybox_bundle
        self.tmp = tmp_path
        self.cid = cid
        self.procs: list[subprocess.Popen] = []

    def spawn(self, *args: str) -> subprocess.Popen:
        """The CLI in the background (stdio to files: a container keeps create's)."""
        out = open(self.tmp / f"cli{len(self.procs)}.out", "wb")
        proc = subprocess.Popen([*zentry_command(), "--root", str(self.zentry.root), *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def ok(self, *args: str) -> None:
        r = self.zentry(*args)
        assert r.returncode == 0, f"zentry {' '.join(args)}: {r.stderr}"

    def reach(self, held: Held, fifo: Fifo) -> Held:
        held.fifos.append(fifo)
        proc = held.proc
        if not fifo.reached(abort=(lambda: proc.poll() is not None) if proc else None):
            out = (self.tmp / f"cli{len(self.procs) - 1}.out").read_text() if proc else ""
            raise AssertionError(f"the point was never reached ({fifo.path}); CLI: {out}")
        held.roles = Roles.discover(self.zentry.root, self.cid, cli=proc.pid if proc else 0)
        return held


# ---------------------------------------------------------------- points

def at_prefork(case: Case) -> Held:
    """create has forked its blank actors and blocks reading config.json (a FIFO)."""
    bundle = case.bundle(["true"])
    config = bundle / "config.json"
    text = config.read_bytes()
    config.unlink()
    fifo = Fifo(config)
    held = Held(case.cid, case.spawn("create", "--bundle", str(bundle), case.cid), release_data=text)
    case.reach(held, fifo)
    assert wait_for(lambda: len(children(held.proc.pid)) >= 3), children(held.proc.pid)
    for i, pid in enumerate(children(held.proc.pid)[:3]):
        held.roles.actors[f"blank{i}"] = pid
    return held


def in_hook(kind: str) -> Callable[[Case], Held]:
    def point(case: Case) -> Held:
        if kind == "startContainer":  # resolved and run inside the container
            bundle = case.bundle(["sleep", "1000"], hooks={kind: [hold_hook("/hold")]})
            fifo = Fifo(bundle / "rootfs" / "hold")
        else:
            fifo = Fifo(case.tmp / "hold")
            bundle = case.bundle(["true"] if kind in CREATE_HOOKS else ["sleep", "1000"],
                                 hooks={kind: [hold_hook(fifo.path)]})
        if kind in CREATE_HOOKS:
            return case.reach(Held(case.cid, case.spawn("create", "--bundle", str(bundle), case.cid)), fifo)
        if kind in START_HOOKS:
            case.ok("create", "--bundle", str(bundle), case.cid)
            return case.reach(Held(case.cid, case.spawn("start", case.cid)), fifo)
        case.ok("run", "-d", "--bundle", str(bundle), case.cid)  # poststop
        return case.reach(Held(case.cid, case.spawn("delete", "--force", case.cid)), fifo)

    point.__name__ = f"in_{kind}"
    return point


def at_status(status: str) -> Callable[[Case], Held]:
    def point(case: Case) -> Held:
        bundle = case.bundle(["sleep", "1000"])
        case.ok(*(("create",) if status == "created" else ("run", "-d")), "--bundle", str(bundle), case.cid)
        if status == "paused":
            case.ok("pause", case.cid)
        held = Held(case.cid)
        held.roles = Roles.discover(case.zentry.root, case.cid)
        return held

    point.__name__ = f"at_{status}"
    return point


def in_foreground_run(case: Case) -> Held:
    """A foreground run whose container blocks reading a FIFO."""
    bundle = case.bundle(["cat", "/hold"])
    fifo = Fifo(bundle / "rootfs" / "hold")
    return case.reach(Held(case.cid, case.spawn("run", "--bundle", str(bundle), case.cid)), fifo)


def in_exec(detach: bool) -> Callable[[Case], Held]:
    def point(case: Case) -> Held:
        bundle = case.bundle(["sleep", "1000"])
        fifo = Fifo(bundle / "rootfs" / "hold")
        case.ok("run", "-d", "--bundle", str(bundle), case.cid)
        if detach:
            case.ok("exec", "-d", case.cid, "cat", "/hold")
            return case.reach(Held(case.cid), fifo)
        return case.reach(Held(case.cid, case.spawn("exec", case.cid, "cat", "/hold")), fifo)

    point.__name__ = "in_exec_detached" if detach else "in_exec"
    return point


ACTORS = ("controller", "sandbox", "gofer")
POINTS: dict[str, tuple[Callable[[Case], Held], tuple[str, ...]]] = {
    "prefork": (at_prefork, ("cli", "blank0", "blank1", "blank2")),
    **{kind: (in_hook(kind), ("cli", *ACTORS, "init")) for kind in (*CREATE_HOOKS, *START_HOOKS)},
    "poststop": (in_hook("poststop"), ("cli", *ACTORS)),
    **{status: (at_status(status), (*ACTORS, "init")) for status in ("created", "running", "paused")},
    "run": (in_foreground_run, ("cli", "forwarder", *ACTORS, "init")),
    "exec": (in_exec(False), ("cli", "forwarder", *ACTORS, "init", "exec")),
    "exec-detached": (in_exec(True), ("forwarder", *ACTORS, "init", "exec")),
}
CASES = [(point, victim) for point, (_, victims) in POINTS.items() for victim in victims]


def victim_pid(held: Held, victim: str) -> int:
    roles = held.roles
    if victim == "cli":
        return held.proc.pid
    if victim == "forwarder":
        extras = [p for p in roles.extras if not gone(p)]
        if not extras:
            pytest.skip("no forwarder process apart from the CLI at this point")
        return extras[0]
    if victim == "exec":
        execs = [p for p in roles.live_container() if "cat /hold" in cmdline(p)]
        assert execs, roles.describe(roles.live_container())
        return execs[0]
    pid = roles.actors.get(victim, 0)
    if not pid or gone(pid):
        pytest.skip(f"no {victim} process at this point")
    return pid


# ---------------------------------------------------------------- the test

@pytest.mark.parametrize("point,victim", CASES, ids=[f"{p}-{v}" for p, v in CASES])
def test_fault(point, victim, zentry, busybox_bundle, tmp_path, leak_guard):
    cid = f"flt{uuid.uuid4().hex[:8]}"
    leak_guard.add_needle(cid)  # its cgroups are named after it
    case = Case(zentry, busybox_bundle, tmp_path, cid)
    held = None
    try:
        held = POINTS[point][0](case)
        roles = held.roles
        pid = victim_pid(held, victim)
        kill(pid)
        if victim == "cli":
            held.proc.wait(10)
        assert wait_for(lambda: not alive(pid), timeout=10), f"{victim} {pid} survived SIGKILL"
        observer = Observer(zentry, roles)
        roles.refresh()
        observer.observe()  # right after the fault
        held.release()
        if victim != "cli":
            finish(held.proc)
        roles.refresh()
        status = observer.settle()
        # delete as state says: plain for created/stopped, --force when it runs
        if status in ("created", "stopped"):
            r = zentry("delete", cid)
        else:
            r = zentry("delete", "--force", cid)
        assert r.returncode == 0, f"delete after state said {status}: {r.stderr}"
        assert observer.status() == "absent", "deleted, yet state still shows it"
        everyone = roles.refresh().everyone() - {os.getpid()}
        assert wait_for(lambda: all(gone(p) for p in everyone), timeout=10), \
            f"left after delete: {roles.describe(p for p in everyone if not gone(p))}"
        assert wait_for(lambda: not container_cgroups(cid), timeout=5), container_cgroups(cid)
        assert zentry("list", "-q").stdout.split() == []
    finally:
        if held is not None:
            held.release()
        for proc in case.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if held is not None and held.roles is not None and zentry("list", "-q").stdout.split():
            zentry("delete", "--force", cid)  # a skipped or failed case: leave the next one a clean host
