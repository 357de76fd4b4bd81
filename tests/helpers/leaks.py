"""Leak detection for tests that run real containers: processes, mounts,
cgroups and runtime state left behind.

`LeakWatch.snapshot()` records everything (all processes, every mount id in
our and pid 1's mount namespace, every cgroup directory up to depth 3 under
each hierarchy, the entries of watched state dirs).  `find_leaks(before)`
reports what is new and relevant:

* processes: new ones whose cmdline or cgroup mentions a needle (the test's
  private dirs, an engine namespace; "zentry" in strict mode, see
  tests/conftest.py) or whose parent chain leads to this (the test) process;
* mounts: new mountinfo lines mentioning a needle;
* cgroups: new directories whose path (below the hierarchy) mentions a
  needle, except `ignore_cgroups` (engine-wide parents such as podman's
  `libpod_parent`);
* state: anything left in a private `--root` (empty `*.lock` files excepted),
  new entries in state dirs the test owns (a containerd namespace's runtime
  root), and new entries naming a needle in shared ones (/run/runc: podman's
  container ids).

`cleanup(leaks)` removes what was found: kill by pid (thawing frozen
cgroups first), lazy-unmount deepest first, rmdir cgroups deepest first,
remove state, so the next test starts clean.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_DEPTH = 3
MNT_DETACH = 2

ProcKey = tuple[int, float]  # (pid, create_time): pids are reused


@dataclass
class Snapshot:
    procs: dict[ProcKey, str]
    mounts: dict[str, dict[str, str]]  # mountinfo source -> mount id -> line
    cgroups: set[str]                  # "<hierarchy>/<relative path>"
    state: dict[str, set[str]]         # shared state dir -> entry names


@dataclass
class Leaks:
    procs: list[tuple[int, str]] = field(default_factory=list)        # (pid, cmdline)
    mounts: list[tuple[str, str]] = field(default_factory=list)       # (mountinfo source, mount point)
    cgroups: list[str] = field(default_factory=list)                  # absolute paths
    state: list[str] = field(default_factory=list)                    # absolute paths

    def __bool__(self) -> bool:
        return bool(self.procs or self.mounts or self.cgroups or self.state)

    def report(self) -> str:
        lines = []
        for pid, cmd in self.procs:
            lines.append(f"  process {pid}: {cmd}")
        for src, mp in self.mounts:
            lines.append(f"  mount {mp} (in {src})")
        by_rel: dict[str, list[str]] = {}
        for cg in self.cgroups:  # one line per path, not per hierarchy
            hier, _, rel = os.path.relpath(cg, CGROUP_ROOT).partition("/")
            by_rel.setdefault(rel, []).append(hier)
        for rel, hiers in by_rel.items():
            lines.append(f"  cgroup /{rel} (in {', '.join(sorted(hiers))})")
        for st in self.state:
            lines.append(f"  state {st}")
        return "\n".join(lines)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()) or f"[{p.name()}]"
    except (psutil.Error, OSError):
        return "?"


def _cgroup_of(pid: int) -> str:
    """The cgroup paths of `pid` (one per hierarchy), joined; "" if gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return " ".join(line.rstrip("\n").split(":", 2)[-1] for line in f)
    except OSError:
        return ""


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return (s.replace("\\040", " ").replace("\\011", "\t")
             .replace("\\012", "\n").replace("\\134", "\\"))


def _read_mountinfo(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            return {line.split(" ", 1)[0]: line.rstrip("\n") for line in f}
    except OSError:
        return {}


def _mount_point(line: str) -> str:
    return _unescape(line.split(" ")[4])


def mountinfo_sources() -> list[str]:
    """Our mountinfo, and pid 1's when it lives in another mount namespace."""
    sources = ["/proc/self/mountinfo"]
    try:
        if os.readlink("/proc/1/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            sources.append("/proc/1/mountinfo")
    except OSError:
        pass
    return sources


def _walk_cgroups() -> set[str]:
    found: set[str] = set()
    if not CGROUP_ROOT.is_dir():
        return found
    for hier in CGROUP_ROOT.iterdir():
        if not hier.is_dir() or hier.is_symlink():
            continue
        stack = [(hier, 0)]
        while stack:
            d, depth = stack.pop()
            if depth >= CGROUP_DEPTH:
                continue
            try:
                children = [c for c in d.iterdir() if c.is_dir() and not c.is_symlink()]
            except OSError:
                continue
            for c in children:
                found.add(str(c.relative_to(CGROUP_ROOT)))
                stack.append((c, depth + 1))
    return found


def _protected_pids() -> set[int]:
    """This process and its ancestors (pytest, an xdist worker's master...)."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


class LeakWatch:
    """What to watch; see the module doc."""

    def __init__(self, needles: Iterable[str] = ("zentry",), *,
                 private_roots: Iterable[str] = (), state_dirs: Iterable[str] = (),
                 shared_state_dirs: Iterable[str] = (), ignore_cgroups: Iterable[str] = ()):
        self.needles: list[str] = [n for n in needles if n]
        self.private_roots: list[str] = list(private_roots)
        self.state_dirs: list[str] = list(state_dirs)
        self.shared_state_dirs: list[str] = list(shared_state_dirs)
        self.ignore_cgroups: set[str] = set(ignore_cgroups)
        self.watch_descendants = True

    # -- snapshot ---------------------------------------------------------
    @staticmethod
    def _entries(d: str) -> set[str]:
        try:
            return set(os.listdir(d))
        except OSError:
            return set()

    def snapshot(self) -> Snapshot:
        procs = {}
        for p in psutil.process_iter(["create_time"]):
            procs[(p.pid, p.info["create_time"] or 0.0)] = ""
        return Snapshot(
            procs=procs,
            mounts={src: _read_mountinfo(src) for src in mountinfo_sources()},
            cgroups=_walk_cgroups(),
            state={d: self._entries(d) for d in (*self.state_dirs, *self.shared_state_dirs)},
        )

    def baseline_state_dir(self, snap: Snapshot, d: str, shared: bool = False) -> None:
        """Watch `d` from now on (when it is learnt after the snapshot)."""
        dirs = self.shared_state_dirs if shared else self.state_dirs
        if d not in dirs:
            dirs.append(d)
        snap.state.setdefault(d, self._entries(d))

    # -- detection --------------------------------------------------------
    def _mentions(self, text: str) -> bool:
        return any(n in text for n in self.needles)

    def find_leaks(self, before: Snapshot) -> Leaks:
        leaks = Leaks()
        protected = _protected_pids()
        me = os.getpid()
        for p in psutil.process_iter(["create_time", "status"]):
            key = (p.pid, p.info["create_time"] or 0.0)
            if key in before.procs or p.pid in protected:
                continue
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue  # holds nothing; its parent will reap it
            cmd = _cmdline(p)
            descends = False
            if self.watch_descendants:
                try:
                    descends = any(a.pid == me for a in p.parents())
                except psutil.Error:
                    pass
            if descends or self._mentions(cmd) or self._mentions(_cgroup_of(p.pid)):
                leaks.procs.append((p.pid, cmd))
        for src in mountinfo_sources():
            old = before.mounts.get(src, {})
            for mid, line in _read_mountinfo(src).items():
                if mid not in old and self._mentions(_unescape(line)):
                    leaks.mounts.append((src, _mount_point(line)))
        for rel in sorted(_walk_cgroups() - before.cgroups):
            below = rel.split("/", 1)[1] if "/" in rel else ""
            if below in self.ignore_cgroups:
                continue
            if self._mentions(below):
                leaks.cgroups.append(str(CGROUP_ROOT / rel))
        for root in self.private_roots:
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if name.endswith(".lock") and _is_empty_file(path):
                        continue
                    leaks.state.append(path)
                for name in dirnames:
                    if not os.listdir(os.path.join(dirpath, name)):
                        leaks.state.append(os.path.join(dirpath, name))
        for d in self.state_dirs:
            for name in sorted(self._entries(d) - before.state.get(d, set())):
                leaks.state.append(os.path.join(d, name))
        for d in self.shared_state_dirs:  # others may write here: only ours
            for name in sorted(self._entries(d) - before.state.get(d, set())):
                if self._mentions(name):
                    leaks.state.append(os.path.join(d, name))
        return leaks

    def wait_for_leaks(self, before: Snapshot, grace: float = 3.0) -> Leaks:
        """find_leaks, re-polled for up to `grace` seconds: processes and
        mounts that are being torn down when the test returns get that long."""
        deadline = time.monotonic() + grace
        while True:
            leaks = self.find_leaks(before)
            if not leaks or time.monotonic() >= deadline:
                return leaks
            time.sleep(0.1)

    # -- cleanup ----------------------------------------------------------
    def cleanup(self, leaks: Leaks) -> list[str]:
        """Remove what `leaks` lists; returns the errors met (best effort)."""
        errors: list[str] = []
        for cg in leaks.cgroups:
            _thaw(cg)
        for pid, _ in leaks.procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as err:
                errors.append(f"kill {pid}: {err}")
        for pid, _ in leaks.procs:
            _reap(pid)
        for cg in leaks.cgroups:  # processes not seen by name but in the cgroup
            for pid in _cgroup_pids(cg):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for src, mp in sorted(leaks.mounts, key=lambda m: m[1].count("/"), reverse=True):
            err = umount(mp, other_ns=(src == "/proc/1/mountinfo"))
            if err:
                errors.append(err)
        for cg in sorted(leaks.cgroups, key=lambda c: c.count("/"), reverse=True):
            errors += rmdir_cgroup(cg)
        for path in sorted(leaks.state, key=len, reverse=True):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                errors.append(f"remove {path}: {err}")
        return errors


def _is_empty_file(path: str) -> bool:
    try:
        return os.path.isfile(path) and os.path.getsize(path) == 0
    except OSError:
        return False


def _reap(pid: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not psutil.pid_exists(pid):
                return
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.Error:
                return
        time.sleep(0.05)


def _thaw(cg: str) -> None:
    state = os.path.join(cg, "freezer.state")
    if os.path.exists(state):
        try:
            with open(state, "w") as f:
                f.write("THAWED")
        except OSError:
            pass


def _cgroup_pids(cg: str) -> list[int]:
    try:
        with open(os.path.join(cg, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def rmdir_cgroup(cg: str) -> list[str]:
    """Remove a cgroup directory and its children (deepest first)."""
    errors = []
    if not os.path.isdir(cg):
        return errors
    dirs = [dp for dp, _, _ in os.walk(cg)]
    for d in sorted(dirs, key=len, reverse=True):
        _thaw(d)
        for attempt in range(20):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if attempt == 19:
                    errors.append(f"rmdir {d}: {err}")
                for pid in _cgroup_pids(d):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.05)
    return errors


_libc = None


def umount(mount_point: str, other_ns: bool = False) -> str | None:
    """Lazily unmount `mount_point` (in pid 1's namespace if `other_ns`);
    returns an error text or None."""
    global _libc
    if other_ns:
        res = subprocess.run(["nsenter", "-t", "1", "-m", "umount", "-l", mount_point],
                             capture_output=True, text=True)
        return None if res.returncode == 0 else f"umount {mount_point} (pid 1 ns): {res.stderr.strip()}"
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.umount2(os.fsencode(mount_point), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err == 22:  # EINVAL: no longer a mount point
            return None
        return f"umount {mount_point}: {os.strerror(err)}"
    return None


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` in our namespace, deepest first."""
    path = os.path.realpath(path).rstrip("/")
    points = [_mount_point(line) for line in _read_mountinfo("/proc/self/mountinfo").values()]
    hits = [p for p in points if p == path or p.startswith(path + "/")]
    return sorted(set(hits), key=lambda p: p.count("/"), reverse=True)


def unmount_all_under(path: str) -> list[str]:
    """Lazy-unmount everything mounted at or below `path`; returns errors."""
    errors = []
    for _ in range(5):  # stacked mounts need several passes
        points = mounts_under(path)
        if not points:
            break
        for mp in points:
            err = umount(mp)
            if err:
                errors.append(err)
    return errors
