"""Bringing a sandbox up and tearing a dead one down, from the calling process.

``create_container`` forks the three long-lived actors of a new sandbox
(controller, gofer, sandbox) and the container's *intermediate* from the
``create`` process before it builds any ZeroMQ context, waits for each to
report ready, then asks the controller to create the container. The
intermediate forks the container's init (``sandbox/init.py``); ``create`` is
a child subreaper, so the init becomes its child, and the engine's once
``create`` exits. Any failure kills and reaps what was forked, removes the
container's cgroup and directory: nothing is left behind.

``remove_orphan`` is the fallback for a container whose controller is dead
(killed, host restart): it kills the recorded actor pids, removes the
cgroup, and deletes the directory.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import time
from typing import Callable

from zentry.actors.spawn import Child, fork_blank, reap
from zentry.actors.state import STOPPED, Lock, Record, Store, pid_alive
from zentry.bus.client import Client
from zentry.bus.endpoints import Endpoints, bus_dir_for, make_private_dir
from zentry.bus.errors import ActorGone, AlreadyExists, NotFound, SystemFailure, ZentryError
from zentry.bus.log import configure, get_logger
from zentry.bus.messages import Create, Created

log = get_logger("zentry.launch")

# containerd's CRI annotations put a container into its pod's sandbox. CRI-O's
# (io.kubernetes.cri-o.SandboxID/ContainerType) are NOT honoured: podman sets
# them on pod members but drives every member as an independent runc
# container that joins the infra's namespaces by /proc/<pid>/ns path, and it
# waits on each member's own pid file.
SANDBOX_ID_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id",)
CONTAINER_TYPE_ANNOTATIONS = ("io.kubernetes.cri.container-type",)


def sandbox_of(container_id: str, config: dict) -> str:
    """The sandbox a container belongs to: its own, or its pod's (CRI annotations)."""
    ann = config.get("annotations") or {}
    ctype = next((ann[k] for k in CONTAINER_TYPE_ANNOTATIONS if k in ann), "")
    sid = next((ann[k] for k in SANDBOX_ID_ANNOTATIONS if k in ann), "")
    if ctype == "container" and sid and sid != container_id:
        return sid
    return container_id


class Prefork:
    """The controller, gofer and sandbox of a new sandbox, forked before ``create``
    has parsed its arguments.

    ``create``, ``run`` and ``do`` fork them as soon as the command word is
    known: the sandbox first, once pyzmq, msgpack and the bus client are
    loaded (its preparation is the longest); the controller and the gofer
    after the rest of what they share with the CLI (see _import_shared).
    While the CLI parses, validates config.json against the schema and
    claims the container's directory, each blank imports its own code, and
    the sandbox also loads the sentry and compiles zentry's BPF program: on
    two cores the two halves run side by side instead of one after the
    other. ``create_container`` then assigns them their sandbox (endpoints,
    id, log). Whatever ends the CLI first (a parse error, an invalid
    bundle, a pod member that joins an existing sandbox) dismisses them:
    they are killed and reaped before the CLI exits, and die with it if it
    is killed.

    Each actor applies the CLI's logging flags once assigned (the CLI
    learns them only when it parses, after the fork).
    """

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.intermediate: Child | None = None
        # The container's init descends from this process: when its
        # intermediate exits it is re-parented here, then to our nearest
        # subreaper (the engine's) when we exit, as runc's init is.
        libc_prctl_subreaper()
        try:
            # The intermediate first, as soon as pyzmq and msgpack are in: its
            # preparation (the init's code, zentry's BPF program) is the
            # longest, and while it runs the CLI imports the rest (two
            # processes on two cores). The others follow, sharing those imports.
            self.intermediate = fork_blank("intermediate", _prepare_intermediate, detach=False)
            self._fork("sandbox", _prepare_sandbox, detach=True)
            _import_shared()
            self._fork("controller", _prepare_controller, detach=True)
            self._fork("gofer", _prepare_gofer, detach=True)
        except BaseException:
            self.dismiss()
            raise

    def _fork(self, name: str, prepare: Callable[[], Callable[[dict, int], int]], *, detach: bool) -> None:
        siblings = tuple(self.children) + ((self.intermediate,) if self.intermediate is not None else ())
        self.children.append(fork_blank(name, lambda: self._with_logging(prepare()), detach=detach, siblings=siblings))

    def _with_logging(self, start: Callable[[dict, int], int]) -> Callable[[dict, int], int]:
        def run(assignment: dict, ready_fd: int) -> int:
            configure(assignment["log_file"], assignment["log_format"], assignment["debug"])
            return start(assignment, ready_fd)

        return run

    def assign(self, endpoints: Endpoints, sandbox_id: str, root: str, *, log_file: str | None, log_format: str, debug: bool) -> list[Child]:
        """Give the three actors their sandbox; they are then the caller's (it
        waits for them, kills them on failure). Returned as controller, gofer,
        sandbox. No actor keeps the caller's stdio: /dev/null, and the log file
        (or /dev/null) as stderr. Only the container's processes hold them."""
        order = ("controller", "gofer", "sandbox")
        children = sorted(self.children, key=lambda child: order.index(child.name))
        self.children = []
        base = {"bus_dir": endpoints.bus_dir, "sandbox_id": sandbox_id, "root": root, "log_file": log_file, "log_format": log_format, "debug": debug,
                "quiet_stdio": True, "controller_pid": children[0].pid}
        for child in children:
            child.assign(base)
        return children

    def take_intermediate(self) -> Child:
        """The blank that will fork the container's init (see assign_intermediate)."""
        child, self.intermediate = self.intermediate, None
        if child is None:
            raise SystemFailure("the container's intermediate was already taken")
        return child

    def dismiss(self) -> None:
        """Kill and reap those not assigned (a no-op once assigned)."""
        children, self.children = self.children, []
        if self.intermediate is not None:
            children.append(self.intermediate)
            self.intermediate = None
        for child in children:
            if child.assign_fd >= 0:
                os.close(child.assign_fd)
                child.assign_fd = -1
        _kill_children(children)


def _import_shared() -> None:
    """What two or more of the CLI and its three actors would each import (or
    generate) after the fork, done once before it. On two cores the four
    processes that follow the fork are CPU-bound: work done four times there
    costs more than once here."""
    import socket  # noqa: F401  (the forwarder, the fd socket, the init's channel)

    from zentry.actors import oci  # noqa: F401  (the CLI validates, the gofer and the init apply)
    from zentry.bus import actor, events, fdpass  # noqa: F401  (every actor)
    from zentry.bus import messages as M
    from zentry.bus.message import precompile
    from zentry.sentry.abi import libc  # noqa: F401  (every actor binds itself to us with it)

    precompile(M.Create, M.Created, M.Start, M.Ok, M.Delete, M.Error, M.Shutdown,
               M.ActorStarted, M.ActorStopped, M.RequestHandled)


def _prepare_controller() -> Callable[[dict, int], int]:
    from zentry.actors.controller.actor import controller_main

    return lambda a, fd: controller_main(Endpoints(a["bus_dir"]), a["sandbox_id"], a["root"], fd)


def _prepare_gofer() -> Callable[[dict, int], int]:
    from zentry.actors.gofer.actor import gofer_main

    return lambda a, fd: gofer_main(Endpoints(a["bus_dir"]), a["sandbox_id"], fd, a["controller_pid"])


def _prepare_sandbox() -> Callable[[dict, int], int]:
    from zentry.actors.sandbox.actor import prepare_sandbox, sandbox_main

    prepare_sandbox()
    return lambda a, fd: sandbox_main(Endpoints(a["bus_dir"]), a["sandbox_id"], fd, a["controller_pid"])


def _prepare_intermediate() -> Callable[[dict, int], int]:
    """The init's code and zentry's BPF program, compiled once here and
    inherited by the init (which can import nothing once it has pivoted)."""
    from zentry.actors.sandbox.init import intermediate_main
    from zentry.sentry import filter as sentry_filter
    from zentry.sentry import views  # noqa: F401  (enter_time_namespace, just before the init's fork)

    sentry_filter.zentry_bpf()
    return intermediate_main


def libc_prctl_subreaper() -> None:
    from zentry.sentry.abi import libc

    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)


def assign_intermediate(child: Child, fd_socket: str, container_id: str, bundle: str, config: dict, console_socket: str) -> None:
    """Tell the intermediate its container; it connects to the sandbox's fd
    socket and reports ready (it keeps our stdio: they become the init's)."""
    child.assign({"fd_socket": fd_socket, "container_id": container_id, "bundle": bundle, "config": config, "console_socket": console_socket})
    child.wait_ready()


def create_container(store: Store, container_id: str, bundle: str, config: dict, *, console_socket: str = "", log_file: str | None = None,
                     prefork: Prefork | None = None, log_format: str = "text", debug: bool = False) -> Created:
    """Create a container in a new sandbox (or its pod's, by CRI annotations).

    ``prefork``: the CLI's blank actors (see Prefork); without it they are
    forked here, the same way.
    """
    store.ensure_root()
    prefork = prefork or Prefork()
    sandbox_id = sandbox_of(container_id, config)
    if sandbox_id != container_id:
        return _join_sandbox(store, container_id, sandbox_id, bundle, config, console_socket, prefork)
    cdir = store.dir(container_id)
    _make_container_dir(store, container_id)
    children: list[Child] = []
    intermediate = prefork.take_intermediate()
    try:
        with Lock(store, container_id, create=True):
            bus_dir = bus_dir_for(cdir)
            make_private_dir(bus_dir)
            endpoints = Endpoints(bus_dir)
            # The others' event publishers reach the controller's stream
            # whenever it binds (they queue until then).
            children = prefork.assign(endpoints, sandbox_id, store.root, log_file=log_file, log_format=log_format, debug=debug)
            for child in children:
                child.wait_ready()
            controller, gofer, sandbox = children
            assign_intermediate(intermediate, endpoints.fd_socket, container_id, bundle, config, console_socket)
            created = _ask_create(endpoints, controller.pid, Create(
                container_id=container_id, bundle=bundle, config=config, console_socket=console_socket,
                sandbox_id=sandbox_id, sandbox_pid=sandbox.pid, gofer_pid=gofer.pid,
            ))
            reap(intermediate.pid)
            return created
    except BaseException:
        _kill_children([intermediate, *children])
        _destroy_cgroup(container_id, config)
        if bus_dir_for(cdir) != cdir:
            shutil.rmtree(bus_dir_for(cdir), ignore_errors=True)
        shutil.rmtree(cdir, ignore_errors=True)
        raise


def _join_sandbox(store: Store, container_id: str, sandbox_id: str, bundle: str, config: dict, console_socket: str, prefork: Prefork) -> Created:
    """A pod member: created by the pod's controller in the pod's sandbox; its
    init descends from this call, as any container's."""
    intermediate = prefork.take_intermediate()
    prefork.dismiss()
    try:
        owner = store.load(store.resolve(sandbox_id))
        if owner.status == STOPPED or not pid_alive(owner.controller_pid):
            raise NotFound(f"sandbox {sandbox_id!r} of container {container_id!r} is not running")
        cdir = store.dir(container_id)
        _make_container_dir(store, container_id)
    except BaseException:
        _kill_children([intermediate])
        raise
    endpoints = Endpoints(owner.bus_dir)
    # Held until the controller has written state.json (see Store.remove_stale).
    with Lock(store, container_id, create=True):
        try:
            assign_intermediate(intermediate, endpoints.fd_socket, container_id, bundle, config, console_socket)
            created = _ask_create(endpoints, owner.controller_pid, Create(
                container_id=container_id, bundle=bundle, config=config, console_socket=console_socket,
                sandbox_id=sandbox_id, sandbox_pid=owner.sandbox_pid, gofer_pid=owner.gofer_pid,
            ))
            reap(intermediate.pid)
            return created
        except BaseException:
            _kill_children([intermediate])
            # the init may be in its cgroup already (its pod's controller or
            # sandbox died during a createContainer hook): gone before the record
            _destroy_cgroup(container_id, config)
            shutil.rmtree(cdir, ignore_errors=True)
            raise


def _destroy_cgroup(container_id: str, config: dict) -> None:
    """Kill what is in a container's cgroup and remove it (its sandbox may have been killed)."""
    from zentry.actors.sandbox.cgroups import Cgroup

    try:
        Cgroup.for_container((config.get("linux") or {}).get("cgroupsPath"), container_id).destroy()
    except (ZentryError, OSError) as err:
        log.warning("cannot remove cgroup of %s: %s", container_id, err)


def _make_container_dir(store: Store, container_id: str) -> None:
    """mkdir ``<root>/<id>``; AlreadyExists unless what is there is a killed create's leftover."""
    try:
        store.claim(container_id)
        return
    except FileExistsError:
        if not store.remove_stale(container_id):
            raise AlreadyExists(f"container {container_id!r} already exists") from None
    try:
        store.claim(container_id)
    except FileExistsError:  # another create took the id meanwhile
        raise AlreadyExists(f"container {container_id!r} already exists") from None


def _ask_create(endpoints: Endpoints, controller_pid: int, request: Create) -> Created:
    with Client(endpoints.actor("controller"), sender="cli", peer_pid=controller_pid) as client:
        return client.request(request, timeout=120)


def _kill_children(children: list[Child]) -> None:
    for child in children:
        if child.ready_fd >= 0:
            os.close(child.ready_fd)
            child.ready_fd = -1
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for child in children:
        reap(child.pid, timeout=5)


def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    """Wait until none of ``pids`` is alive (they need not be our children).

    pidfds wake us the moment each one exits (no polling interval on the
    teardown path of every ``run`` and ``delete``); our own children are
    reaped on the way.
    """
    deadline = time.monotonic() + timeout
    watched: dict[int, int] = {}
    try:
        for pid in dict.fromkeys(p for p in pids if p):
            try:
                watched[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                _reap_if_child(pid)
        poller = select.poll()
        for fd in watched:
            poller.register(fd, select.POLLIN)
        pending = set(watched)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, _ev in poller.poll(left * 1000):
                poller.unregister(fd)
                pending.discard(fd)
                _reap_if_child(watched[fd])
        return not pending
    finally:
        for fd in watched:
            os.close(fd)


def _reap_if_child(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def own_actors(rec: Record) -> list[int]:
    """The actors that end with ``rec``'s deletion: its sandbox's, if it is the
    sandbox's own container; none for a pod member (they serve the pod on)."""
    if rec.sandbox_id != rec.id:
        return []
    return [p for p in (rec.controller_pid, rec.gofer_pid, rec.sandbox_pid) if p]


def remove_dir(store: Store, rec: Record) -> None:
    """Remove what remains of a deleted container's directories."""
    cdir = store.dir(rec.id)
    bus_dir = store.own_bus_dir(rec)  # never a path the state file alone names
    if bus_dir and bus_dir != cdir and rec.sandbox_id == rec.id:
        shutil.rmtree(bus_dir, ignore_errors=True)
    shutil.rmtree(cdir, ignore_errors=True)


def remove_orphan(store: Store, rec: Record) -> None:
    """Clean up a container whose controller is gone: processes, cgroup, files."""
    from zentry.actors.sandbox.cgroups import Cgroup

    pids = [p for p in (rec.sandbox_pid, rec.gofer_pid, rec.controller_pid) if p and pid_alive(p)]
    if rec.sandbox_id == rec.id:
        # only the processes the record's start times prove are its own (a pid may be reused)
        pids = [pid for pid in pids if rec.signal_own(pid, signal.SIGKILL)]
        wait_gone(pids)
    try:
        Cgroup.for_container((rec.config.get("linux") or {}).get("cgroupsPath"), rec.id).destroy()
    except ZentryError as err:
        log.warning("cannot remove cgroup of %s: %s", rec.id, err)
    except OSError as err:
        log.warning("cannot remove cgroup of %s: %s", rec.id, err)
    remove_dir(store, rec)


def controller_client(rec: Record) -> Client:
    """A client for the controller of ``rec``'s sandbox; ActorGone if it is dead."""
    if not pid_alive(rec.controller_pid):
        raise ActorGone(f"the controller of container {rec.id!r} is not running")
    return Client(Endpoints(rec.bus_dir).actor("controller"), sender="cli", peer_pid=rec.controller_pid)
