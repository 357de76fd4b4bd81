"""The controller actor: the one owner of lifecycle state for its sandbox's containers.

It answers the CLI, drives the gofer (roots) and the sandbox (inits,
signals, cgroups), runs the OCI hooks, writes ``state.json`` after every
change, and runs the sandbox's event stream (``bus/events.py``). It lives
from the first ``create`` to the last ``delete`` of its sandbox.

If the sandbox actor dies (it hosts the sentry: a container whose trapped
calls nobody serves must not run on), the controller kills every process of
each container not yet stopped (its cgroup), waits until none is left, then
records it ``stopped`` (exit status 137 unless a report arrived) and removes
the cgroup, so ``delete`` still cleans up. (The sandbox, in turn, kills the
containers if the controller dies.)
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import time

from zentry.actors.controller import hooks
from zentry.actors.spawn import release_from_parent, report_ready
from zentry.actors.state import CREATED, CREATING, PAUSED, RUNNING, STOPPED, Record, Store, pid_alive
from zentry.bus import codec
from zentry.bus.actor import DEFERRED, Actor, Request, handles
from zentry.bus.client import Client
from zentry.bus.endpoints import Endpoints
from zentry.bus.errors import ActorGone, NotFound, Timeout, ZentryError
from zentry.bus.events import EventStream
from zentry.bus.log import get_logger
from zentry.bus.message import Message
from zentry.bus.messages import (
    Create,
    Created,
    Delete,
    Destroy,
    Exited,
    ExecInfo,
    ExecTarget,
    Freeze,
    GetState,
    History,
    HistoryReply,
    HookRan,
    Kill,
    ListContainers,
    Ok,
    Pause,
    Prepare,
    Processes,
    Release,
    ReleaseRoot,
    ReportExit,
    Resume,
    SetResources,
    SetStrace,
    Shutdown,
    Signal,
    Spawn,
    Start,
    State,
    States,
    Stats,
    StatusChanged,
    Thaw,
    Update,
    Wait,
)
from zentry.sentry.abi import libc

log = get_logger("zentry.controller")

#: Exit status recorded when the sandbox died without reporting one.
LOST_STATUS = 128 + signal.SIGKILL


class Controller(Actor):
    name = "controller"
    # A tap that finds a short-lived sandbox asks for its ring as the last
    # delete ends the controller: the ring is final then, and still answered.
    answered_while_stopping = frozenset({History.TAG})

    def __init__(self, endpoints: Endpoints, *, sandbox_id: str, store: Store, ready_fd: int) -> None:
        super().__init__(endpoints, sandbox_id=sandbox_id)
        self.store = store
        self.ready_fd = ready_fd
        self.records: dict[str, Record] = {}
        self.waiters: dict[str, list[Request]] = {}
        self.stream: EventStream | None = None
        self.sandbox: Client | None = None
        self.gofer: Client | None = None
        self.sandbox_pid = 0
        self.gofer_pid = 0
        self._sandbox_pidfd = -1
        self._status_reported: set[str] = set()
        self._history_asked: collections.deque[float] = collections.deque(maxlen=256)  # when (monotonic)

    # --- lifecycle -------------------------------------------------------------
    def on_start(self) -> None:
        self.stream = EventStream(self.ctx, self.endpoints.events_in, self.endpoints.events)
        self.stream.start()
        self.stream.wait_ready()
        report_ready(self.ready_fd)

    def on_stop(self) -> None:
        for client in (self.sandbox, self.gofer):
            if client is not None:
                client.close()
        if self.stream is not None:
            self.stream.stop()
            self.stream.join(2)
            # nothing can take our publisher's last bytes now: do not linger for them
            self.events_linger_ms = 0

    def stopping_grace(self) -> float:
        return self.stream.history_grace(self._history_asked) if self.stream is not None else 0.0

    # --- helpers -----------------------------------------------------------------
    def record(self, container_id: str) -> Record:
        try:
            return self.records[container_id]
        except KeyError:
            raise NotFound(f"container {container_id!r} does not exist") from None

    def set_status(self, rec: Record, new: str, parent: str = "") -> None:
        old = rec.change_status(new)
        self.store.save(rec)
        if old != new:
            self.publish(StatusChanged(container_id=rec.id, old=old, new=new), parent=parent)
        if new == STOPPED:
            for req in self.waiters.pop(rec.id, []):
                req.reply(Exited(container_id=rec.id, exit_status=rec.exit_status if rec.exit_status is not None else LOST_STATUS))

    def ask_sandbox(self, msg: Message, parent: str, timeout: float = 30.0) -> Message:
        return self.sandbox.request(msg, parent=parent, timeout=timeout)

    def ask_gofer(self, msg: Message, parent: str, timeout: float = 60.0) -> Message:
        return self.gofer.request(msg, parent=parent, timeout=timeout)

    def run_hooks(self, kind: str, rec: Record, parent: str) -> None:
        def report(result: hooks.HookResult) -> None:
            self.publish(
                HookRan(container_id=rec.id, hook=kind, path=result.path, exit_code=result.exit_code, duration_ns=result.duration_ns, error=result.error),
                parent=parent,
            )

        state = rec.oci_state()
        if rec.status == CREATING and rec.pid:
            state["pid"] = rec.pid  # prestart, createRuntime: the init exists, as runc passes it
        hooks.run_hooks(kind, rec.config, state, on_result=report)

    # --- create / start ------------------------------------------------------------
    @handles(Create)
    def create(self, msg: Create, req: Request) -> Message:
        if msg.container_id in self.records:
            raise ZentryError(f"container {msg.container_id!r} already exists")
        if self.sandbox is None:
            self.sandbox_pid, self.gofer_pid = msg.sandbox_pid, msg.gofer_pid
            self.sandbox = Client(self.endpoints.actor("sandbox"), sender=self.name, ctx=self.ctx, peer_pid=msg.sandbox_pid)
            self.gofer = Client(self.endpoints.actor("gofer"), sender=self.name, ctx=self.ctx, peer_pid=msg.gofer_pid)
            self._sandbox_pidfd = libc.pidfd_open(msg.sandbox_pid)
            self.watch_fd(self._sandbox_pidfd, self._on_sandbox_gone)
        rec = Record(
            id=msg.container_id,
            bundle=msg.bundle,
            sandbox_id=msg.sandbox_id,
            bus_dir=self.endpoints.bus_dir,
            controller_pid=self.pid,
            gofer_pid=self.gofer_pid,
            sandbox_pid=self.sandbox_pid,
            pid=0,
            annotations=dict((msg.config.get("annotations") or {})),
            config=msg.config,
        )
        self.records[rec.id] = rec
        self.store.save(rec)
        made_root = spawned = False
        try:
            prepared = self.ask_gofer(Prepare(container_id=rec.id, bundle=msg.bundle, config=msg.config), req.id)
            made_root = True
            spawned_reply = self.ask_sandbox(
                Spawn(container_id=rec.id, config=msg.config, rootfs=prepared.rootfs, gofer_pid=prepared.mntns_pid),
                req.id,
                timeout=60.0,
            )
            spawned = True
            # The pid engines see is the container's own (its init, as runc's).
            rec.pid = rec.init_pid = spawned_reply.pid
            rec.cgroup_procs = list(spawned_reply.cgroup_procs)
            self.store.save(rec)
            self.run_hooks("prestart", rec, req.id)
            self.run_hooks("createRuntime", rec, req.id)
        except BaseException:
            if spawned:
                self._quietly(lambda: self.ask_sandbox(Destroy(container_id=rec.id), req.id))
            if made_root:
                self._quietly(lambda: self.ask_gofer(ReleaseRoot(container_id=rec.id), req.id))
            self.records.pop(rec.id, None)
            self._remove_dir(rec.id)
            if not self.records:
                self._shutdown_sandbox(req.id)
                self.stop("create failed")
            raise
        self.set_status(rec, CREATED, req.id)
        release_from_parent()  # the container exists: outlive create from now on
        return Created(container_id=rec.id, pid=rec.pid)

    @handles(Start)
    def start(self, msg: Start, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("start", CREATED)
        self.ask_sandbox(Release(container_id=rec.id), req.id)
        if rec.status == CREATED:  # the process may already have exited and been reported
            self.set_status(rec, RUNNING, req.id)
        self.run_hooks("poststart", rec, req.id)
        return Ok()

    # --- signals, pause -------------------------------------------------------------
    @handles(Kill)
    def kill(self, msg: Kill, req: Request) -> Message:
        rec = self.record(msg.container_id)
        if msg.all:
            rec.require_status("signal", CREATED, RUNNING, PAUSED, STOPPED)
        else:
            rec.require_status("signal", CREATED, RUNNING, PAUSED)
        if rec.status == STOPPED:
            return Ok()
        try:
            self.ask_sandbox(Signal(container_id=rec.id, signal=msg.signal, all=msg.all), req.id)
        except NotFound:
            pass  # exited meanwhile; its report is on the way
        return Ok()

    @handles(Pause)
    def pause(self, msg: Pause, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("pause", CREATED, RUNNING)
        self.ask_sandbox(Freeze(container_id=rec.id), req.id)
        self.set_status(rec, PAUSED, req.id)
        return Ok()

    @handles(Resume)
    def resume(self, msg: Resume, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("resume", PAUSED)
        self.ask_sandbox(Thaw(container_id=rec.id), req.id)
        self.set_status(rec, RUNNING, req.id)
        return Ok()

    @handles(Update)
    def update(self, msg: Update, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("update", CREATED, RUNNING, PAUSED)
        self.ask_sandbox(SetResources(container_id=rec.id, resources=msg.resources), req.id)
        from zentry.actors.sandbox.cgroups import merge_resources

        linux = rec.config.setdefault("linux", {})
        merge_resources(linux.setdefault("resources", {}), msg.resources)
        self.store.save(rec)
        return Ok()

    # --- queries ----------------------------------------------------------------------
    @handles(GetState)
    def get_state(self, msg: GetState, req: Request) -> Message:
        return State(state=self.record(msg.container_id).oci_state())

    @handles(ListContainers)
    def list_containers(self, msg: ListContainers, req: Request) -> Message:
        return States(states=[r.oci_state() for r in self.records.values()])

    @handles(Processes)
    def processes(self, msg: Processes, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("get processes of", CREATED, RUNNING, PAUSED)
        return self.ask_sandbox(Processes(container_id=rec.id), req.id)

    @handles(Stats)
    def stats(self, msg: Stats, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("get stats of", CREATED, RUNNING, PAUSED)
        return self.ask_sandbox(Stats(container_id=rec.id), req.id)

    @handles(ExecInfo)
    def exec_info(self, msg: ExecInfo, req: Request) -> Message:
        rec = self.record(msg.container_id)
        rec.require_status("exec in", CREATED, RUNNING)
        return ExecTarget(init_pid=rec.init_pid, cgroup_procs=rec.cgroup_procs, config=rec.config, fd_socket=self.endpoints.fd_socket)

    @handles(SetStrace)
    def set_strace(self, msg: SetStrace, req: Request) -> Message:
        return self.ask_sandbox(msg, req.id)

    @handles(History)
    def history(self, msg: History, req: Request) -> Message:
        """The stream's ring since ``since_ns``, newest kept when it would not fit one frame."""
        self._history_asked.append(time.monotonic())
        frames = self.stream.history(msg.since_ns) if self.stream is not None else []
        budget = codec.MAX_FRAME - 64 * 1024
        kept: list[list[bytes]] = []
        size = 0
        for frame in reversed(frames):
            size += sum(len(part) for part in frame) + 16  # msgpack headers, generously
            if size > budget:
                break
            kept.append(frame)
        kept.reverse()
        return HistoryReply(events=kept, truncated=len(frames) - len(kept))

    @handles(Wait)
    def wait(self, msg: Wait, req: Request) -> object:
        rec = self.record(msg.container_id)
        if rec.status == STOPPED:
            return Exited(container_id=rec.id, exit_status=rec.exit_status if rec.exit_status is not None else LOST_STATUS)
        self.waiters.setdefault(rec.id, []).append(req)
        return DEFERRED

    # --- exits and delete ---------------------------------------------------------------
    @handles(ReportExit)
    def report_exit(self, msg: ReportExit, req: Request) -> Message:
        rec = self.records.get(msg.container_id)
        if rec is None:
            return Ok()
        self._status_reported.add(rec.id)
        rec.exit_status = msg.exit_status
        if rec.status != STOPPED:
            self.set_status(rec, STOPPED, req.id)
        else:
            self.store.save(rec)
        return Ok()

    def _on_sandbox_gone(self, fd: int) -> None:
        self.unwatch_fd(fd)
        os.close(fd)
        self._sandbox_pidfd = -1
        # A report sent just before the exit may still be in flight.
        self.call_later(0.3, self._sandbox_lost)

    def _sandbox_lost(self) -> None:
        for rec in self.records.values():
            if rec.status != STOPPED:
                log.warning("sandbox died; killing container %s", rec.id)
                # killed and gone before it is called stopped
                self._destroy_cgroup(rec)
                if rec.exit_status is None:
                    rec.exit_status = LOST_STATUS
                self.set_status(rec, STOPPED)

    @staticmethod
    def _destroy_cgroup(rec: Record) -> None:
        """Kill a container's processes and remove its cgroup when its sandbox
        cannot (it is gone); returns once none of its processes is left."""
        from zentry.actors.launch import wait_gone
        from zentry.actors.sandbox.cgroups import Cgroup

        try:
            Cgroup.for_container((rec.config.get("linux") or {}).get("cgroupsPath"), rec.id).destroy()
        except Exception as err:
            log.warning("cannot remove cgroup of %s: %s", rec.id, err)
        if rec.init_pid:
            # an init not yet in its cgroup (killed during create) dies with its channel
            wait_gone([rec.init_pid], timeout=5)

    @handles(Delete)
    def delete(self, msg: Delete, req: Request) -> Message:
        rec = self.record(msg.container_id)
        init_gone = rec.status != STOPPED and rec.init_pid and not pid_alive(rec.init_pid)
        if not msg.force and not init_gone:  # an exited init is stopped, as `state` shows it
            rec.require_status("delete", CREATED, STOPPED)
        if rec.status != STOPPED:
            try:
                reply = self.ask_sandbox(Destroy(container_id=rec.id), req.id)
                if isinstance(reply, Exited) and rec.exit_status is None:
                    rec.exit_status = reply.exit_status
            except (ActorGone, Timeout) as err:
                log.warning("sandbox did not destroy %s: %s", rec.id, err)
                # the sandbox died (or hangs): its cgroup is ours to remove now,
                # not when _sandbox_lost's grace period would have run
                self._destroy_cgroup(rec)
            if rec.status != STOPPED:
                if rec.exit_status is None:
                    rec.exit_status = LOST_STATUS
                self.set_status(rec, STOPPED, req.id)
        self._quietly(lambda: self.ask_gofer(ReleaseRoot(container_id=rec.id), req.id, timeout=10))
        self.records.pop(rec.id, None)
        self._remove_dir(rec.id)
        self.run_hooks("poststop", rec, req.id)
        if not self.records:
            self._shutdown_sandbox(req.id)
            self.stop("last container deleted")
        return Ok()

    def _shutdown_sandbox(self, parent: str) -> None:
        from zentry.actors.launch import wait_gone
        asked = []
        for client in (self.sandbox, self.gofer):
            if client is not None and pid_alive(client.peer_pid):
                try:
                    control = Client(client.endpoint.replace(".sock", ".ctl"), sender=self.name, ctx=self.ctx, peer_pid=client.peer_pid)
                    try:
                        control.request(Shutdown(reason="sandbox deleted"), parent=parent, timeout=5)
                        asked.append(client.peer_pid)
                    finally:
                        control.close()
                except ZentryError:
                    pass
        # Their last events (actor_stopped) are queued on the stream once
        # they have exited; then the stream's drain at stop is short.
        wait_gone(asked, timeout=2)

    def _remove_dir(self, container_id: str) -> None:
        d = self.store.dir(container_id)
        if os.path.abspath(d) == os.path.abspath(self.endpoints.bus_dir):
            # The bus directory holds live sockets until the actors exit: keep
            # the sockets, drop the records; the CLI removes the rest.
            for name in ("state.json",):
                try:
                    os.unlink(os.path.join(d, name))
                except FileNotFoundError:
                    pass
            return
        shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _quietly(fn) -> None:
        try:
            fn()
        except ZentryError as err:
            log.warning("cleanup step failed: %s", err)


def controller_main(endpoints: Endpoints, sandbox_id: str, root: str, ready_fd: int) -> int:
    controller = Controller(endpoints, sandbox_id=sandbox_id, store=Store(root), ready_fd=ready_fd)
    status = controller.run()
    if not controller.records:
        _remove_sandbox_dir(controller.store, sandbox_id, endpoints.bus_dir)
    return status


def _remove_sandbox_dir(store: Store, sandbox_id: str, bus_dir: str) -> None:
    """Its last container deleted, the controller removes the sandbox's directory
    (and bus directory) as its last act: the ``delete`` that asked may have been
    killed meanwhile, and nothing else would remove them then."""
    from zentry.bus.endpoints import bus_dir_for

    d = store.dir(sandbox_id)
    if os.path.abspath(bus_dir_for(d)) != os.path.abspath(bus_dir) or os.path.exists(store.path(sandbox_id)):
        return  # not the directory this sandbox's id implies, or a record lives there again
    if bus_dir != d:
        shutil.rmtree(bus_dir, ignore_errors=True)
    shutil.rmtree(d, ignore_errors=True)
