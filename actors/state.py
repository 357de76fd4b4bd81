"""Container records on disk, the status table, IDs and locks.

On-disk format (owned by the controller; the CLI only reads it)::

    <root>/<id>/state.json   one JSON object, written atomically
                             (temp file, rename) after every change:
      id, status, bundle, pid (sandbox actor), init_pid, created (RFC 3339),
      sandbox_id, bus_dir, controller_pid, gofer_pid, sandbox_pid,
      exit_status (null until stopped), annotations, config (OCI config),
      owner
    <root>/<id>/lock         flock(2) target serialising changes to <id>

A record whose controller is gone is reported ``stopped`` (its sandbox
cannot be running without it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re

from zentry.bus.proc import pid_alive  # noqa: F401  (re-exported: the one liveness check)
from zentry.bus.errors import Ambiguous, InvalidArgument, NotFound, WrongState

# Every CLI call imports this module: typing (annotations only), shutil
# (bz2, lzma, fnmatch) and datetime cost ~12 ms together, so they are
# imported where they are used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

CREATING, CREATED, RUNNING, PAUSED, STOPPED = "creating", "created", "running", "paused", "stopped"

#: status -> statuses it may move to (the one transition table)
TRANSITIONS: dict[str, frozenset[str]] = {
    CREATING: frozenset({CREATED, STOPPED}),
    CREATED: frozenset({RUNNING, STOPPED, PAUSED}),
    RUNNING: frozenset({PAUSED, STOPPED}),
    PAUSED: frozenset({RUNNING, STOPPED}),
    STOPPED: frozenset({STOPPED}),
}

#: runc's id rule, ASCII only as in Go (Python's \w alone would let "nu-ünï" in)
_ID_RE = re.compile(r"^[\w+\-.]+$", re.ASCII)
#: The longest id: every file name zentry makes from one must fit NAME_MAX
#: (255), the longest being ``.claim.<id>.<pid>`` (pids have up to 7 digits).
#: runc's limit is NAME_MAX itself (its state directory is the id).
MAX_ID_LENGTH = 255 - len(".claim..") - 7
OCI_VERSION = "1.2.0"
DEFAULT_ROOT = "/run/zentry"


def validate_id(container_id: str) -> str:
    if not container_id or not _ID_RE.match(container_id) or container_id in (".", ".."):
        raise InvalidArgument(f"invalid container id {container_id!r}: must match {_ID_RE.pattern} (ASCII letters, digits, _ + - .)")
    if len(container_id) > MAX_ID_LENGTH:
        raise InvalidArgument(f"invalid container id: {len(container_id)} characters, at most {MAX_ID_LENGTH}")
    return container_id


def now_rfc3339() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


#: Record's fields in state.json order, with their defaults (a callable makes a fresh one)
_RECORD_FIELDS: dict[str, Any] = {
    "id": None, "bundle": None, "sandbox_id": None, "bus_dir": None,
    "status": CREATING, "pid": 0, "init_pid": 0, "controller_pid": 0, "gofer_pid": 0, "sandbox_pid": 0,
    "created": now_rfc3339, "exit_status": None, "owner": "root",
    "annotations": dict, "config": dict, "cgroup_procs": list,
}


class Record:
    """One container as the controller keeps it.

    A plain class (not a dataclass): every CLI call imports this module, and
    the controller serialises a record after each status change —
    ``dataclasses.asdict`` deep-copied the whole OCI config each time.
    """

    __slots__ = tuple(_RECORD_FIELDS)
    FIELDS = tuple(_RECORD_FIELDS)

    id: str
    bundle: str
    sandbox_id: str
    bus_dir: str
    status: str
    pid: int
    init_pid: int
    controller_pid: int
    gofer_pid: int
    sandbox_pid: int
    created: str
    exit_status: int | None
    owner: str
    annotations: dict[str, str]
    config: dict[str, Any]
    cgroup_procs: list[str]

    def __init__(self, **values: Any) -> None:
        for name, default in _RECORD_FIELDS.items():
            if name in values:
                value = values.pop(name)
            elif default is None and name in ("id", "bundle", "sandbox_id", "bus_dir"):
                raise TypeError(f"Record() missing required argument: {name!r}")
            else:
                value = default() if callable(default) else default
            setattr(self, name, value)
        if values:
            raise TypeError(f"Record() got unexpected arguments: {', '.join(sorted(values))}")

    def to_dict(self) -> dict[str, Any]:
        """The state.json object (values shared, not copied)."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Record) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, status={self.status!r}, pid={self.pid})"

    def require_status(self, action: str, *allowed: str) -> None:
        """A user error when the container is not in one of ``allowed``."""
        if self.status not in allowed:
            raise WrongState(f"cannot {action} container {self.id!r} in state {self.status}")

    def change_status(self, new: str) -> str:
        """Move to ``new``; an impossible transition is a bug."""
        old = self.status
        assert new in TRANSITIONS[old], f"invalid status transition {old} -> {new} for {self.id}"
        self.status = new
        return old

    def oci_state(self) -> dict[str, Any]:
        """The OCI state (runtime.md) plus zentry's extras."""
        state: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "status": self.status,
            "bundle": self.bundle,
            "rootfs": (self.config.get("root") or {}).get("path", ""),
            "created": self.created,
            "owner": self.owner,
            "annotations": self.annotations,
            "sandbox": self.sandbox_id,
        }
        if self.status in (CREATED, RUNNING, PAUSED):
            state["pid"] = self.pid
        else:
            state["pid"] = 0
        if self.exit_status is not None:
            state["exitStatus"] = self.exit_status
        return state


class Store:
    """The state directory of one ``--root``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def path(self, container_id: str) -> str:
        return os.path.join(self.dir(container_id), "state.json")

    def ensure_root(self) -> None:
        os.makedirs(self.root, mode=0o711, exist_ok=True)

    def ids(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.root) if os.path.isfile(os.path.join(self.root, n, "state.json")))
        except FileNotFoundError:
            return []

    def resolve(self, partial: str) -> str:
        """The full id for an id or a unique prefix of one."""
        validate_id(partial)
        if os.path.isfile(self.path(partial)):
            return partial
        matches = [i for i in self.ids() if i.startswith(partial)]
        if not matches:
            raise NotFound(f"container {partial!r} does not exist")
        if len(matches) > 1:
            raise Ambiguous(f"container id {partial!r} is ambiguous: it matches {', '.join(matches)}")
        return matches[0]

    def load(self, container_id: str) -> Record:
        try:
            with open(self.path(container_id)) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        except (OSError, ValueError) as err:
            raise NotFound(f"container {container_id!r} has an unreadable state file: {err}") from err
        known = {k: v for k, v in data.items() if k in Record.FIELDS}
        return Record(**known)

    def save(self, record: Record) -> None:
        """Write atomically: temp file, then rename over state.json.

        Readers (every CLI call) see the old or the new record, never a torn
        one. No fsync: the state is as volatile as the containers it
        describes (they do not survive a host crash either; the state root
        is /run), and two fsyncs per status change cost ~2 ms each on a
        disk-backed /run — runc does not sync its state either.
        """
        d = self.dir(record.id)
        tmp = os.path.join(d, f".state.json.{os.getpid()}")
        data = json.dumps(record.to_dict(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, self.path(record.id))

    def claim(self, container_id: str) -> None:
        """Make ``<root>/<id>`` with its lock file in one step; FileExistsError if taken.

        The directory appears already holding ``lock`` (built under a hidden
        name, then renamed with RENAME_NOREPLACE), so whatever a killed
        ``create`` leaves behind is recognisable as its leftover by
        :meth:`remove_stale`, and two creates of one id cannot both win.
        """
        self.ensure_root()
        tmp = os.path.join(self.root, f".claim.{container_id}.{os.getpid()}")
        os.mkdir(tmp, 0o711)
        try:
            os.close(os.open(os.path.join(tmp, "lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            from zentry.sentry.abi import libc  # only create claims: not on every call's import path

            libc.rename_noreplace(tmp, self.dir(container_id))
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove_stale(self, container_id: str) -> bool:
        """Remove the directory a killed ``create`` left before its first state.json.

        ``create`` makes ``<root>/<id>`` and holds its lock until the
        controller has written state.json; a ``create`` killed in between
        leaves a directory no command sees (runc leaves the same). It is
        stale only if there is still no state.json once we hold the lock
        without waiting — a ``create`` in progress holds it. Its actors were
        bound to the dead ``create`` and are gone; nothing outside the
        directory (and its bus directory) exists yet at that point.
        """
        d = self.dir(container_id)
        try:
            fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False  # no lock file: not made by create (or just being made)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a create is still working on it
            if not os.path.isdir(d) or os.path.exists(self.path(container_id)):
                return False
            import shutil

            from zentry.bus.endpoints import bus_dir_for

            bus_dir = bus_dir_for(d)
            if bus_dir != d:
                shutil.rmtree(bus_dir, ignore_errors=True)
            shutil.rmtree(d, ignore_errors=True)
            return not os.path.exists(d)
        finally:
            os.close(fd)

    def records(self) -> Iterator[Record]:
        for cid in self.ids():
            try:
                yield self.load(cid)
            except NotFound:
                continue


class Lock:
    """An flock(2) on ``<root>/<id>/lock`` (created with its directory)."""

    def __init__(self, store: Store, container_id: str, *, create: bool = False) -> None:
        self.path = os.path.join(store.dir(container_id), "lock")
        self.create = create
        self.fd = -1

    def __enter__(self) -> "Lock":
        if self.create:
            os.makedirs(os.path.dirname(self.path), mode=0o711, exist_ok=True)
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if self.create else 0)
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            raise NotFound(f"container {os.path.basename(os.path.dirname(self.path))!r} does not exist") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
