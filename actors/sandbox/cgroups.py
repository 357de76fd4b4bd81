"""A container's cgroup: placing, limiting, freezing, measuring and removing it.

The cgroupfs manager only (no systemd on the hosts zentry targets). Two
layouts are handled:

* cgroup v2 ("unified"): ``/sys/fs/cgroup`` is a cgroup2 mount with
  controllers; a container is one directory there.
* cgroup v1 (alone, or "hybrid" with an empty cgroup2 at
  ``/sys/fs/cgroup/unified``): each controller has its own hierarchy, and a
  container is one directory *in each* hierarchy, at the same path.

``Cgroup.for_container`` turns the OCI ``linux.cgroupsPath`` into a path;
``apply``/``update`` translate OCI ``linux.resources`` into controller files
(config-linux.md "Control groups"). Every OS error becomes a zentry error whose
one-line message names the file and value:
``cannot set memory.limit_in_bytes to 1: Device or resource busy``.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from functools import lru_cache
from typing import Iterator

from zentry.bus.errors import ConfigError, InvalidArgument, SystemFailure, Unsupported
from zentry.bus.log import get_logger
from zentry.bus.value import Value

log = get_logger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"

#: v1 controllers a container gets a directory in, when the host mounts them
V1_CONTROLLERS = (
    "cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices",
    "hugetlb", "net_cls", "net_prio",
)
#: the key of a hybrid host's cgroup2 hierarchy among the v1 ``mounts``
HYBRID_UNIFIED = "unified"
#: v2 controllers enabled for a container's subtree, when the host offers them
V2_CONTROLLERS = ("cpu", "cpuset", "io", "memory", "pids", "hugetlb")

#: v1 writes this (PAGE_COUNTER_MAX rounded to pages) for "no memory limit"
_V1_UNLIMITED = 1 << 62
UINT64_MAX = (1 << 64) - 1

_FREEZE_TIMEOUT = 5.0
_DESTROY_TIMEOUT = 10.0


# --- the host's layout ------------------------------------------------------------
class Hierarchy(Value):
    """Where the cgroup file systems are, and where this process sits in them.

    v1: ``mounts`` maps each controller to its mount point (co-mounted
    controllers share one), ``own`` maps it to this process's cgroup.
    v2: ``root`` is the cgroup2 mount point, ``own[""]`` this process's cgroup.
    """

    __slots__ = ("version", "root", "mounts", "own")
    __hash__ = None  # type: ignore[assignment]  # holds dicts

    def __init__(self, version: int, root: str = CGROUP_ROOT, mounts: dict[str, str] | None = None, own: dict[str, str] | None = None) -> None:
        self.version = version
        self.root = root
        self.mounts = {} if mounts is None else mounts
        self.own = {} if own is None else own

    @classmethod
    def detect(cls, mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup") -> "Hierarchy":
        """The layout of this host (see the module docstring)."""
        mounts = list(_read_mountinfo(mountinfo))
        own = read_proc_cgroup(proc_cgroup)
        for point, fstype, _ in mounts:
            if point == CGROUP_ROOT and fstype == "cgroup2":
                return cls(version=2, root=point, own={"": own.get("", "/")})
        by_controller: dict[str, str] = {}
        for point, fstype, options in mounts:
            if fstype != "cgroup":
                continue
            for opt in options.split(","):
                # named hierarchies (name=systemd) too: runc puts a container in
                # each, and its view of /sys/fs/cgroup binds its own cgroup there
                if opt in V1_CONTROLLERS or opt.startswith("name="):
                    by_controller.setdefault(opt, point)
        if not by_controller:
            raise Unsupported("no cgroup file system is mounted on this host")
        owned = {c: own.get(c, "/") for c in by_controller}
        # A hybrid host's cgroup2 (no controllers of its own): a container is
        # placed there too, as runc does (its /proc/self/cgroup "0::" line).
        for point, fstype, _ in mounts:
            if fstype == "cgroup2":
                by_controller[HYBRID_UNIFIED] = point
                owned[HYBRID_UNIFIED] = own.get("", "/")
                break
        return cls(version=1, root=CGROUP_ROOT, mounts=by_controller, own=owned)

    @classmethod
    def unified(cls, root: str, own: str = "/") -> "Hierarchy":
        """A v2 layout at ``root`` (e.g. the empty cgroup2 of a hybrid host)."""
        return cls(version=2, root=root, own={"": own})


def _unescape_mount(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _read_mountinfo(path: str) -> Iterator[tuple[str, str, str]]:
    """(mount point, fs type, super options) of every mount."""
    with open(path) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rest = left.split(), right.split()
            if len(fields) >= 5 and len(rest) >= 3:
                yield _unescape_mount(fields[4]), rest[0], rest[2]


def read_proc_cgroup(path: str) -> dict[str, str]:
    """controller -> cgroup path of a process (``""`` for the v2 hierarchy)."""
    out: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            _, controllers, cgpath = parts
            for name in controllers.split(",") if controllers else [""]:
                out[name] = cgpath
    return out


@lru_cache(maxsize=1)
def host_hierarchy() -> Hierarchy:
    """This host's layout, detected once per process."""
    return Hierarchy.detect()


# --- small file helpers -------------------------------------------------------------
def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_int(path: str) -> int:
    text = _read(path)
    return UINT64_MAX if text == "max" else int(text)


def _flat_keyed(path: str) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat, cgroup.events)."""
    out = {}
    try:
        text = _read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]`` (the kernel's cpu/node list format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return sorted(set(cpus))


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares [2, 262144] -> v2 cpu.weight [1, 10000], linearly."""
    if shares == 0:
        return 100  # unset: the v2 default
    shares = min(max(shares, 2), 262144)
    return 1 + (shares - 2) * 9999 // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """v1 blkio.weight [10, 1000] -> v2 io.weight [1, 10000], linearly."""
    weight = min(max(weight, 10), 1000)
    return 1 + (weight - 10) * 9999 // 990


# --- the cgroup ---------------------------------------------------------------------
_SYSTEMD_FORM = re.compile(r"^[^/:]*:[^/:]*:[^/:]+$")


#: Parent of containers that name no cgroupsPath.
DEFAULT_PARENT = "/zentry"


class Cgroup:
    """One container's cgroup, in every hierarchy of the host.

    ``path`` is the cgroup path as the OCI config gives it (absolute: from
    each hierarchy's root; relative: from this process's own cgroup there).
    """

    def __init__(self, path: str, hierarchy: Hierarchy | None = None) -> None:
        self.path = path
        self.hierarchy = hierarchy or host_hierarchy()
        self.version = self.hierarchy.version
        parts = [p for p in path.split("/") if p and p != "."]
        if not parts or ".." in parts:
            raise ConfigError(f'invalid linux.cgroupsPath "{path}": must name a cgroup below the root, without ".."')
        h = self.hierarchy
        if self.version == 2:
            base = "/" if path.startswith("/") else h.own.get("", "/")
            self._dirs = {"": _join(h.root, base, parts)}
        else:
            self._dirs = {}
            for ctrl, mount in h.mounts.items():
                base = "/" if path.startswith("/") else h.own.get(ctrl, "/")
                self._dirs[ctrl] = _join(mount, base, parts)

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, v{self.version})"

    @classmethod
    def for_container(cls, cgroups_path: str | None, container_id: str,
                      hierarchy: Hierarchy | None = None) -> "Cgroup":
        """The cgroup of a container from its ``linux.cgroupsPath``.

        Absent or empty: ``/zentry/<id>``. ``slice:prefix:name`` is the systemd
        manager's form, which needs systemd.
        """
        if not cgroups_path:
            if not container_id or "/" in container_id or container_id in (".", ".."):
                raise InvalidArgument(f'container id "{container_id}" cannot name a cgroup')
            return cls(f"{DEFAULT_PARENT}/{container_id}", hierarchy)
        if _SYSTEMD_FORM.match(cgroups_path):
            raise Unsupported("systemd cgroup manager is not available on this host (no systemd); use cgroupfs paths")
        return cls(cgroups_path, hierarchy)

    # --- where ----------------------------------------------------------------
    def dirs(self) -> list[str]:
        """The container's directory in each hierarchy (co-mounts once)."""
        return list(dict.fromkeys(self._dirs.values()))

    def dir(self, controller: str = "") -> str | None:
        """The directory holding ``controller``'s files (v2: the one directory)."""
        if self.version == 2:
            return self._dirs[""]
        return self._dirs.get(controller)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    def _need(self, controller: str) -> str:
        where = self.dir(controller)
        if where is None:
            raise Unsupported(f"the {controller} cgroup controller is not available on this host")
        return where

    # --- lifecycle -------------------------------------------------------------------
    def create(self) -> None:
        """Make the directories (and parents); v2 also enables controllers."""
        if self.version == 2:
            self._create_v2()
            return
        for ctrl, where in self._dirs.items():
            mount = self.hierarchy.mounts[ctrl]
            for attempt in range(3):
                try:
                    _makedirs(mount, where, cpuset=(ctrl == "cpuset"))
                    break
                except OSError as err:
                    # ENOENT, or ENODEV while the kernel still tears it down: the
                    # shared default parent was removed by a concurrent destroy
                    # (see destroy()): make it again
                    if err.errno not in (errno.ENOENT, errno.ENODEV):
                        raise SystemFailure(f"cannot create cgroup {where}: {err.strerror}") from err
                    if attempt == 2:
                        raise SystemFailure(f"cannot create cgroup {where}: its parent keeps disappearing") from None
                    time.sleep(0.01)

    def _create_v2(self) -> None:
        root, where = self.hierarchy.root, self._dirs[""]
        try:
            _makedirs(root, where, cpuset=False)
        except OSError as err:
            raise SystemFailure(f"cannot create cgroup {where}: {err.strerror}") from err
        # Each ancestor must hand its controllers down to its children.
        rel = os.path.relpath(os.path.dirname(where), root)
        node = root
        for part in [] if rel == "." else rel.split("/"):
            self._enable_controllers(node)
            node = os.path.join(node, part)
        self._enable_controllers(node)

    @staticmethod
    def _enable_controllers(node: str) -> None:
        try:
            available = set(_read(os.path.join(node, "cgroup.controllers")).split())
            enabled = set(_read(os.path.join(node, "cgroup.subtree_control")).split())
        except OSError:
            return
        for ctrl in V2_CONTROLLERS:
            if ctrl in available and ctrl not in enabled:
                try:
                    with open(os.path.join(node, "cgroup.subtree_control"), "w") as f:
                        f.write(f"+{ctrl}")
                except OSError as err:
                    # e.g. EBUSY: processes in an inner node; the files
                    # will be missing and apply() says which one.
                    log.info("cannot enable %s in %s: %s", ctrl, node, err.strerror)

    def prime_attach(self) -> None:
        """Start paying, on a thread, the kernel's first-migration cost before :meth:`add`.

        A write to ``cgroup.procs`` takes the cgroup threadgroup rwsem for
        writing; when no migration happened in the last RCU grace period
        that waits for one (rcu_sync: 6-22 ms here), and later writes
        within a grace period of it do not (about 0.1 ms). A no-op
        migration, this process into the cgroup it is already in, started
        before the init is forked, lets that wait run alongside the fork
        (making the cgroup waits for it: the write holds the cgroup
        mutex), and ``add`` then finds the lock's fast path (measured: the
        attach 9 ms -> 1 ms). Failure only means no head start.
        """
        h = self.hierarchy
        ctrl = "" if self.version == 2 else next((c for c in ("pids", "freezer", "memory", "cpu") if c in h.mounts), None)
        if ctrl is None:
            return
        mount = h.root if self.version == 2 else h.mounts[ctrl]
        procs = os.path.join(mount, h.own.get(ctrl, "/").lstrip("/"), "cgroup.procs")

        def migrate_self() -> None:
            try:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
            except OSError:
                pass

        import threading

        threading.Thread(target=migrate_self, name="cgroup-prime", daemon=True).start()

    def add(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cgroup everywhere."""
        for where in self.dirs():
            try:
                with open(os.path.join(where, "cgroup.procs"), "w") as f:
                    f.write(str(pid))
            except OSError as err:
                raise SystemFailure(f"cannot add process {pid} to cgroup {where}: {err.strerror}") from err

    def pids(self) -> list[int]:
        """Every process in the cgroup and its sub-cgroups, sorted."""
        where = self._tasks_dir()
        found: set[int] = set()
        if where is None:
            return []
        for top, _, _ in os.walk(where):
            try:
                text = _read(os.path.join(top, "cgroup.procs"))
            except (FileNotFoundError, ProcessLookupError):
                continue
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.ENODEV):
                    continue
                raise SystemFailure(f"cannot list processes of cgroup {top}: {err.strerror}") from err
            found.update(int(line) for line in text.split())
        return sorted(found)

    def _tasks_dir(self) -> str | None:
        # Any hierarchy holds every process; prefer the ones a container always has.
        for ctrl in ("", "pids", "freezer", "memory", "cpu", "devices"):
            where = self.dir(ctrl) if (ctrl or self.version == 2) else None
            if where and os.path.isdir(where):
                return where
        for where in self.dirs():
            if os.path.isdir(where):
                return where
        return None

    # --- freezer ---------------------------------------------------------------------
    def state(self) -> str:
        """``"thawed"``, ``"freezing"`` or ``"frozen"``."""
        try:
            return self._state()
        except FileNotFoundError as err:
            raise SystemFailure(f"cannot read the freezer state of cgroup {self.path}: it does not exist") from err

    def _state(self) -> str:
        if self.version == 2:
            events = _flat_keyed(os.path.join(self._dirs[""], "cgroup.events"))
            wanted = _read(os.path.join(self._dirs[""], "cgroup.freeze")) == "1"
            if events.get("frozen") == 1:
                return "frozen"
            return "freezing" if wanted else "thawed"
        where = self._need("freezer")
        return _read(os.path.join(where, "freezer.state")).lower()

    def freeze(self, timeout: float = _FREEZE_TIMEOUT) -> None:
        """Stop every process; returns once the kernel reports them frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = _FREEZE_TIMEOUT) -> None:
        """Let every process run again."""
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        wanted = "frozen" if frozen else "thawed"
        if self.version == 2:
            where, name, value = self._dirs[""], "cgroup.freeze", "1" if frozen else "0"
        else:
            where, name, value = self._need("freezer"), "freezer.state", wanted.upper()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            # v1 can stay FREEZING when a task is busy in the kernel; writing
            # FROZEN again retries the tasks that were missed.
            _write(where, name, value)
            if self.state() == wanted:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        if frozen:
            _write(where, name, "0" if self.version == 2 else "THAWED")
        raise SystemFailure(f"cannot {'freeze' if frozen else 'thaw'} cgroup {where}: still {self.state()} after {timeout:g}s")

    # --- signals and removal --------------------------------------------------------
    def kill_all(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to every process; returns how many were signalled.

        The cgroup is frozen while the list is read and signalled, so no
        process forks away or exits (freeing its pid for reuse) in between.
        A container that was paused stays paused, except for SIGKILL.
        """
        if self.version == 2 and sig == signal.SIGKILL and os.path.exists(os.path.join(self._dirs[""], "cgroup.kill")):
            count = len(self.pids())
            _write(self._dirs[""], "cgroup.kill", "1")
            return count
        can_freeze = self.version == 2 or self.dir("freezer") is not None
        was_frozen = can_freeze and self.exists() and self.state() == "frozen"
        froze = False
        if can_freeze and not was_frozen and self.exists():
            try:
                self.freeze()
                froze = True
            except SystemFailure as err:  # D-state task: signal anyway
                log.warning("%s", err)
        count = 0
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                    count += 1
                except ProcessLookupError:
                    pass
        finally:
            if froze or (was_frozen and sig == signal.SIGKILL):
                self.thaw()
        return count

    def destroy(self, timeout: float = _DESTROY_TIMEOUT) -> None:
        """Kill every process, wait until none is left, remove every directory.

        Idempotent: a cgroup that is partly or wholly gone is fine.
        """
        deadline = time.monotonic() + timeout
        while self.exists() and self.pids():
            if time.monotonic() > deadline:
                raise SystemFailure(f"cannot remove cgroup {self.path}: processes {self.pids()} do not die")
            self.kill_all(signal.SIGKILL)
            time.sleep(0.01)
        for where in self.dirs():
            _remove_tree(where, deadline)
        if self.path.startswith(DEFAULT_PARENT + "/"):
            # zentry's own default parent goes when its last container does
            # (rmdir fails harmlessly while another container lives in it).
            for where in self.dirs():
                try:
                    os.rmdir(os.path.dirname(where))
                except OSError:
                    pass

    # --- limits ----------------------------------------------------------------------
    def apply(self, resources: dict | None) -> None:
        """Write OCI ``linux.resources`` to the controller files."""
        resources = resources or {}
        if self.version == 2:
            _apply_v2(self, resources)
        else:
            _apply_v1(self, resources)

    def update(self, resources: dict | None) -> None:
        """``zentry update``: the same translation, on a live cgroup (only the
        values given are written; the CLI has dropped runc's "unchanged" zeros)."""
        self.apply(resources)


    # --- what the sentry shows in /proc -------------------------------------------
    def memory_limit(self) -> int | None:
        """The tightest memory limit on the cgroup or its ancestors (bytes), or None."""
        if self.version == 2:
            where, name, root = self._dirs[""], "memory.max", self.hierarchy.root
        else:
            where, name = self.dir("memory"), "memory.limit_in_bytes"
            if where is None:
                return None
            root = self.hierarchy.mounts["memory"]
        limits = [v for v in _up_the_tree(where, root, name) if v < _V1_UNLIMITED]
        return min(limits) if limits else None

    def cpu_quota(self) -> float | None:
        """CPUs' worth of time the cgroup may use (quota / period), or None."""
        if self.version == 2:
            try:
                quota, _, period = _read(os.path.join(self._dirs[""], "cpu.max")).partition(" ")
            except FileNotFoundError:
                return None
            return None if quota == "max" else int(quota) / int(period)
        where = self.dir("cpu")
        if where is None:
            return None
        try:
            quota = int(_read(os.path.join(where, "cpu.cfs_quota_us")))
            period = int(_read(os.path.join(where, "cpu.cfs_period_us")))
        except FileNotFoundError:
            return None
        return None if quota < 0 else quota / period

    def cpuset(self) -> list[int]:
        """The CPUs the cgroup's processes may run on."""
        if self.version == 2:
            names, where = ("cpuset.cpus.effective",), self._dirs[""]
        else:
            names, where = ("cpuset.effective_cpus", "cpuset.cpus"), self.dir("cpuset")
        for name in names:
            try:
                return parse_cpu_list(_read(os.path.join(where, name))) if where else []
            except FileNotFoundError:
                continue
        return list(range(os.cpu_count() or 1))

    def stats(self) -> dict:
        """Usage counters shaped like the ``data`` of ``runc events --stats``."""
        return _stats_v2(self) if self.version == 2 else _stats_v1(self)


def merge_resources(current: dict, update: dict) -> dict:
    """``current`` linux.resources with ``update``'s values over it, section by
    section (an update of ``memory.limit`` keeps ``memory.swap``), as the
    record keeps them after ``zentry update``."""
    for section, value in update.items():
        old = current.get(section)
        if isinstance(value, dict) and isinstance(old, dict):
            current[section] = {**old, **value}
        else:
            current[section] = value
    return current


def _join(mount: str, base: str, parts: list[str]) -> str:
    base_parts = [p for p in base.split("/") if p]
    return os.path.join(mount, *base_parts, *parts)


def _makedirs(top: str, where: str, *, cpuset: bool) -> None:
    rel = os.path.relpath(where, top)
    node = top
    for part in rel.split("/"):
        node = os.path.join(node, part)
        try:
            os.mkdir(node, 0o755)
        except FileExistsError:
            pass
        if cpuset:
            # A new cpuset starts with no CPUs and no memory nodes, and a
            # process cannot join it until it has both: inherit the parent's.
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(os.path.join(node, name)):
                    _write(node, name, _read(os.path.join(os.path.dirname(node), name)))


def _remove_tree(where: str, deadline: float) -> None:
    if not os.path.isdir(where):
        return
    # Sub-cgroups (a nested runtime, a cgroup namespace) go first.
    for top, subdirs, _ in os.walk(where, topdown=False):
        for sub in subdirs:
            _rmdir(os.path.join(top, sub), deadline)
    _rmdir(where, deadline)


def _rmdir(path: str, deadline: float) -> None:
    delay = 0.001
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:
            # EBUSY right after the last task exited: the kernel is still
            # tearing the css down.
            if err.errno != errno.EBUSY or time.monotonic() > deadline:
                raise SystemFailure(f"cannot remove cgroup {path}: {err.strerror}") from err
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _up_the_tree(where: str, root: str, name: str) -> Iterator[int]:
    node = where
    while True:
        try:
            yield _read_int(os.path.join(node, name))
        except (FileNotFoundError, ValueError):
            pass
        if os.path.normpath(node) == os.path.normpath(root) or node == "/":
            return
        node = os.path.dirname(node)


def _write(where: str, name: str, value: object) -> None:
    text = str(value)
    try:
        # No O_CREAT: a missing file must say ENOENT (cgroupfs answers EACCES
        # to a create), and a typo must never make a plain file.
        fd = os.open(os.path.join(where, name), os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.isdir(where):
            raise Unsupported(f"cannot set {name} to {text}: the kernel has no such cgroup file") from err
        why = err.strerror or os.strerror(err.errno or 0)
        if err.errno in (errno.EINVAL, errno.ERANGE, errno.EBUSY, errno.EPERM):
            raise InvalidArgument(f"cannot set {name} to {text}: {why}") from err
        raise SystemFailure(f"cannot set {name} to {text}: {why}") from err


def _exists(where: str | None, name: str) -> bool:
    return where is not None and os.path.exists(os.path.join(where, name))


# --- OCI resources -> v1 files ---------------------------------------------------------
def _apply_v1(cg: Cgroup, res: dict) -> None:
    if res.get("unified"):
        raise Unsupported("linux.resources.unified needs cgroup v2; this host has cgroup v1")
    if res.get("rdma"):
        raise Unsupported("the rdma cgroup controller is not supported by zentry")

    mem = res.get("memory") or {}
    if any(k in mem for k in ("limit", "swap", "reservation", "swappiness", "kernelTCP", "disableOOMKiller")):
        where = cg._need("memory")
        _apply_v1_memory(where, mem)

    cpu = res.get("cpu") or {}
    if any(k in cpu for k in ("shares", "quota", "period", "burst", "realtimePeriod", "realtimeRuntime", "idle")):
        where = cg._need("cpu")
        if cpu.get("shares"):
            _write(where, "cpu.shares", cpu["shares"])
        if "period" in cpu or "quota" in cpu:
            _set_v1_cfs(where, cpu.get("period"), cpu.get("quota"))
        if "burst" in cpu:
            _write(where, "cpu.cfs_burst_us", cpu["burst"])
        # rt_period must be set before a runtime that may exceed the old one.
        if cpu.get("realtimePeriod"):
            _write(where, "cpu.rt_period_us", cpu["realtimePeriod"])
        if cpu.get("realtimeRuntime"):
            _reserve_rt_runtime(cg.hierarchy.mounts["cpu"], where, cpu["realtimeRuntime"])
            _write(where, "cpu.rt_runtime_us", cpu["realtimeRuntime"])
        if "idle" in cpu:
            _write(where, "cpu.idle", cpu["idle"])
    if cpu.get("cpus") or cpu.get("mems"):
        where = cg._need("cpuset")
        if cpu.get("cpus"):
            _write(where, "cpuset.cpus", cpu["cpus"])
        if cpu.get("mems"):
            _write(where, "cpuset.mems", cpu["mems"])

    pids = res.get("pids")
    if pids is not None and "limit" in pids:
        _write(cg._need("pids"), "pids.max", _pids_max(pids["limit"]))

    blkio = res.get("blockIO") or {}
    if blkio:
        _apply_v1_blkio(cg._need("blkio"), blkio)

    devices = res.get("devices")
    if devices:
        where = cg._need("devices")
        for rule in devices:
            _write(where, "devices.allow" if rule.get("allow") else "devices.deny", _device_rule(rule))

    for page in res.get("hugepageLimits") or []:
        _write(cg._need("hugetlb"), f"hugetlb.{page['pageSize']}.limit_in_bytes", page["limit"])

    net = res.get("network") or {}
    if "classID" in net:
        _write(cg._need("net_cls"), "net_cls.classid", net["classID"])
    for prio in net.get("priorities") or []:
        _write(cg._need("net_prio"), "net_prio.ifpriomap", f"{prio['name']} {prio['priority']}")


def _apply_v1_memory(where: str, mem: dict) -> None:
    limit, swap = mem.get("limit"), mem.get("swap")
    has_memsw = _exists(where, "memory.memsw.limit_in_bytes")
    if swap is not None and not has_memsw:
        if swap not in (-1, 0) and swap != limit:
            raise Unsupported("memory.swap needs swap accounting (memory.memsw.*), which this kernel lacks")
        swap = None
    # The kernel insists on limit <= memsw limit at every step, so the order
    # of the two writes depends on whether the limit grows or shrinks.
    if limit is not None and swap is not None:
        current_memsw = _read_int(os.path.join(where, "memory.memsw.limit_in_bytes"))
        new_limit = _V1_UNLIMITED if limit == -1 else limit
        if new_limit > current_memsw:
            _write(where, "memory.memsw.limit_in_bytes", swap)
            _write(where, "memory.limit_in_bytes", limit)
        else:
            _write(where, "memory.limit_in_bytes", limit)
            _write(where, "memory.memsw.limit_in_bytes", swap)
    elif limit is not None:
        _write(where, "memory.limit_in_bytes", limit)
    elif swap is not None:
        _write(where, "memory.memsw.limit_in_bytes", swap)
    if mem.get("reservation") is not None:
        _write(where, "memory.soft_limit_in_bytes", mem["reservation"])
    if mem.get("swappiness") is not None and mem["swappiness"] <= 100:
        _write(where, "memory.swappiness", mem["swappiness"])
    elif mem.get("swappiness") is not None:
        raise InvalidArgument(f"invalid memory swappiness {mem['swappiness']}: must be 0 to 100")
    if mem.get("kernelTCP") is not None and _exists(where, "memory.kmem.tcp.limit_in_bytes"):
        _write(where, "memory.kmem.tcp.limit_in_bytes", mem["kernelTCP"])
    if mem.get("disableOOMKiller"):
        _write(where, "memory.oom_control", "1")


def _reserve_rt_runtime(mount: str, where: str, runtime: int) -> None:
    """Give the ancestors of ``where`` the realtime runtime it asks for.

    A cgroup's children share its cpu.rt_runtime_us, and a new cgroup has
    none: a container under zentry's parent (or any parent made for it)
    could never get realtime time. runc puts a container directly below the
    root, whose runtime is the system's; we raise each ancestor below the
    root, top down, to what its children hold plus ``runtime`` (never
    lowering one). The root's own budget (the kernel's sched_rt_runtime_us)
    is the limit, as with runc.
    """
    if runtime <= 0:
        return
    rel = os.path.relpath(os.path.dirname(where), mount)
    node = mount
    for part in [] if rel == "." else rel.split("/"):
        node = os.path.join(node, part)
        held = 0
        for entry in os.scandir(node):
            if entry.is_dir(follow_symlinks=False):
                try:
                    held += max(0, _read_int(os.path.join(entry.path, "cpu.rt_runtime_us")))
                except (OSError, ValueError):
                    pass
        try:
            have = _read_int(os.path.join(node, "cpu.rt_runtime_us"))
        except (OSError, ValueError):
            continue
        if 0 <= have < held + runtime:
            _write(node, "cpu.rt_runtime_us", held + runtime)


def _set_v1_cfs(where: str, period: int | None, quota: int | None) -> None:
    # Each write is checked against the other value, so one order can fail
    # where the other succeeds: try period first, then the reverse.
    steps = []
    if period:
        steps.append(("cpu.cfs_period_us", period))
    if quota is not None and quota != 0:
        steps.append(("cpu.cfs_quota_us", quota))
    try:
        for name, value in steps:
            _write(where, name, value)
    except InvalidArgument:
        for name, value in reversed(steps):
            _write(where, name, value)


def _apply_v1_blkio(where: str, blkio: dict) -> None:
    # bfq's files replace the CFQ ones on modern kernels.
    prefix = "blkio.bfq." if _exists(where, "blkio.bfq.weight") else "blkio."
    if blkio.get("weight"):
        _write(where, prefix + "weight", blkio["weight"])
    if blkio.get("leafWeight"):
        _write(where, "blkio.leaf_weight", blkio["leafWeight"])
    for dev in blkio.get("weightDevice") or []:
        if dev.get("weight"):
            _write(where, prefix + "weight_device", f"{dev['major']}:{dev['minor']} {dev['weight']}")
        if dev.get("leafWeight"):
            _write(where, "blkio.leaf_weight_device", f"{dev['major']}:{dev['minor']} {dev['leafWeight']}")
    for key, name in _THROTTLES_V1.items():
        for dev in blkio.get(key) or []:
            _write(where, name, f"{dev['major']}:{dev['minor']} {dev.get('rate', 0)}")


_THROTTLES_V1 = {
    "throttleReadBpsDevice": "blkio.throttle.read_bps_device",
    "throttleWriteBpsDevice": "blkio.throttle.write_bps_device",
    "throttleReadIOPSDevice": "blkio.throttle.read_iops_device",
    "throttleWriteIOPSDevice": "blkio.throttle.write_iops_device",
}
_THROTTLES_V2 = {
    "throttleReadBpsDevice": "rbps",
    "throttleWriteBpsDevice": "wbps",
    "throttleReadIOPSDevice": "riops",
    "throttleWriteIOPSDevice": "wiops",
}


def _pids_max(limit: int) -> str:
    # config-linux.md: -1 is "no limit"; 0 is a real limit of zero tasks.
    return "max" if limit < 0 else str(limit)


def _device_rule(rule: dict) -> str:
    kind = rule.get("type") or "a"
    if kind not in ("a", "b", "c"):
        raise InvalidArgument(f'invalid device cgroup rule type "{kind}": must be a, b or c')
    access = rule.get("access") or "rwm"
    if not access or set(access) - set("rwm"):
        raise InvalidArgument(f'invalid device cgroup rule access "{access}": letters r, w, m only')
    major = "*" if rule.get("major") in (None, -1) else rule["major"]
    minor = "*" if rule.get("minor") in (None, -1) else rule["minor"]
    return f"{kind} {major}:{minor} {access}"


# --- OCI resources -> v2 files ---------------------------------------------------------
def _apply_v2(cg: Cgroup, res: dict) -> None:
    where = cg._dirs[""]
    if res.get("rdma"):
        raise Unsupported("the rdma cgroup controller is not supported by zentry")

    mem = res.get("memory") or {}
    limit, swap = mem.get("limit"), mem.get("swap")
    # OCI swap counts memory+swap; v2 memory.swap.max counts swap alone.
    # Checked before any write, so a refused update changes nothing.
    swap_max: int | str | None = None
    if swap is not None:
        if swap == -1:
            swap_max = "max"
        elif limit is not None and limit > 0:
            if swap < limit:
                raise InvalidArgument(f"memory+swap limit {swap} is below the memory limit {limit}")
            swap_max = swap - limit
        elif swap > 0:
            raise InvalidArgument("a memory+swap limit needs a memory limit on cgroup v2")
    if limit is not None:
        _write(where, "memory.max", "max" if limit == -1 else limit)
    if swap_max is not None:
        _write(where, "memory.swap.max", swap_max)
    if mem.get("reservation") is not None:
        _write(where, "memory.low", "max" if mem["reservation"] == -1 else mem["reservation"])
    if mem.get("swappiness") not in (None, 0):
        log.info("memory.swappiness has no cgroup v2 equivalent; ignored")
    if mem.get("disableOOMKiller"):
        log.info("disableOOMKiller has no cgroup v2 equivalent; ignored")

    cpu = res.get("cpu") or {}
    if cpu.get("shares"):
        _write(where, "cpu.weight", shares_to_weight(cpu["shares"]))
    if cpu.get("quota") or cpu.get("period"):
        quota = cpu.get("quota")
        period = cpu.get("period")
        if period is None or quota is None:
            old_quota, old_period = _read(os.path.join(where, "cpu.max")).split()
            period = period or int(old_period)
            quota = quota if quota is not None else (-1 if old_quota == "max" else int(old_quota))
        _write(where, "cpu.max", f"{'max' if quota is None or quota < 0 else quota} {period}")
    if "burst" in cpu:
        _write(where, "cpu.max.burst", cpu["burst"])
    if "idle" in cpu:
        _write(where, "cpu.idle", cpu["idle"])
    if cpu.get("realtimePeriod") or cpu.get("realtimeRuntime"):
        raise Unsupported("realtime CPU limits are not available with cgroup v2")
    if cpu.get("cpus"):
        _write(where, "cpuset.cpus", cpu["cpus"])
    if cpu.get("mems"):
        _write(where, "cpuset.mems", cpu["mems"])

    pids = res.get("pids")
    if pids is not None and "limit" in pids:
        _write(where, "pids.max", _pids_max(pids["limit"]))

    blkio = res.get("blockIO") or {}
    bfq = _exists(where, "io.bfq.weight")
    if blkio.get("weight"):
        if bfq:
            _write(where, "io.bfq.weight", blkio["weight"])
        else:
            _write(where, "io.weight", f"default {blkio_weight_to_io_weight(blkio['weight'])}")
    for dev in blkio.get("weightDevice") or []:
        if dev.get("weight"):
            w = dev["weight"] if bfq else blkio_weight_to_io_weight(dev["weight"])
            _write(where, "io.bfq.weight" if bfq else "io.weight", f"{dev['major']}:{dev['minor']} {w}")
    for key, word in _THROTTLES_V2.items():
        for dev in blkio.get(key) or []:
            rate = dev.get("rate", 0)
            _write(where, "io.max", f"{dev['major']}:{dev['minor']} {word}={rate or 'max'}")

    if res.get("devices"):
        # v2 has no devices files: the rules are an eBPF program attached to
        # the cgroup, which zentry does not load yet. The sentry and the
        # gofer's /dev still decide which devices exist in the container.
        log.info("device cgroup rules need eBPF on cgroup v2; not applied")

    for page in res.get("hugepageLimits") or []:
        _write(where, f"hugetlb.{page['pageSize']}.max", page["limit"])

    if (res.get("network") or {}).get("classID") or (res.get("network") or {}).get("priorities"):
        raise Unsupported("net_cls/net_prio do not exist on cgroup v2")

    for key, value in (res.get("unified") or {}).items():
        if "/" in key or key.startswith(".") or not key:
            raise InvalidArgument(f'invalid linux.resources.unified key "{key}"')
        if not os.path.exists(os.path.join(where, key)):
            ctrl = key.partition(".")[0]
            raise Unsupported(f'cannot set {key}: the "{ctrl}" controller is not enabled for this cgroup')
        _write(where, key, value)


# --- stats ------------------------------------------------------------------------------
def _ints(path: str) -> list[int]:
    try:
        return [int(x) for x in _read(path).split()]
    except FileNotFoundError:
        return []


def _int_or(path: str, default: int = 0) -> int:
    try:
        return _read_int(path)
    except (FileNotFoundError, ValueError):
        return default


def _stats_v1(cg: Cgroup) -> dict:
    data: dict = {}
    acct, cpu = cg.dir("cpuacct"), cg.dir("cpu")
    if acct and os.path.isdir(acct):
        usage = {
            "total": _int_or(os.path.join(acct, "cpuacct.usage")),
            "percpu": _ints(os.path.join(acct, "cpuacct.usage_percpu")),
            "percpu_kernel": _ints(os.path.join(acct, "cpuacct.usage_percpu_sys")),
            "percpu_user": _ints(os.path.join(acct, "cpuacct.usage_percpu_user")),
            "kernel": _int_or(os.path.join(acct, "cpuacct.usage_sys")),
            "user": _int_or(os.path.join(acct, "cpuacct.usage_user")),
        }
        data["cpu"] = {"usage": usage}
    if cpu and os.path.isdir(cpu):
        st = _flat_keyed(os.path.join(cpu, "cpu.stat"))
        data.setdefault("cpu", {})["throttling"] = {
            "periods": st.get("nr_periods", 0),
            "throttled_periods": st.get("nr_throttled", 0),
            "throttled_time": st.get("throttled_time", 0),
        }
    mem = cg.dir("memory")
    if mem and os.path.isdir(mem):
        def entry(prefix: str) -> dict:
            return {
                "limit": _int_or(os.path.join(mem, prefix + "limit_in_bytes")),
                "usage": _int_or(os.path.join(mem, prefix + "usage_in_bytes")),
                "max": _int_or(os.path.join(mem, prefix + "max_usage_in_bytes")),
                "failcnt": _int_or(os.path.join(mem, prefix + "failcnt")),
            }
        raw = _flat_keyed(os.path.join(mem, "memory.stat"))
        data["memory"] = {
            "cache": raw.get("total_cache", raw.get("cache", 0)),
            "usage": entry("memory."),
            "swap": entry("memory.memsw."),
            "kernel": entry("memory.kmem."),
            "kernelTCP": entry("memory.kmem.tcp."),
            "raw": raw,
        }
        oom = _flat_keyed(os.path.join(mem, "memory.oom_control"))
        data["memory"]["oom_kill"] = oom.get("oom_kill", 0)
    pids = cg.dir("pids")
    if pids and os.path.isdir(pids):
        limit = _int_or(os.path.join(pids, "pids.max"))
        data["pids"] = {"current": _int_or(os.path.join(pids, "pids.current")),
                        "limit": 0 if limit == UINT64_MAX else limit}
    blkio = cg.dir("blkio")
    if blkio and os.path.isdir(blkio):
        data["blkio"] = {
            "ioServiceBytesRecursive": _blkio_entries(os.path.join(blkio, "blkio.throttle.io_service_bytes_recursive")),
            "ioServicedRecursive": _blkio_entries(os.path.join(blkio, "blkio.throttle.io_serviced_recursive")),
        }
    hugetlb = cg.dir("hugetlb")
    if hugetlb and os.path.isdir(hugetlb):
        data["hugetlb"] = {}
        for name in sorted(os.listdir(hugetlb)):
            m = re.fullmatch(r"hugetlb\.([0-9]+[KMG]B)\.usage_in_bytes", name)
            if m:
                size = m.group(1)
                data["hugetlb"][size] = {
                    "usage": _int_or(os.path.join(hugetlb, name)),
                    "max": _int_or(os.path.join(hugetlb, f"hugetlb.{size}.max_usage_in_bytes")),
                    "failcnt": _int_or(os.path.join(hugetlb, f"hugetlb.{size}.failcnt")),
                }
    return data


def _blkio_entries(path: str) -> list[dict]:
    out = []
    try:
        text = _read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0]:
            major, _, minor = parts[0].partition(":")
            out.append({"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])})
    return out


def _stats_v2(cg: Cgroup) -> dict:
    where = cg._dirs[""]
    data: dict = {}
    st = _flat_keyed(os.path.join(where, "cpu.stat"))
    if st:
        data["cpu"] = {
            "usage": {
                "total": st.get("usage_usec", 0) * 1000,
                "percpu": [],
                "kernel": st.get("system_usec", 0) * 1000,
                "user": st.get("user_usec", 0) * 1000,
            },
            "throttling": {
                "periods": st.get("nr_periods", 0),
                "throttled_periods": st.get("nr_throttled", 0),
                "throttled_time": st.get("throttled_usec", 0) * 1000,
            },
        }
    if _exists(where, "memory.current"):
        raw = _flat_keyed(os.path.join(where, "memory.stat"))
        events = _flat_keyed(os.path.join(where, "memory.events"))
        data["memory"] = {
            "cache": raw.get("file", 0),
            "usage": {
                "usage": _int_or(os.path.join(where, "memory.current")),
                "limit": _int_or(os.path.join(where, "memory.max"), UINT64_MAX),
                "max": _int_or(os.path.join(where, "memory.peak")),
                "failcnt": events.get("max", 0),
            },
            "swap": {
                "usage": _int_or(os.path.join(where, "memory.swap.current")),
                "limit": _int_or(os.path.join(where, "memory.swap.max"), UINT64_MAX),
            },
            "raw": raw,
            "oom_kill": events.get("oom_kill", 0),
        }
    if _exists(where, "pids.current"):
        limit = _int_or(os.path.join(where, "pids.max"))
        data["pids"] = {"current": _int_or(os.path.join(where, "pids.current")),
                        "limit": 0 if limit == UINT64_MAX else limit}
    if _exists(where, "io.stat"):
        service_bytes, serviced = [], []
        for line in _read(os.path.join(where, "io.stat")).splitlines():
            dev, *pairs = line.split()
            major, _, minor = dev.partition(":")
            values = dict(p.split("=", 1) for p in pairs if "=" in p)
            for op, b, n in (("Read", "rbytes", "rios"), ("Write", "wbytes", "wios")):
                service_bytes.append({"major": int(major), "minor": int(minor), "op": op, "value": int(values.get(b, 0))})
                serviced.append({"major": int(major), "minor": int(minor), "op": op, "value": int(values.get(n, 0))})
        data["blkio"] = {"ioServiceBytesRecursive": service_bytes, "ioServicedRecursive": serviced}
    return data

