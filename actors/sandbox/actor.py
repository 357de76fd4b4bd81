"""The sandbox actor: the container inits' namespaces and cgroups, their exits, the sentry.

It hosts the sentry (the seccomp listeners of every container process) and
supervises, but it is nobody's parent: each container's init descends from
its own ``create`` call (see ``init.intermediate_main``), which connects to
``fds.sock``; on Spawn the sandbox sends that connection the prepared root,
learns the init's pid, puts it in the container's cgroup and drives its
setup (``go``, the listener, ``ready``, ``start``) over the same connection.
Exec'd processes hand their listener (with their pid) on ``fds.sock`` too.

Exits are learnt with a pidfd per process and statuses from the kernel's
proc connector (``exits.py``). When the last container has exited the actor
stops. If the controller dies, the sandbox kills every container and stops
(fail closed: a container nobody manages must not run on).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import time

import zmq

from zentry.actors.oci import STRACE_ANNOTATION
from zentry.actors.sandbox.exits import ExitStatuses
from zentry.actors.spawn import exit_status, release_from_parent, report_ready
from zentry.bus import codec, fdpass
from zentry.bus.actor import Actor, Request, handles
from zentry.bus.endpoints import Endpoints
from zentry.bus.envelope import Envelope
from zentry.bus.errors import NotFound, SystemFailure, Timeout, WrongState, ZentryError, from_wire
from zentry.bus.log import get_logger
from zentry.bus.message import Message
from zentry.bus.messages import (
    Destroy,
    Exited,
    Freeze,
    Ok,
    ProcessExited,
    Processes,
    ProcessList,
    ProcessStarted,
    Release,
    ReportExit,
    SetResources,
    SetStrace,
    Signal,
    SignalSent,
    Spawn,
    Spawned,
    Stats,
    StatsReply,
    Syscall,
    Thaw,
)
from zentry.sentry.abi import libc

log = get_logger("zentry.sandbox")


#: How long an init may take to get ready (namespaces, mounts, filter).
SPAWN_TIMEOUT = 30.0
#: How long a killed container process may take to exit.
KILL_TIMEOUT = 10.0
#: Exit status recorded when the kernel did not report one.
LOST_STATUS = 128 + signal.SIGKILL


class Box:
    """One container as the sandbox holds it."""

    __slots__ = ("container_id", "config", "pid", "pidfd", "chan", "cgroup", "exit_status", "sandboxes")

    def __init__(self, container_id: str, config: dict, pid: int, pidfd: int, chan: socket.socket | None, cgroup: object | None,
                 exit_status: int | None = None) -> None:
        self.container_id = container_id
        self.config = config
        self.pid = pid
        self.pidfd = pidfd
        self.chan = chan
        self.cgroup = cgroup
        self.exit_status = exit_status
        #: a pool's template: the views of the sandboxes in the cgroups below its own
        self.sandboxes: SandboxViews | None = None


class Sandbox(Actor):
    name = "sandbox"

    def __init__(self, endpoints: Endpoints, *, sandbox_id: str, ready_fd: int, controller_pid: int = 0) -> None:
        super().__init__(endpoints, sandbox_id=sandbox_id)
        self.ready_fd = ready_fd
        self.controller_pid = controller_pid
        self.boxes: dict[str, Box] = {}
        self.exit_code = 0
        self.ran_any = False
        self.controller: zmq.Socket | None = None
        self.sentry = None
        self.fd_listener: socket.socket | None = None
        self.exits: ExitStatuses | None = None
        #: connections of intermediates (init.intermediate_main) waiting for their Spawn
        self.pending_inits: dict[str, socket.socket] = {}
        #: exec'd processes: pidfd -> (container id, pid)
        self.execs: dict[int, tuple[str, int]] = {}

    # --- lifecycle -------------------------------------------------------------
    def on_start(self) -> None:
        # Before any container process can exit: statuses come from here.
        self.exits = ExitStatuses()
        if self.exits.available:
            self.watch_fd(self.exits.fileno(), lambda _fd: self.exits.drain())
        if self.controller_pid:
            # Fail closed: without its controller nobody manages (or stops,
            # or deletes) these containers; they die with it.
            self.stop_with(self.controller_pid, "controller", self._on_controller_gone)
        # Exit reports to the controller are fire-and-forget: the sandbox never
        # blocks on the controller (which may be blocked on us).
        self.controller = self.ctx.socket(zmq.DEALER)
        self.controller.setsockopt(zmq.LINGER, 2000)
        self.controller.connect(self.endpoints.actor("controller"))
        self.fd_listener = fdpass.listen(self.endpoints.fd_socket)
        self.fd_listener.setblocking(False)  # readiness may be stale: accept never waits
        self.watch_fd(self.fd_listener.fileno(), self._on_fd_connection)
        report_ready(self.ready_fd)
        # After the report, so this overlaps the controller's and the gofer's
        # part of `create` (the Spawn request waits in our queue meanwhile):
        # the sentry, what a container init needs before it pivots, and
        # zentry's BPF program, compiled once here and inherited by every init
        # we fork. A sentry that fails to start fails this actor, and with it
        # the Spawn: no container runs without its sentry.
        self._start_sentry()
        prepare_sandbox()

    def on_stop(self) -> None:
        # Each step on its own: one failing must not leave the others undone.
        for box in list(self.boxes.values()):
            _try(lambda box=box: self._kill_and_wait(box))
        for chan in self.pending_inits.values():
            _try(chan.close)
        if self.exits is not None:
            _try(self.exits.close)
        if self.sentry is not None:
            _try(self.sentry.stop)
        if self.fd_listener is not None:
            _try(self.fd_listener.close)
        if self.controller is not None:
            _try(self.controller.close)
        pub = getattr(self, "_sentry_pub", None)
        if pub is not None:
            _try(pub.close)

    def _start_sentry(self) -> None:
        from zentry.sentry.kernel import Sentry

        self.sentry = Sentry(on_event=self._on_syscall_event, on_fatal=self._on_sentry_fatal)
        self.sentry.start()

    def _on_syscall_event(self, event: dict) -> None:
        # Called on the sentry's thread: it owns its own publisher.
        pub = getattr(self, "_sentry_pub", None)
        if pub is None:
            from zentry.bus.events import Publisher

            pub = self._sentry_pub = Publisher(self.ctx, self.endpoints.events_in, sandbox_id=self.sandbox_id, actor="sentry")
        pub.publish(
            Syscall(
                container_id=str(event.get("container", "")),
                pid=int(event.get("pid", 0)),
                tid=int(event.get("tid", 0)),
                syscall=str(event.get("syscall", "")),
                args=list(event.get("args", [])),
                result=int(event.get("result", 0)),
                errno=str(event.get("errno", "") or ""),
                duration_ns=int(event.get("duration_ns", 0)),
                continued=bool(event.get("continued", False)),
            )
        )

    def _on_controller_gone(self) -> None:
        if self.boxes:
            log.error("the controller died: killing containers %s", ", ".join(self.boxes))

    def _on_sentry_fatal(self, container_id: str, exc: BaseException) -> None:
        # Fail closed: a container whose syscalls nobody serves must not run on.
        log.error("sentry failed for %s: %s; killing the container", container_id, exc)
        box = self.boxes.get(container_id)
        if box is not None:
            try:
                libc.pidfd_send_signal(box.pidfd, signal.SIGKILL)
            except OSError:
                pass
            if box.cgroup is not None:
                try:
                    box.cgroup.kill_all(signal.SIGKILL)
                except Exception:
                    pass

    def _add_listener(self, container_id: str, fd: int, config: dict, names: dict | None = None):
        """Hand a listener to the sentry; returns the container's view (None without a sentry).

        In a pool's template, the listener of one of its sandboxes (``names["pid"]``, the
        sandbox's init, in a cgroup below the template's) gets that sandbox's view."""
        if self.sentry is None:
            os.close(fd)
            return None
        box = self.boxes.get(container_id)
        pid = int((names or {}).get("pid") or 0)
        view = box.sandboxes.view_for(pid) if box is not None and box.sandboxes is not None and pid else None
        if view is None:
            view = self._view(container_id, config, names)
        self.sentry.add_listener(fd, view)
        return view

    def _view(self, container_id: str, config: dict, names: dict | None = None):
        """The container's view: its names and its cgroup's limits (read now)."""
        box = self.boxes.get(container_id)
        return container_view(
            container_id, box.cgroup if box is not None else None,
            # the tracee's uts namespace as it was when it loaded the filter
            # (a namespace joined by path has no hostname in the config)
            hostname=str((names or {}).get("nodename") or config.get("hostname") or ""),
            domainname=str((names or {}).get("domainname") or config.get("domainname") or ""),
            init_pid=box.pid if box is not None else None)

    # --- the fd socket: intermediates of new inits, listeners of exec'd processes ---
    def _on_fd_connection(self, _fd: int) -> None:
        try:
            conn, _ = self.fd_listener.accept()
        except BlockingIOError:
            return  # already taken (by _init_channel, after the loop saw it readable)
        conn.settimeout(5)
        keep = False
        try:
            header, fds = fdpass.recv_fds(conn)
            cid = str(header.get("container_id", ""))
            if header.get("kind") == "init" and not fds and cid not in self.boxes:
                # An intermediate of create: its connection becomes the init's channel.
                old = self.pending_inits.pop(cid, None)
                if old is not None:
                    old.close()
                self.pending_inits[cid] = conn
                keep = True
            elif header.get("kind") == "listener" and fds and cid in self.boxes:
                self._add_listener(cid, fds[0], self.boxes[cid].config, header)
                if header.get("pid"):
                    self._watch_exec(cid, int(header["pid"]), [str(a) for a in header.get("args") or []])
                conn.send(b"ok")
            else:
                for fd in fds:
                    os.close(fd)
                conn.send(b"error unknown container or message")
        except (OSError, EOFError, ZentryError) as err:
            log.warning("fd handover failed: %s", err)
        finally:
            if not keep:
                conn.close()

    def _watch_exec(self, container_id: str, pid: int, args: list[str]) -> None:
        """An exec'd process (stopped before execve): its start and exit go on the tap."""
        try:
            pidfd = libc.pidfd_open(pid)
        except OSError:
            return
        self.exits.watch(pid)
        self.execs[pidfd] = (container_id, pid)
        self.watch_fd(pidfd, self._on_exec_exit)
        self.publish(ProcessStarted(container_id=container_id, pid=pid, args=args, exec=True))

    def _on_exec_exit(self, pidfd: int) -> None:
        container_id, pid = self.execs.pop(pidfd)
        self.unwatch_fd(pidfd)
        os.close(pidfd)
        raw = self.exits.status(pid)
        self.exits.forget(pid)
        self.publish(ProcessExited(container_id=container_id, pid=pid, exit_status=exit_status(raw) if raw is not None else LOST_STATUS))

    def _init_channel(self, container_id: str) -> socket.socket:
        """The connection of ``container_id``'s intermediate, waiting for it if needed."""
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while container_id not in self.pending_inits:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"the create call of container {container_id!r} did not connect within {SPAWN_TIMEOUT:g}s")
            if select.select([self.fd_listener], [], [], left)[0]:
                self._on_fd_connection(self.fd_listener.fileno())
        return self.pending_inits.pop(container_id)

    # --- requests ----------------------------------------------------------------
    def box(self, container_id: str) -> Box:
        try:
            return self.boxes[container_id]
        except KeyError:
            raise NotFound(f"sandbox has no container {container_id!r}") from None

    @handles(Spawn)
    def spawn(self, msg: Spawn, req: Request) -> Message:
        from zentry.actors.sandbox.cgroups import Cgroup

        if msg.container_id in self.boxes:
            raise WrongState(f"container {msg.container_id!r} already has an init")
        if (msg.config.get("annotations") or {}).get(STRACE_ANNOTATION) == "true" and self.sentry is not None:
            # `zentry --strace create|run`: traced from the init's first call,
            # its opens trapped too (the filter the init inherits, compiled here)
            self.sentry.set_strace(True)
            from zentry.sentry import filter as sentry_filter

            sentry_filter.zentry_bpf(trace=True)
        linux = msg.config.get("linux") or {}
        cgroup = Cgroup.for_container(linux.get("cgroupsPath"), msg.container_id)
        # The kernel's first-migration wait (see prime_attach) runs while the
        # init is forked; the init waits for "go", sent once it is in the
        # cgroup. (Making the cgroup waits for that wait: it needs the
        # cgroup mutex the priming write holds.)
        cgroup.prime_attach()
        chan, pid = self._start_init(msg)
        try:
            pidfd = libc.pidfd_open(pid)
        except OSError:
            chan.close()
            raise SystemFailure(f"container {msg.container_id!r}: the init exited during setup") from None
        box = Box(container_id=msg.container_id, config=msg.config, pid=pid, pidfd=pidfd, chan=chan, cgroup=cgroup)
        self.boxes[msg.container_id] = box
        try:
            cgroup.create()
            cgroup.apply(with_default_devices(linux))
            cgroup.add(pid)
            chan.send(b"go %d" % pid)
            self._await_ready(box)
        except BaseException:
            self._kill_and_wait(box)
            raise
        self.watch_fd(pidfd, lambda _fd, cid=msg.container_id: self._on_exit(cid))
        if not self.ran_any:
            release_from_parent()  # a container exists: outlive create from now on
        self.ran_any = True
        self.publish(ProcessStarted(container_id=msg.container_id, pid=pid, args=list((msg.config.get("process") or {}).get("args") or [])), parent=req.id)
        return Spawned(pid=pid, cgroup_procs=_cgroup_procs(pid))

    def _start_init(self, msg: Spawn) -> tuple[socket.socket, int]:
        """Have the container's intermediate (a child of its create) fork the init.

        Returns the init's channel and pid; the pid is watched for its exit
        status before the init can run anything of the container's.
        """
        from zentry.actors.oci.userns import write_mappings

        chan = self._init_channel(msg.container_id)
        try:
            chan.settimeout(SPAWN_TIMEOUT)
            intermediate = struct.unpack("3i", chan.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
            chan.send(b"spawn " + json.dumps({"rootfs": msg.rootfs, "gofer_pid": msg.gofer_pid}).encode())
            line = chan.recv(4096).decode(errors="replace")
            if line == "userns":
                # the intermediate made a new user namespace: we map it from outside
                write_mappings(intermediate, msg.config)
                chan.send(b"mapped")
                line = chan.recv(4096).decode(errors="replace")
            if not line.startswith("pid "):
                _raise_line(line, "container init did not start")
            pid = int(line[4:])
            self.exits.watch(pid)
            return chan, pid
        except BaseException:
            chan.close()  # an init or intermediate still waiting on it sees EOF and exits
            raise

    def _await_ready(self, box: Box) -> None:
        deadline = time.monotonic() + SPAWN_TIMEOUT
        chan = box.chan
        view = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"container {box.container_id!r} init did not get ready within {SPAWN_TIMEOUT:g}s")
            chan.settimeout(left)
            data, fds, _flags, _ = socket.recv_fds(chan, 65536, 4)
            if fds:
                header = codec.unpack(data)
                if header.get("kind") == "listener":
                    view = self._add_listener(box.container_id, fds[0], box.config, header)
                    for extra in fds[1:]:
                        os.close(extra)
                else:
                    for fd in fds:
                        os.close(fd)
                continue
            line = data.decode(errors="replace")
            if line == "views":
                # a pool's template (whose init loads no filter): views without a listener,
                # each of its sandboxes shown its own cgroup's limits
                view = self._view(box.container_id, box.config)
                box.sandboxes = SandboxViews(box.cgroup, view)
                continue
            if line == "ready":
                if view is not None:
                    # the live /proc and /sys views, bound into the container's mount namespace
                    from zentry.sentry import views

                    try:
                        views.attach(box.pid, view, box.sandboxes.view_for if box.sandboxes is not None else None)
                    except OSError as err:
                        raise SystemFailure(f"container {box.container_id!r}: {err.strerror or err}") from err
                return
            _raise_line(line, f"container {box.container_id!r} init exited during setup")

    @handles(Release)
    def release(self, msg: Release, req: Request) -> Message:
        box = self.box(msg.container_id)
        if box.chan is None:
            raise WrongState(f"container {msg.container_id!r} was already started")
        chan, box.chan = box.chan, None
        try:
            chan.send(b"start")
            chan.settimeout(10)
            # The channel is close-on-exec: EOF means execve succeeded.
            line = chan.recv(4096).decode(errors="replace")
        except OSError as err:
            raise SystemFailure(f"cannot start container {msg.container_id!r}: {err}") from err
        finally:
            chan.close()
        if line:
            _raise_line(line, "container init failed")
        return Ok()

    @handles(Signal)
    def signal(self, msg: Signal, req: Request) -> Message:
        box = self.box(msg.container_id)
        pids = [box.pid]
        if msg.all and box.cgroup is not None:
            pids = box.cgroup.pids()
            box.cgroup.kill_all(msg.signal)
            if msg.signal == signal.SIGKILL:
                _try(box.cgroup.thaw)
        elif box.exit_status is None:
            try:
                libc.pidfd_send_signal(box.pidfd, msg.signal)
            except ProcessLookupError:
                pass
        self.publish(SignalSent(container_id=msg.container_id, signal=msg.signal, pids=pids), parent=req.id)
        return Ok()

    @handles(Freeze)
    def freeze(self, msg: Freeze, req: Request) -> Message:
        self.box(msg.container_id).cgroup.freeze()
        return Ok()

    @handles(Thaw)
    def thaw(self, msg: Thaw, req: Request) -> Message:
        self.box(msg.container_id).cgroup.thaw()
        return Ok()

    @handles(SetResources)
    def set_resources(self, msg: SetResources, req: Request) -> Message:
        self.box(msg.container_id).cgroup.update(msg.resources)
        return Ok()

    @handles(Processes)
    def processes(self, msg: Processes, req: Request) -> Message:
        import psutil  # only `ps` needs it (20 ms to import on every CLI call otherwise)

        box = self.box(msg.container_id)
        out = []
        for pid in sorted(box.cgroup.pids()):
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    out.append(
                        {
                            "pid": pid,
                            "ppid": p.ppid(),
                            "uid": p.uids().real,
                            "stime": int(p.create_time()),
                            "time": sum(p.cpu_times()[:2]),
                            "cmd": " ".join(p.cmdline()) or p.name(),
                            "tty": p.terminal() or "?",
                        }
                    )
            except psutil.Error:
                continue
        return ProcessList(processes=out)

    @handles(Stats)
    def stats(self, msg: Stats, req: Request) -> Message:
        return StatsReply(stats=self.box(msg.container_id).cgroup.stats())

    @handles(SetStrace)
    def set_strace(self, msg: SetStrace, req: Request) -> Message:
        if self.sentry is not None:
            self.sentry.set_strace(msg.on)
        return Ok()

    @handles(Destroy)
    def destroy(self, msg: Destroy, req: Request) -> Message:
        box = self.boxes.get(msg.container_id)
        if box is None:
            return Ok()
        status = self._kill_and_wait(box)
        return Exited(container_id=msg.container_id, exit_status=status)

    # --- exits ------------------------------------------------------------------
    def _kill_and_wait(self, box: Box) -> int:
        """Kill every process of ``box`` and wait (bounded) for its init to exit."""
        if box.exit_status is None:
            if box.cgroup is not None:
                _try(lambda: box.cgroup.kill_all(signal.SIGKILL))
                _try(box.cgroup.thaw)
            try:
                libc.pidfd_send_signal(box.pidfd, signal.SIGKILL)
            except OSError:
                pass
            if not select.select([box.pidfd], [], [], KILL_TIMEOUT)[0]:
                log.error("container %s: init %d did not exit %gs after SIGKILL", box.container_id, box.pid, KILL_TIMEOUT)
            box.exit_status = self._status_of(box.pid)
        self._finish(box)
        return box.exit_status

    def _status_of(self, pid: int) -> int:
        raw = self.exits.status(pid) if self.exits is not None else None
        if raw is None:
            log.warning("no exit status for pid %d: recording %d", pid, LOST_STATUS)
            return LOST_STATUS
        return exit_status(raw)

    def _on_exit(self, container_id: str) -> None:
        box = self.boxes.get(container_id)
        if box is None:
            return
        box.exit_status = self._status_of(box.pid)
        self._finish(box)

    def _finish(self, box: Box) -> None:
        """After an init exited: cgroup gone, controller told, maybe the sandbox ends."""
        if self.boxes.pop(box.container_id, None) is None:
            return
        self.unwatch_fd(box.pidfd)
        os.close(box.pidfd)
        if self.exits is not None:
            self.exits.forget(box.pid)
        if box.chan is not None:
            box.chan.close()
        if box.cgroup is not None:
            _try(box.cgroup.destroy)
        self.publish(ProcessExited(container_id=box.container_id, pid=box.pid, exit_status=box.exit_status))
        report = Envelope.wrap(ReportExit(container_id=box.container_id, exit_status=box.exit_status), sender=self.name)
        try:
            self.controller.send(report.encode(), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.exit_code = box.exit_status
        if not self.boxes and self.ran_any:
            self.stop("last container exited")


#: Devices every container may use whatever its rules say (runtime-linux.md's
#: default devices, the pty multiplexer and the ptys), as runc allows them.
DEFAULT_ALLOWED_DEVICES = [
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},  # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},  # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},  # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},  # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},  # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},  # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},  # pts/*
]


def with_default_devices(linux: dict) -> dict:
    """linux.resources with the default devices and linux.devices allowed after the rules."""
    resources = dict(linux.get("resources") or {})
    rules = list(resources.get("devices") or [])
    if rules:
        extra = [
            {"allow": True, "type": d.get("type", "c"), "major": d["major"], "minor": d["minor"], "access": "rwm"}
            for d in linux.get("devices") or []
            if d.get("type") in ("c", "b", "u") and "major" in d and "minor" in d
        ]
        resources["devices"] = rules + DEFAULT_ALLOWED_DEVICES + extra
    return resources


def _raise_line(line: str, fallback: str) -> None:
    if line.startswith("error "):
        _word, code, message = (line.split(" ", 2) + ["", ""])[:3]
        raise from_wire(code, message)
    raise SystemFailure(fallback)


def _try(fn) -> None:
    try:
        fn()
    except Exception as err:  # cleanup paths: report, carry on
        log.warning("cleanup step failed: %s", err)


def _call(obj: object | None, name: str):
    fn = getattr(obj, name, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:
        return None


def container_view(container_id: str, cg, *, hostname: str = "", domainname: str = "", init_pid: int | None = None):
    """A ``ContainerView`` with the limits of cgroup ``cg`` (None: none), read now."""
    from zentry.sentry.kernel import ContainerView

    cpus = _call(cg, "cpu_quota")  # CPUs' worth, or None
    return ContainerView(
        container_id=container_id,
        hostname=hostname,
        domainname=domainname,
        memory_limit_bytes=_call(cg, "memory_limit"),
        cpu_quota_us=int(cpus * 100_000) if cpus else None,
        cpu_period_us=100_000 if cpus else None,
        cpuset=",".join(str(c) for c in _call(cg, "cpuset") or []) or None,
        init_pid=init_pid,
        memory_usage_bytes=(lambda cg=cg: _memory_usage(cg)) if cg is not None else None,
    )


class SandboxViews:
    """The views of a pool's template's sandboxes (docs/pools.md).

    Each sandbox has its own cgroup, ``<the template's>/<sandbox id>``, made by
    the node agent, so a process's cgroup says whose limits it is shown: a
    process below the template's cgroup gets its sandbox's view, any other
    (None) the template's own. A sandbox's limits are read once per ``TTL``
    (the agent sets them before the sandbox starts); the caller's cgroup is
    read at every call (pids are reused). Called on the views' FUSE thread:
    reads a few small kernel files, never raises.
    """

    TTL = 2.0
    MAX = 4096

    def __init__(self, cgroup, template_view) -> None:
        self.cgroup = cgroup
        self.template = template_view
        h = cgroup.hierarchy
        if h.version == 2:
            self.controller, mount = "", h.root
        else:
            self.controller = "memory" if "memory" in h.mounts else next(iter(h.mounts))
            mount = h.mounts[self.controller]
        # the template's cgroup as /proc/PID/cgroup names it
        self.prefix = os.path.join("/", os.path.relpath(cgroup.dir(self.controller), mount), "")
        #: sandbox cgroup path -> (when read, the view's limits)
        self._limits: dict[str, tuple[float, dict]] = {}

    def sandbox_cgroup(self, pid: int) -> str | None:
        """The cgroup path of ``pid``'s sandbox, or None (not in one, or gone)."""
        from zentry.actors.sandbox.cgroups import read_proc_cgroup

        try:
            path = read_proc_cgroup(f"/proc/{pid}/cgroup").get(self.controller, "")
        except OSError:
            return None
        if not path.startswith(self.prefix):
            return None
        return self.prefix + path[len(self.prefix):].split("/", 1)[0]

    def view_for(self, pid: int):
        """``pid``'s sandbox's view (``init_pid`` is ``pid``: its procfs lists the sandbox's pids),
        or None when ``pid`` is not in a sandbox."""
        from zentry.actors.sandbox.cgroups import Cgroup
        from zentry.sentry.kernel import ContainerView

        path = self.sandbox_cgroup(pid)
        if path is None:
            return None
        now = time.monotonic()
        cached = self._limits.get(path)
        if cached is None or now - cached[0] > self.TTL:
            if len(self._limits) >= self.MAX:
                self._limits = {p: v for p, v in self._limits.items() if now - v[0] <= self.TTL}
            try:
                view = container_view(self.template.container_id, Cgroup(path, self.cgroup.hierarchy))
            except Exception as err:  # never on the FUSE thread's path: the template's view then
                log.warning("views of %s: cgroup %s: %s", self.template.container_id, path, err)
                return None
            cached = self._limits[path] = (now, {name: getattr(view, name) for name in _LIMITS})
        return ContainerView(container_id=self.template.container_id, hostname=self.template.hostname,
                             domainname=self.template.domainname, init_pid=pid, **cached[1])


#: the fields of a view that come from its cgroup
_LIMITS = ("memory_limit_bytes", "cpu_quota_us", "cpu_period_us", "cpuset", "memory_usage_bytes")


def _memory_usage(cg) -> int:
    """Current memory use of a container's cgroup in bytes (0 when unknown)."""
    for name in ("memory.usage_in_bytes", "memory.current"):
        d = cg.dir("memory") or cg.dir("")
        if d:
            try:
                with open(os.path.join(d, name)) as f:
                    return int(f.read())
            except (OSError, ValueError):
                continue
    return 0


def _cgroup_procs(pid: int) -> list[str]:
    """cgroup.procs files of every hierarchy ``pid`` is in (v1 and v2)."""
    out = []
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        _num, controllers, path = line.split(":", 2)
        if controllers == "":
            base = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
        else:
            first = controllers.split(",")[0]
            if first.startswith("name="):
                first = first[5:]
            base = os.path.join("/sys/fs/cgroup", first)
            if not os.path.isdir(base):
                base = os.path.join("/sys/fs/cgroup", controllers)
        procs = os.path.join(base, path.lstrip("/"), "cgroup.procs")
        if os.path.exists(procs):
            out.append(procs)
    return out


def prepare_sandbox() -> None:
    """What every sandbox needs before its first Spawn, whatever the container:
    the sentry's code. Run early by a pre-forked sandbox (launch.Prefork),
    else after the ready report; a no-op the second time."""
    from zentry.sentry import kernel  # noqa: F401


def sandbox_main(endpoints: Endpoints, sandbox_id: str, ready_fd: int, controller_pid: int = 0) -> int:
    """Entry point in the forked child; returns the last container's exit status."""
    actor = Sandbox(endpoints, sandbox_id=sandbox_id, ready_fd=ready_fd, controller_pid=controller_pid)
    code = actor.run()
    return actor.exit_code if code == 0 else code
