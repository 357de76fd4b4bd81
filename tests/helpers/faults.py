"""Fault injection against real containers: hold a lifecycle point, find who
plays which role there, kill one, and judge what follows.

Roles are discovered, not assumed from a process tree: the actors from
``<root>/<id>/state.json`` (controller_pid, sandbox_pid, gofer_pid,
init_pid/pid), the container's processes from its cgroups (every cgroup
directory whose path names the container id) and its pid namespace, and any
other zentry process started on the test's ``--root`` from its command line.

A point is held with a FIFO (`Fifo`): a hook, the container's process or the
CLI itself blocks reading it; the test knows the point is reached the
moment it can open the FIFO's write end (a reader is there), and releases it
by closing that end. No fixed sleeps.

The truth rule (`Observer`): whenever ``state`` says ``stopped`` (or the
container does not exist), no process of the container may be alive (able to
run again: a zombie or a process with a SIGKILL pending is not); once things
settle, a container ``state`` calls created/running/paused has a process.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers.leaks import CGROUP_ROOT, _walk_cgroups
from helpers.wait import wait_for

SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


# ---------------------------------------------------------------- processes

def proc_state(pid: int) -> str:
    """The one-letter state of ``pid`` ("" if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def dying(pid: int) -> bool:
    """A SIGKILL is pending for ``pid``: it never runs user code again."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return True
    pending = int(status.get("ShdPnd", "0").strip(), 16) | int(status.get("SigPnd", "0").strip(), 16)
    return bool(pending & SIGKILL_BIT)


def alive(pid: int) -> bool:
    """Able to run again: not gone, not a zombie, no SIGKILL pending (a frozen
    process with a pending SIGKILL dies the moment it is thawed)."""
    return not gone(pid) and not dying(pid)


def gone(pid: int) -> bool:
    return proc_state(pid) in ("", "Z", "X")


def ppid(pid: int) -> int:
    """The parent of ``pid`` (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def pid_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    """Direct children of ``pid``, oldest first."""
    found = []
    for p in all_pids():
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(fields[19]), p))  # starttime
    return [p for _, p in sorted(found)]


# ---------------------------------------------------------------- the container

def container_cgroups(cid: str) -> list[str]:
    """Every cgroup directory (any hierarchy) whose path names ``cid``."""
    return sorted(str(CGROUP_ROOT / rel) for rel in _walk_cgroups() if cid in rel.split("/", 1)[-1].split("/"))


def cgroup_pids(dirs: list[str]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        for dirpath, _, _ in os.walk(d):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    pids.update(int(x) for x in f.read().split())
            except (OSError, ValueError):
                pass
    return pids


def read_record(root: str, cid: str) -> dict:
    try:
        with open(os.path.join(root, cid, "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


@dataclass
class Roles:
    """Who plays what for one container at one moment (pids, 0 = nobody)."""

    root: str
    cid: str
    cli: int = 0
    record: dict = field(default_factory=dict)
    actors: dict[str, int] = field(default_factory=dict)   # controller, sandbox, gofer, init
    extras: list[int] = field(default_factory=list)         # other zentry processes on this root
    container: set[int] = field(default_factory=set)        # the container's processes
    pidns: set[str] = field(default_factory=set)            # the container's pid namespaces
    cgroups: list[str] = field(default_factory=list)
    pins: list[int] = field(default_factory=list)           # fds holding pidns open (inodes are reused)

    @classmethod
    def discover(cls, root: str, cid: str, cli: int = 0) -> "Roles":
        roles = cls(root=str(root), cid=cid, cli=cli)
        roles.refresh()
        return roles

    def refresh(self) -> "Roles":
        """Read the record, the cgroups and the processes again; what was seen
        before stays known (so that the end can check all of it is gone)."""
        rec = read_record(self.root, self.cid) or self.record
        self.record = rec
        for name in ("controller", "sandbox", "gofer", "init"):
            pid = int(rec.get(f"{name}_pid") or 0)
            if pid and name not in self.actors and not gone(pid):
                self.actors[name] = pid
        init = self.actors.get("init", 0)
        ns = pid_ns(init) if init else ""
        if ns and ns != pid_ns(os.getpid()) and ns not in self.pidns:
            try:  # an open nsfs fd keeps the namespace, so its inode names no other one later
                self.pins.append(os.open(f"/proc/{init}/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return self._refresh_processes()
            if pid_ns(init) == ns:
                self.pidns.add(ns)
        return self._refresh_processes()

    def _refresh_processes(self) -> "Roles":
        self.cgroups = sorted(set(self.cgroups) | set(container_cgroups(self.cid)))
        self.container |= self.container_pids()
        known = {self.cli, *self.actors.values(), *self.container}
        needle = f"--root {self.root} "
        for p in all_pids():
            if p not in known and p not in self.extras and p != os.getpid() and needle in cmdline(p) + " " and not gone(p):
                self.extras.append(p)
        return self

    def close(self) -> None:
        for fd in self.pins:
            os.close(fd)
        self.pins = []

    def container_pids(self) -> set[int]:
        """The container's processes now (alive or not): in its cgroups or pid namespaces,
        not an actor."""
        actors = {self.actors.get(n, 0) for n in ("controller", "sandbox", "gofer")} | {self.cli}
        pids = cgroup_pids(sorted(set(self.cgroups) | set(container_cgroups(self.cid))))
        if self.pidns:
            pids |= {p for p in all_pids() if pid_ns(p) in self.pidns}
        return pids - actors - {os.getpid()}

    def live_container(self) -> list[int]:
        pids = self.container_pids()
        self.container |= pids
        return sorted(p for p in pids if alive(p))

    def everyone(self) -> set[int]:
        return {self.cli, *self.actors.values(), *self.extras, *self.container} - {0}

    def role_of(self, pid: int) -> str:
        """What ``pid`` was for this container ("" if nothing known)."""
        for name, p in self.actors.items():
            if p == pid:
                return f"{name} of {self.cid}"
        if pid == self.cli:
            return f"cli of {self.cid}"
        if pid in self.container:
            return f"process of {self.cid}"
        if pid in self.extras:
            return "zentry call on the root"
        return ""

    def describe(self, pids, others: tuple["Roles", ...] = ()) -> str:
        """Each of ``pids``: state, parent, role (here or in ``others``) and command
        (after ``--root <root>``: the command word and the id, the part that tells
        one zentry call from another)."""
        out = []
        for p in sorted(pids):
            role = next((r for r in (roles.role_of(p) for roles in (self, *others)) if r), "")
            command = cmdline(p)
            command = command.split(f"--root {self.root} ", 1)[-1]
            out.append(f"{p} ({proc_state(p)}, ppid {ppid(p)}{', ' + role if role else ''}) {command[:80]}")
        return ", ".join(out) or "none"


# ---------------------------------------------------------------- holding a point

class Fifo:
    """A FIFO someone will block reading; `reached()` once they do, `release()`
    to let them go (EOF, or `data` first)."""

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        os.mkfifo(self.path, 0o666)
        self.fd = -1

    def reached(self, timeout: float = 30.0, abort=None) -> bool:
        """Wait for a reader (False on timeout, or when ``abort()`` turns true)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                return True
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
            if abort is not None and abort():
                return False
            time.sleep(0.005)
        return False

    def release(self, data: bytes = b"") -> None:
        if self.fd >= 0:
            if data:
                os.set_blocking(self.fd, True)
                try:
                    os.write(self.fd, data)
                except BrokenPipeError:
                    pass
            os.close(self.fd)
            self.fd = -1
        else:  # a reader that came late gets EOF; one yet to come finds no FIFO
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            except OSError:
                pass
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def hold_hook(fifo: os.PathLike | str, state_copy: os.PathLike | str | None = None) -> dict:
    """An OCI hook that blocks on ``fifo`` (paths as the hook sees them)."""
    save = f"cat > {state_copy}; " if state_copy else "cat > /dev/null; "
    return {"path": "/bin/sh", "args": ["sh", "-c", f"{save}cat {fifo} > /dev/null"]}


# ---------------------------------------------------------------- judging

class WrongState(AssertionError):
    pass


class Observer:
    """Asks ``state`` and checks it against the processes (see the module doc)."""

    def __init__(self, zentry, roles: Roles):
        self.zentry = zentry
        self.roles = roles
        self.seen: list[str] = []

    def status(self) -> str:
        r = self.zentry("state", self.roles.cid)
        if r.returncode != 0:
            if "does not exist" in r.stderr:
                return "absent"
            return f"error: {r.stderr.strip()}"
        return json.loads(r.stdout)["status"]

    def observe(self) -> str:
        status = self.status()
        self.seen.append(status)
        if status in ("stopped", "absent"):
            # the processes after the answer: one that lives now lived then
            live = self.roles.live_container()
            if live:
                raise WrongState(f"state says {status} while container processes live: {self.roles.describe(live)}")
        return status

    def settle(self, timeout: float = 20.0) -> str:
        """Observe until state and processes agree both ways; the last status
        (a paused container's processes may hold a SIGKILL until thawed: they
        still exist)."""
        last = {"status": ""}

        def agreed() -> bool:
            last["status"] = status = self.observe()
            if status in ("created", "running", "paused"):
                return any(not gone(p) for p in self.roles.container_pids())
            return status in ("stopped", "absent")

        if not wait_for(agreed, timeout=timeout, step=0.1):
            raise WrongState(f"state says {last['status']} but no container process lives (after {timeout}s; seen {self.seen})")
        return last["status"]


def kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen | None, timeout: float = 60.0) -> int | None:
    """Wait for an in-flight CLI; a hang is a failure of its own."""
    if proc is None:
        return None
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{' '.join(map(str, proc.args[-3:]))} still running {timeout}s after the fault") from None
