"""Helpers shared by commands: finding a container, asking its controller, pid files."""

from __future__ import annotations

import os
import time

from zentry.actors.state import CREATED, PAUSED, RUNNING, STOPPED, Record, Store, pid_alive
from zentry.bus.message import Message


#: how long load() waits for a controller to record an init that has exited
SETTLE_S = 0.5


def load(store: Store, partial_id: str) -> Record:
    """The record for an id or unique prefix, as ``state`` shows it: ``stopped`` if
    its controller is gone, or its init has exited even in the moment before the
    controller has recorded it (so that what ``state`` calls stopped, ``delete``
    accepts). Never ``stopped`` while its init lives: a container whose
    controller died is killed by its sandbox (fail closed) within moments;
    until its init is gone it keeps its recorded status (``delete --force``
    kills it)."""
    cid = store.resolve(partial_id)
    rec = store.load(cid)
    deadline = None
    while True:
        if rec.status != STOPPED and not pid_alive(rec.controller_pid):
            if (rec.init_pid and pid_alive(rec.init_pid)) or (not rec.init_pid and _cgroup_has_processes(rec)):
                deadline = deadline or time.monotonic() + SETTLE_S
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                return rec
            rec.status = STOPPED
            return rec
        if not (rec.status in (CREATED, RUNNING, PAUSED) and rec.init_pid and not pid_alive(rec.init_pid)):
            return rec
        # The init has exited; its controller records that (with the exit
        # status) within milliseconds of the sandbox's report: wait for it,
        # a little, then say stopped anyway.
        deadline = deadline or time.monotonic() + SETTLE_S
        if time.monotonic() >= deadline:
            rec.status = STOPPED
            return rec
        time.sleep(0.005)
        rec = store.load(cid)


def ask(rec: Record, msg: Message, timeout: float = 60.0) -> Message:
    from zentry.actors.launch import controller_client  # the bus (pyzmq: ~40 ms to import)

    with controller_client(rec) as client:
        return client.request(msg, timeout=timeout)


def _cgroup_has_processes(rec: Record) -> bool:
    """A record without its init's pid yet (its controller died while the
    sandbox was still setting the init up, e.g. in a createContainer hook):
    the init is already in its cgroup, so any process there is the container's."""
    from zentry.actors.sandbox.cgroups import Cgroup
    from zentry.bus.errors import ZentryError

    try:
        return bool(Cgroup.for_container((rec.config.get("linux") or {}).get("cgroupsPath"), rec.id).pids())
    except (ZentryError, OSError):
        return False


def live_state(rec: Record) -> dict:
    """The OCI state of ``rec`` (from ``load``), read from its state.json, as runc's
    ``state`` reads its own: the controller rewrites the file (atomically) on
    every change, so asking it over the bus would only cost the CLI pyzmq's
    import."""
    return rec.oci_state()


def write_pid_file(path: str, pid: int) -> None:
    """Atomically (engines poll for it): temp file then rename."""
    path = os.path.abspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def check_stdio_options(terminal: bool, console_socket: str, preserve_fds: int) -> None:
    """Refuse, before anything is launched, what runc refuses of ``create``,
    ``run`` and ``exec``'s terminal and fd options: a console socket for a
    process without a terminal (it would never receive a pty), and a
    ``--preserve-fds`` beyond what this process could have open (a negative
    one means none, as runc takes it)."""
    import resource

    from zentry.bus.errors import InvalidArgument

    if console_socket and not terminal:
        raise InvalidArgument("cannot use --console-socket without a terminal (process.terminal is false)")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 30  # the kernel's ceiling for fs.nr_open
    if preserve_fds > 0 and 3 + preserve_fds > limit:
        raise InvalidArgument(f"invalid --preserve-fds {preserve_fds}: fds 3 .. {3 + preserve_fds - 1} exceed the open files limit ({limit})")


def add_id(parser, help: str = "container id") -> None:
    parser.add_argument("container_id", metavar="ID", help=help)
