"""Container records on disk, the status table, IDs and locks.

On-disk format (owned by the controller; the CLI only reads it)::

    <root>/<id>/state.json   one JSON object, written atomically
                             (temp file, rename) after every change:
      id, status, bundle, pid (sandbox actor), init_pid, created (RFC 3339),
      sandbox_id, bus_dir, controller_pid, gofer_pid, sandbox_pid,
      exit_status (null until stopped), annotations, config (OCI config),
      owner, pid_starts ({"<pid>": start time in clock ticks since boot,
      /proc/<pid>/stat field 22} for every pid above, filled in by save())
    <root>/<id>/lock         flock(2) target serialising changes to <id>

A record whose controller is gone is reported ``stopped`` (its sandbox
cannot be running without it).

Access: whoever can write the root can make root act on a planted state
file (signal its pids, remove its paths). So the root, each container
directory and each state file must be owned by root (or the user running
zentry) and writable by nobody else, or the command refuses them
(``bus.access.check_private``); a pid from a state file is signalled only through
a pidfd whose process started when the record says
(:meth:`Record.own_process`), and only paths the root accounts for are
removed (:meth:`Store.own_bus_dir`).
"""

from __future__ import annotations

import fcntl
import json
import os
import re

from zentry.bus.access import check_private
from zentry.bus.proc import pid_alive  # noqa: F401  (re-exported: the one liveness check)
from zentry.bus.errors import Ambiguous, InvalidArgument, NotFound, PermissionDenied, WrongState

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
    "annotations": dict, "config": dict, "cgroup_procs": list, "pid_starts": dict,
}

#: the record's fields that hold a process id (their start times are recorded)
PID_FIELDS = tuple(name for name in _RECORD_FIELDS if name == "pid" or name.endswith("_pid"))


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if there is no such process."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


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
    pid_starts: dict[str, int]

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

    def note_pid_starts(self) -> None:
        """Record when each of the record's processes started (once per pid)."""
        starts = {}
        for name in PID_FIELDS:
            pid = getattr(self, name)
            if not pid:
                continue
            key = str(pid)
            start = self.pid_starts.get(key)
            if start is None:
                start = process_start(pid)
            if start is not None:
                starts[key] = start
        self.pid_starts = starts

    def own_process(self, pid: int) -> int | None:
        """A pidfd for ``pid`` if it is the process this record names (same
        start time as recorded), else None: a pid from a state file is never
        signalled on trust (it may have been reused, or planted)."""
        recorded = self.pid_starts.get(str(pid))
        if not pid or recorded is None or pid not in (getattr(self, n) for n in PID_FIELDS):
            return None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if process_start(pid) != recorded:  # checked after the pidfd pins the process
            os.close(fd)
            return None
        return fd

    def signal_own(self, pid: int, sig: int) -> bool:
        """Send ``sig`` to ``pid`` if it is this record's process (see own_process)."""
        import signal as signal_mod

        fd = self.own_process(pid)
        if fd is None:
            return False
        try:
            signal_mod.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

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
        self._root_checked = False

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def path(self, container_id: str) -> str:
        return os.path.join(self.dir(container_id), "state.json")

    def ensure_root(self) -> None:
        """Make the root (parents 0755, the root 0711, whatever the umask), then check it."""
        old = os.umask(0o022)
        try:
            os.makedirs(self.root, mode=0o711, exist_ok=True)
        finally:
            os.umask(old)
        self._root_checked = False
        self.check_root()

    def check_root(self) -> bool:
        """False if the root does not exist; PermissionDenied if others could write into it."""
        if self._root_checked:
            return True
        try:
            st = os.stat(self.root)  # the root itself may be a symlink (to a checked directory)
        except FileNotFoundError:
            return False
        check_private(self.root, "state root", directory=True, st=st)
        self._root_checked = True
        return True

    def ids(self) -> list[str]:
        """Ids with a state file; entries that fail check_private are left out (and logged)."""
        if not self.check_root():
            return []
        import stat as stat_mod

        out = []
        names = os.listdir(self.root)
        if any(name.startswith(".claim.") for name in names):
            self.remove_stale_claims()
        for name in names:
            try:
                if not stat_mod.S_ISDIR(os.lstat(self.dir(name)).st_mode):
                    continue  # not a container (a claim being made is a directory without state)
                self._check_entry(name)
            except (NotFound, FileNotFoundError, NotADirectoryError):
                continue
            except PermissionDenied as err:
                from zentry.bus.log import get_logger

                get_logger("zentry.state").warning("%s", err)
                continue
            out.append(name)
        return sorted(out)

    def _check_entry(self, container_id: str) -> None:
        """The container directory and its state file are private (see check_private); NotFound without a state file."""
        check_private(self.dir(container_id), "container directory", directory=True)
        try:
            check_private(self.path(container_id), "state file", directory=False)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None

    def own_bus_dir(self, rec: "Record") -> str | None:
        """``rec``'s bus directory if it is the one its sandbox's directory under this root
        implies (the directory itself, or its /run/zentry-bus twin), else None."""
        from zentry.bus.endpoints import bus_dir_for

        try:
            validate_id(rec.sandbox_id)
        except InvalidArgument:
            return None
        expected = bus_dir_for(self.dir(rec.sandbox_id))
        return expected if rec.bus_dir == expected else None

    def resolve(self, partial: str) -> str:
        """The full id for an id or a unique prefix of one."""
        validate_id(partial)
        if not self.check_root():
            raise NotFound(f"container {partial!r} does not exist")
        if os.path.isfile(self.path(partial)):
            return partial
        matches = [i for i in self.ids() if i.startswith(partial)]
        if not matches:
            raise NotFound(f"container {partial!r} does not exist")
        if len(matches) > 1:
            raise Ambiguous(f"container id {partial!r} is ambiguous: it matches {', '.join(matches)}")
        return matches[0]

    def load(self, container_id: str) -> Record:
        """The record of ``container_id``, after the access checks (module docstring)."""
        if not self.check_root():
            raise NotFound(f"container {container_id!r} does not exist")
        try:
            check_private(self.dir(container_id), "container directory", directory=True)
            fd = os.open(self.path(container_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"container {container_id!r} does not exist") from None
        except OSError as err:
            raise NotFound(f"container {container_id!r} has an unreadable state file: {err.strerror}") from err
        try:
            check_private(self.path(container_id), "state file", directory=False, st=os.fstat(fd))
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = json.loads(f.read())
        except (OSError, ValueError, RecursionError) as err:
            raise NotFound(f"container {container_id!r} has an unreadable state file: {err}") from None
        finally:
            os.close(fd)
        if not isinstance(data, dict) or data.get("id") != container_id:
            raise NotFound(f"container {container_id!r} has an unreadable state file: not its record")
        known = {k: v for k, v in data.items() if k in Record.FIELDS}
        try:
            rec = Record(**known)
        except TypeError as err:
            raise NotFound(f"container {container_id!r} has an unreadable state file: {err}") from None
        if rec.bus_dir != self.own_bus_dir(rec):
            raise PermissionDenied(f"refusing the state file of container {container_id!r}: its bus directory {rec.bus_dir} is not the one under {self.root}")
        return rec

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
        record.note_pid_starts()
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
        self.ensure_root()  # and check it: nobody else may plant state in it
        self.remove_stale_claims(container_id)
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

    def remove_stale_claims(self, container_id: str | None = None) -> None:
        """Remove the ``.claim.<id>.<pid>`` a ``create`` killed inside :meth:`claim`
        left (of ``container_id``, or of any id): its pid is dead — or is ours,
        and we are not claiming now — so nobody will rename it any more."""
        import shutil

        prefix = ".claim." if container_id is None else f".claim.{container_id}."
        try:
            names = [n for n in os.listdir(self.root) if n.startswith(prefix)]
        except OSError:
            return
        for name in names:
            pid = name.rsplit(".", 1)[1]
            if not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
                continue  # a create claiming right now
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

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
        self.remove_stale_claims(container_id)
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
            except PermissionDenied as err:
                from zentry.bus.log import get_logger

                get_logger("zentry.state").warning("%s", err)


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
