"""One pooled sandbox as the node agent sees it: its bundle, its start, its
channel to the exec server that is its init (``init.c``), its end.

A sandbox is an ordinary zentry container (``zentry run -d`` under the
agent's --root), whose config is the pool's template with:

- ``process.args`` the exec server, bind-mounted read-only at ``INIT_PATH``,
  with fd 3 (``--preserve-fds 1``) one end of a SOCK_SEQPACKET pair whose
  other end the agent keeps (the channel);
- the root an overlay with its upper layer in memory
  (``dev.zentry.rootfs.overlay=memory``): every sandbox starts from the
  template's pristine rootfs, and is destroyed (never reused) on release;
- the pool's memory and CPU limits.

The channel's wire format is in ``init.c``. The agent never blocks on a
sandbox: starting and deleting are child processes it watches through
pidfds; the channel is non-blocking.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time

from zentry.actors.pool.config import PoolConfig, deep_merge
from zentry.bus.errors import SystemFailure

#: Where the exec server appears in every pooled sandbox.
INIT_PATH = "/.zentry-pool-init"
OVERLAY_ANNOTATION = "dev.zentry.rootfs.overlay"
POOL_ANNOTATION = "dev.zentry.pool"

OP_EXEC, OP_PUT, OP_GET, OP_KILL = 1, 2, 3, 4
HELLO, STARTED, EXITED, REFUSED = 0, 1, 2, 3
_REPLY = struct.Struct("IIii")
_HEADER = struct.Struct("8I")

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "init.c")


#: where the agent builds the exec server (once per init.c version)
CACHE_DIR = os.environ.get("ZENTRY_POOL_CACHE", "/var/cache/zentry")


def init_binary(cache_dir: str = CACHE_DIR) -> str:
    """The exec server's static binary for this init.c, built once into ``cache_dir``
    (``cc -static``; a prebuilt ``zentry-pool-init-<hash>`` next to init.c is used when present)."""
    with open(_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    prebuilt = os.path.join(os.path.dirname(_SOURCE), f"zentry-pool-init-{digest}")
    if os.access(prebuilt, os.X_OK):
        return prebuilt
    os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    target = os.path.join(cache_dir, f"zentry-pool-init-{digest}")
    if os.access(target, os.X_OK):
        return target
    tmp = f"{target}.{os.getpid()}"
    cc = os.environ.get("CC", "cc")
    try:
        subprocess.run([cc, "-static", "-O2", "-o", tmp, _SOURCE], check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise SystemFailure(f"cannot build the pool's exec server: no C compiler ({cc}); install gcc and libc6-dev") from err
    except subprocess.CalledProcessError as err:
        raise SystemFailure(f"cannot build the pool's exec server ({cc} -static): {err.stderr.strip()[-400:]}") from err
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target


def sandbox_config(pool: PoolConfig, init_bin: str, *, node: str) -> dict:
    """The config.json of one of ``pool``'s sandboxes."""
    config = deep_merge(pool.config, {})
    process = config.setdefault("process", {})
    process["args"] = [INIT_PATH]
    process["terminal"] = False
    config.setdefault("mounts", []).append(
        {"destination": INIT_PATH, "type": "bind", "source": init_bin, "options": ["rbind", "ro", "nosuid", "nodev"]})
    annotations = config.setdefault("annotations", {})
    annotations[OVERLAY_ANNOTATION] = f"memory:{pool.overlay}" if pool.overlay else "memory"
    annotations[POOL_ANNOTATION] = f"{node}/{pool.name}"
    resources = config.setdefault("linux", {}).setdefault("resources", {})
    if pool.memory:
        resources.setdefault("memory", {})["limit"] = pool.memory
    if pool.cpus:
        period = 100_000
        resources.setdefault("cpu", {}).update({"quota": int(pool.cpus * period), "period": period})
    return config


#: The agent runs at this nice value (when it may) and starts its children back at 0:
#: starting and deleting sandboxes is background work, a claim or an exec is not.
AGENT_NICE = -5
_NICE = shutil.which("nice") or "/usr/bin/nice"


def raise_priority() -> int:
    """The agent's own priority above its background work; returns the nice its children must undo."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, AGENT_NICE)
    except OSError:
        return 0
    return -AGENT_NICE


def spawn(argv: list[str], *, fd3: int | None = None, log_path: str, renice: int = 0) -> tuple[int, int]:
    """Start ``argv`` without blocking (stdin /dev/null, stdout+stderr to ``log_path``,
    ``fd3`` as its fd 3, ``renice`` added to its nice value); returns (pid, pidfd)."""
    if renice:
        argv = [_NICE, "-n", str(renice), *argv]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, log, 1), (os.POSIX_SPAWN_DUP2, log, 2)]
        if fd3 is not None:
            actions.append((os.POSIX_SPAWN_DUP2, fd3, 3))
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions, setsigdef=(15, 2, 1))
    finally:
        os.close(log)
        os.close(null)
    return pid, os.pidfd_open(pid)


def log_tail(path: str, limit: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


class Job:
    """A request the exec server runs: exec, put or get."""

    __slots__ = ("rid", "op", "req", "sandbox", "pipes", "buffers", "started_ns", "status", "timed_out", "stream",
                 "args", "limit", "truncated", "writer", "timer_due")

    def __init__(self, rid: int, op: int, req, sandbox: "PoolSandbox", *, stream: bool = False, args=(), limit: int = 0) -> None:
        self.rid = rid
        self.op = op
        self.req = req
        self.sandbox = sandbox
        self.pipes: dict[int, int] = {}  # our read end -> 1 or 2
        self.buffers = {1: bytearray(), 2: bytearray()}
        self.started_ns = time.perf_counter_ns()
        self.status: int | None = None
        self.timed_out = False
        self.stream = stream
        self.args = list(args)
        self.limit = limit
        self.truncated = False
        self.writer = None
        self.timer_due = 0.0


class PoolSandbox:
    """One sandbox of a pool; ``state`` is starting, warm, claimed or dying."""

    def __init__(self, pool: PoolConfig, sandbox_id: str, bundle_dir: str) -> None:
        self.pool = pool
        self.id = sandbox_id
        self.bundle_dir = bundle_dir
        self.state = "starting"
        self.chan: socket.socket | None = None
        self.container_pidfd = -1
        self.start_status: int | None = None
        self.hello = False
        self.start_ns = time.perf_counter_ns()
        self.claimed_mono = 0.0
        self.last_used = 0.0
        self.ttl = 0.0
        self.idle = 0.0
        self.expires_ns = 0
        self.claim_id = ""
        self.owner = ""
        self.parent = ""  # the request that caused its start
        self.jobs: dict[int, Job] = {}
        self.busy = 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.bundle_dir, "zentry.log")

    def prepare(self, init_bin: str, node: str) -> socket.socket:
        """Write the bundle and make the channel; returns the init's end (for ``zentry run -d``'s fd 3)."""
        os.makedirs(self.bundle_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.bundle_dir, "config.json"), "w") as f:
            json.dump(sandbox_config(self.pool, init_bin, node=node), f)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self.chan = ours
        return theirs

    def run_argv(self, zentry: str, root: str) -> list[str]:
        return [zentry, "--root", root, "run", "-d", "--preserve-fds", "1", "--bundle", self.bundle_dir, self.id]

    def send(self, op: int, rid: int, args: list[str], *, env: list[str] = (), cwd: str = "", uid: int = 0, gid: int = 0,
             groups: list[int] = (), mode: int = 0, fds: list[int] = ()) -> None:
        data = _HEADER.pack(op, rid, uid, gid, mode, len(args), len(env), len(groups))
        data += struct.pack(f"{len(groups)}I", *groups)
        data += b"".join(s.encode() + b"\0" for s in [cwd, *args, *env])
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        try:
            self.chan.sendmsg([data], anc)
        except BlockingIOError as err:  # 200 KiB of queued requests: the init is stuck
            raise SystemFailure(f"sandbox {self.id}: its exec server is not reading requests") from err

    def replies(self) -> tuple[list[tuple[int, int, int, int]], bool]:
        """What the exec server said since the last call, and whether the channel ended."""
        out = []
        while True:
            try:
                data = self.chan.recv(64)
            except BlockingIOError:
                return out, False
            except (ConnectionResetError, BrokenPipeError):
                return out, True
            if not data:
                return out, True
            if len(data) >= _REPLY.size:
                out.append(_REPLY.unpack(data[:_REPLY.size]))

    def close_channel(self) -> None:
        if self.chan is not None:
            self.chan.close()
            self.chan = None


def remove_bundle(bundle_dir: str) -> None:
    shutil.rmtree(bundle_dir, ignore_errors=True)
