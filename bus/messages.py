"""The message catalogue: every request, reply and event on the bus, declared once.

``docs/protocol.md`` documents each of these; tests/unit/test_protocol_doc.py
fails when the two disagree. Tags are ``<area>.<name>``. Container configs
travel as maps (the OCI JSON as decoded), signals as numbers, times as
integer nanoseconds, statuses as strings.
"""

from __future__ import annotations

from zentry.bus.message import Message, doc, message

# The annotations below are never evaluated (``from __future__``): ``@message``
# parses them as text, ``Any`` being the wire type ``any``. So ``typing`` is
# not imported here: where ``site`` has not loaded it (the -IS launcher) it
# would cost ~20 ms of every command's start.

# --- generic -------------------------------------------------------------------


@message("error", "reply")
class Error(Message):
    """A request failed; ``code`` is a wire code from bus/errors.py."""

    code: str = doc("wire error code (e.g. not_found, wrong_state, protocol)")
    message: str = doc("one human-readable line with context")
    details: dict[str, Any] = doc("optional structured details", factory=dict)


@message("ok", "reply")
class Ok(Message):
    """A request succeeded and has nothing to return."""


@message("ping", "request", idempotent=True)
class Ping(Message):
    """Liveness probe; answered on the control lane."""


@message("pong", "reply")
class Pong(Message):
    """Answer to ping."""

    actor: str = doc("actor name (controller, sandbox, gofer, forwarder)")
    pid: int = doc("the actor's host pid")
    uptime_ns: int = doc("time since the actor started")
    handled: int = doc("requests handled so far")
    errors: int = doc("requests answered with an error so far")
    bad_frames: int = doc("frames refused by the decoder so far")


@message("shutdown", "request")
class Shutdown(Message):
    """Stop the actor after answering; answered on the control lane."""

    reason: str = doc("why, for the log and the tap", "")


# --- controller: the lifecycle ---------------------------------------------------


@message("container.create", "request")
class Create(Message):
    """Create a container: prepare its root, spawn its init, run hooks, record state."""

    container_id: str = doc("the new container's id")
    bundle: str = doc("absolute path of the OCI bundle")
    config: dict[str, Any] = doc("the bundle's config.json, validated")
    console_socket: str = doc("unix socket that receives the pty master, or empty", "")
    sandbox_id: str = doc("the sandbox this container joins (its own id for a new sandbox)")
    sandbox_pid: int = doc("host pid of the sandbox actor")
    gofer_pid: int = doc("host pid of the gofer actor")


@message("container.created", "reply")
class Created(Message):
    """A container now exists and waits for start."""

    container_id: str = doc("the container")
    pid: int = doc("host pid for --pid-file: the container's init")


@message("container.start", "request")
class Start(Message):
    """Start a created container's user process."""

    container_id: str = doc("the container")


@message("container.kill", "request")
class Kill(Message):
    """Send a signal to a container's init, or with all=true to all its processes."""

    container_id: str = doc("the container")
    signal: int = doc("signal number")
    all: bool = doc("signal every process of the container", False)


@message("container.delete", "request")
class Delete(Message):
    """Delete a container and everything made for it."""

    container_id: str = doc("the container")
    force: bool = doc("kill it first if it is running or paused", False)


@message("container.get_state", "request", idempotent=True)
class GetState(Message):
    """Ask for a container's state."""

    container_id: str = doc("the container")


@message("container.state", "reply")
class State(Message):
    """A container's state: the OCI state fields plus zentry's own."""

    state: dict[str, Any] = doc("OCI state (ociVersion, id, status, pid, bundle, annotations) plus created, exitStatus, sandbox")


@message("container.list", "request", idempotent=True)
class ListContainers(Message):
    """Ask for every container of the sandbox."""


@message("container.states", "reply")
class States(Message):
    """Answer to container.list."""

    states: list[dict[str, Any]] = doc("one state map per container")


@message("container.wait", "request", idempotent=True)
class Wait(Message):
    """Answered when the container has stopped (at once if it already has)."""

    container_id: str = doc("the container")


@message("container.exited", "reply")
class Exited(Message):
    """A container's init has exited."""

    container_id: str = doc("the container")
    exit_status: int = doc("exit code, or 128+N when killed by signal N")


@message("container.pause", "request")
class Pause(Message):
    """Freeze every process of a container."""

    container_id: str = doc("the container")


@message("container.resume", "request")
class Resume(Message):
    """Thaw a paused container."""

    container_id: str = doc("the container")


@message("container.update", "request")
class Update(Message):
    """Change a container's linux.resources."""

    container_id: str = doc("the container")
    resources: dict[str, Any] = doc("OCI linux.resources fragment")


@message("container.processes", "request", idempotent=True)
class Processes(Message):
    """Ask for the processes of a container."""

    container_id: str = doc("the container")


@message("container.process_list", "reply")
class ProcessList(Message):
    """Processes of a container."""

    processes: list[dict[str, Any]] = doc("one map per process: pid, ppid, uid, stime, tty, time, cmd")


@message("container.stats", "request", idempotent=True)
class Stats(Message):
    """Ask for resource statistics of a container."""

    container_id: str = doc("the container")


@message("container.stats_reply", "reply")
class StatsReply(Message):
    """Resource statistics (runc events --stats shape)."""

    stats: dict[str, Any] = doc("cpu, memory, pids, blkio maps")


@message("container.exec_info", "request", idempotent=True)
class ExecInfo(Message):
    """Ask what an exec into a container needs: namespaces, cgroup, process defaults."""

    container_id: str = doc("the container")


@message("container.exec_target", "reply")
class ExecTarget(Message):
    """Where and how an exec'd process must be placed."""

    init_pid: int = doc("host pid of the container's init (its namespaces are joined)")
    cgroup_procs: list[str] = doc("cgroup.procs files the process must be written to")
    config: dict[str, Any] = doc("the container's OCI config")
    fd_socket: str = doc("the sandbox's fd side socket (listener handover)")


@message("container.report_exit", "request")
class ReportExit(Message):
    """The sandbox tells the controller that a container's init exited."""

    container_id: str = doc("the container")
    exit_status: int = doc("exit code, or 128+N when killed by signal N")


@message("debug.strace", "request")
class SetStrace(Message):
    """Switch syscall events for a sandbox on or off."""

    on: bool = doc("publish every trapped syscall")


@message("stream.history", "request", idempotent=True)
class History(Message):
    """Ask the controller for the recent events its stream keeps (zentry tap --since, and taps that find a sandbox late)."""

    since_ns: int = doc("oldest arrival time wanted, integer nanoseconds since the epoch")


@message("stream.history_reply", "reply")
class HistoryReply(Message):
    """Events from the stream's ring, oldest first, exactly as they travelled."""

    events: list[list[bytes]] = doc("one [topic, seq, batch] frame list per stream message (see events)")
    truncated: int = doc("oldest stream messages left out to keep the reply under the frame limit", 0)


# --- sandbox ---------------------------------------------------------------------


@message("sandbox.spawn", "request")
class Spawn(Message):
    """Have the container's intermediate (connected to fds.sock by its create) fork the init into its namespaces and cgroup; it waits for start."""

    container_id: str = doc("the container")
    config: dict[str, Any] = doc("the OCI config")
    rootfs: str = doc("mountpoint of the prepared root inside the gofer's mount namespace")
    gofer_pid: int = doc("pid of the gofer whose mount namespace holds the root")


@message("sandbox.spawned", "reply")
class Spawned(Message):
    """The init exists (stopped before execve)."""

    pid: int = doc("host pid of the container's init")
    cgroup_procs: list[str] = doc("cgroup.procs files of the container's cgroup")


@message("sandbox.release", "request")
class Release(Message):
    """Let a spawned init execve its user process."""

    container_id: str = doc("the container")


@message("sandbox.signal", "request")
class Signal(Message):
    """Signal a container's init, or all its processes."""

    container_id: str = doc("the container")
    signal: int = doc("signal number")
    all: bool = doc("every process in the container's cgroup", False)


@message("sandbox.freeze", "request")
class Freeze(Message):
    """Freeze (pause) a container's cgroup."""

    container_id: str = doc("the container")


@message("sandbox.thaw", "request")
class Thaw(Message):
    """Thaw (resume) a container's cgroup."""

    container_id: str = doc("the container")


@message("sandbox.set_resources", "request")
class SetResources(Message):
    """Apply linux.resources to a container's cgroup."""

    container_id: str = doc("the container")
    resources: dict[str, Any] = doc("OCI linux.resources fragment")


@message("sandbox.destroy", "request")
class Destroy(Message):
    """Kill every process of a container and remove its cgroup."""

    container_id: str = doc("the container")


# --- gofer -----------------------------------------------------------------------


@message("gofer.prepare", "request")
class Prepare(Message):
    """Build a container's root filesystem view in the gofer's mount namespace."""

    container_id: str = doc("the container")
    bundle: str = doc("the bundle directory")
    config: dict[str, Any] = doc("the OCI config")


@message("gofer.prepared", "reply")
class Prepared(Message):
    """The root is ready."""

    rootfs: str = doc("mountpoint of the root inside the gofer's mount namespace")
    mntns_pid: int = doc("pid whose /proc/PID/ns/mnt holds that namespace")


@message("gofer.open", "request")
class Open(Message):
    """Open a path inside a container's root; the fd follows on the side socket."""

    container_id: str = doc("the container")
    path: str = doc("path as the container sees it")
    flags: int = doc("open(2) flags", 0)


@message("gofer.opened", "reply")
class Opened(Message):
    """The fd for an open request has been sent on the side socket."""

    token: str = doc("matches the fd's header on the side socket")


@message("gofer.release_root", "request")
class ReleaseRoot(Message):
    """Unmount a container's root view."""

    container_id: str = doc("the container")


# --- events ----------------------------------------------------------------------


@message("event.actor_started", "event")
class ActorStarted(Message):
    """An actor is up and serving."""

    actor: str = doc("actor name")
    pid: int = doc("host pid")


@message("event.actor_stopped", "event")
class ActorStopped(Message):
    """An actor is stopping."""

    actor: str = doc("actor name")
    pid: int = doc("host pid")
    reason: str = doc("why")


@message("event.heartbeat", "event")
class Heartbeat(Message):
    """Periodic liveness and counters."""

    actor: str = doc("actor name")
    pid: int = doc("host pid")
    uptime_ns: int = doc("time since start")
    handled: int = doc("requests handled")
    published: int = doc("events published")


@message("event.request", "event")
class RequestHandled(Message):
    """An actor answered a request (parent = the request's id)."""

    request: str = doc("the request's type tag")
    sender: str = doc("who asked")
    duration_ns: int = doc("time spent answering")
    error: str = doc("wire error code, or empty on success", "")
    message: str = doc("error message, or empty", "")


@message("event.status", "event")
class StatusChanged(Message):
    """A container moved between lifecycle statuses."""

    container_id: str = doc("the container")
    old: str = doc("previous status")
    new: str = doc("new status")


@message("event.hook", "event")
class HookRan(Message):
    """An OCI hook ran."""

    container_id: str = doc("the container")
    hook: str = doc("hook kind (prestart, createRuntime, poststart, poststop, ...)")
    path: str = doc("the hook's executable")
    exit_code: int = doc("its exit status (-1 when it timed out or could not run)")
    duration_ns: int = doc("how long it ran")
    error: str = doc("why it failed, or empty", "")


@message("event.process_start", "event")
class ProcessStarted(Message):
    """A container process started (init or exec)."""

    container_id: str = doc("the container")
    pid: int = doc("host pid")
    args: list[str] = doc("argv")
    exec: bool = doc("true for an exec'd process, false for the init", False)


@message("event.process_exit", "event")
class ProcessExited(Message):
    """A container process exited."""

    container_id: str = doc("the container")
    pid: int = doc("host pid")
    exit_status: int = doc("exit code, or 128+N when killed by signal N")


@message("event.signal", "event")
class SignalSent(Message):
    """A signal was delivered to container processes."""

    container_id: str = doc("the container")
    signal: int = doc("signal number")
    pids: list[int] = doc("host pids signalled")


@message("event.mount", "event")
class RootPrepared(Message):
    """The gofer finished a container's root view."""

    container_id: str = doc("the container")
    rootfs: str = doc("mountpoint")
    mounts: int = doc("number of OCI mounts made")
    duration_ns: int = doc("time spent")


@message("event.file", "event")
class FileOp(Message):
    """The gofer served a file request."""

    container_id: str = doc("the container")
    op: str = doc("operation (open)")
    path: str = doc("path as the container sees it")
    error: str = doc("errno name, or empty", "")


@message("event.syscall", "event")
class Syscall(Message):
    """The sentry served a trapped syscall (only while strace is on)."""

    container_id: str = doc("the container")
    pid: int = doc("thread group id (host)")
    tid: int = doc("thread id (host)")
    syscall: str = doc("syscall name")
    args: list[Any] = doc("decoded arguments (paths as strings)")
    result: int = doc("return value (0 or more), or -errno")
    errno: str = doc("errno name, or empty")
    duration_ns: int = doc("time spent in the sentry")


@message("event.stats", "event")
class ResourceStats(Message):
    """Periodic resource usage of a container."""

    container_id: str = doc("the container")
    stats: dict[str, Any] = doc("cpu, memory, pids maps")


@message("event.dropped", "event")
class Dropped(Message):
    """Events were lost (a subscriber or the stream could not keep up)."""

    count: int = doc("events lost since the last report")
