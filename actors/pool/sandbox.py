"""A pool's template and its sandboxes, as the node agent sees them.

A pool's **template** is an ordinary zentry container (``zentry run -d
--pool-spawner`` under the agent's --root): the pool's config with its
root read-only, every capability, no seccomp filter and no resource
limits, and as its init the spawner (``init.c --spawner``) with fd 3 one
end of a SOCK_SEQPACKET pair whose other end the agent keeps. Its
controller, sandbox actor (and sentry) and gofer are the pool's: made once.

A **sandbox** is a child the spawner makes on request: new mount, pid, ipc,
uts, time (unless the config has one) and, as the pool's config asks,
network namespaces; a fresh root,
an overlay of the template's with its upper layer in a new tmpfs; a fresh
copy of the template's mount table; its own cgroup below the template's,
with the pool's limits, made by the agent, which hands the spawner its
``cgroup.procs`` files; the pool's capabilities and seccomp filters, the
listener of zentry's going to the template's sentry. It then is an exec
server (``init.c``): an exec is one fork + execve there. A sandbox costs
one small process and its kernel objects; starting one takes no Python
process and no zentry call.

The wire formats are in ``init.c``. The agent never blocks on a sandbox:
the channels are non-blocking.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import time

from zentry.actors.pool.config import PoolConfig, deep_merge, parse_size
from zentry.actors.sandbox import caps
from zentry.bus.errors import SystemFailure

#: Where the exec server appears in every pooled sandbox.
INIT_PATH = "/.zentry-pool-init"
POOL_ANNOTATION = "dev.zentry.pool"

OP_EXEC, OP_PUT, OP_GET, OP_KILL, OP_SPAWN, OP_FILTERS = 1, 2, 3, 4, 16, 17
HELLO, STARTED, EXITED, REFUSED, LISTENER, FAILED = 0, 1, 2, 3, 5, 6
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


def own_caps() -> list[str]:
    """The capabilities this process has (permitted): the spawner's, which makes
    namespaces and mounts, then drops each sandbox to the pool's."""
    with open("/proc/self/status") as f:
        bits = int(next(line.split()[1] for line in f if line.startswith("CapPrm:")), 16)
    return sorted(name for name, number in caps.CAPS.items() if bits & (1 << number))


def template_config(pool: PoolConfig, init_bin: str, *, node: str) -> dict:
    """The config.json of ``pool``'s template."""
    config = deep_merge(pool.config, {})
    process = config.setdefault("process", {})
    process["args"] = [INIT_PATH, "--spawner"]
    process["terminal"] = False
    process["user"] = {"uid": 0, "gid": 0}
    everything = own_caps()
    process["capabilities"] = {kind: everything for kind in ("bounding", "effective", "permitted")}
    process["noNewPrivileges"] = False
    config.setdefault("root", {})["readonly"] = True
    config.setdefault("mounts", []).append(
        {"destination": INIT_PATH, "type": "bind", "source": init_bin, "options": ["rbind", "ro", "nosuid", "nodev"]})
    config.setdefault("annotations", {})[POOL_ANNOTATION] = f"{node}/{pool.name}"
    linux = config.setdefault("linux", {})
    linux.pop("seccomp", None)  # each sandbox loads it (``filters``)
    resources = linux.pop("resources", None) or {}
    if resources.get("devices"):  # v1's device list is inherited by the sandboxes' cgroups
        linux["resources"] = {"devices": resources["devices"]}
    return config


def sandbox_resources(pool: PoolConfig) -> dict:
    """A sandbox's ``linux.resources``: the pool config's, with the pool's memory and CPUs."""
    resources = deep_merge((pool.config.get("linux") or {}).get("resources") or {}, {})
    resources.pop("devices", None)
    if pool.memory:
        resources.setdefault("memory", {})["limit"] = pool.memory
    if pool.cpus:
        period = 100_000
        resources.setdefault("cpu", {}).update({"quota": int(pool.cpus * period), "period": period})
    return resources


def filters(pool: PoolConfig) -> tuple[bytes, int]:
    """The spawner's ``filters`` request: the OCI profile's program (if any), then zentry's
    with its listener; and how many programs it holds."""
    from zentry.sentry import filter as sentry_filter
    from zentry.sentry import oci

    programs = []
    seccomp = (pool.config.get("linux") or {}).get("seccomp")
    if seccomp:
        translated = oci.translate(seccomp, stacked=True)
        programs.append((translated.flags, sentry_filter.compile_policy(translated)))
    programs.append((sentry_filter.ZENTRY_FILTER_FLAGS, sentry_filter.zentry_bpf()))
    data = struct.pack("II", OP_FILTERS, len(programs))
    for flags, bpf in programs:
        data += struct.pack("II", flags, len(bpf) // 8) + bpf
    return data, len(programs)


#: clone(2) flags (<linux/sched.h>)
CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x80, 0x20000, 0x04000000, 0x08000000, 0x20000000, 0x40000000)
_SPAWN = struct.Struct("4I5Q2I")


def spawn_request(pool: PoolConfig, rid: int) -> bytes:
    """The spawner's ``spawn`` request for one sandbox of ``pool``."""
    namespaces = (pool.config.get("linux") or {}).get("namespaces") or []
    flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID
    if any(ns.get("type") == "network" and not ns.get("path") for ns in namespaces):
        flags |= CLONE_NEWNET
    if not any(ns.get("type") == "time" for ns in namespaces):
        # its boot clock starts with it, as a zentry container's (a config's own time namespace is kept)
        flags |= CLONE_NEWTIME
    process = pool.config.get("process") or {}
    wanted = process.get("capabilities") or {}
    masks = [caps.mask(wanted.get(kind)) for kind in ("bounding", "effective", "permitted", "inheritable", "ambient")]
    masks[4] &= masks[2] & masks[3]  # an ambient capability must be permitted and inheritable: others skipped, as runc does
    scratch = (parse_size(pool.overlay, "overlay") + (1 << 20) - 1) >> 20 if pool.overlay else 0
    return _SPAWN.pack(OP_SPAWN, rid, flags, int(bool(process.get("noNewPrivileges"))), *masks, scratch,
                       int(bool((pool.config.get("root") or {}).get("readonly"))))


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
                 "args", "limit", "truncated")

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


_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


class Channel:
    """Our end of a SOCK_SEQPACKET pair with an exec server or the spawner (non-blocking).

    The peer's pid comes with every message (SO_PASSCRED), as this host's pid
    namespace numbers it: how the agent learns a sandbox's pid.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple["Channel", socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(ours), theirs

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: bytes, fds: list[int] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        try:
            self.sock.sendmsg([data], anc)
        except BlockingIOError as err:  # 200 KiB of queued requests: the peer is stuck
            raise SystemFailure("its init is not reading requests") from err

    def messages(self) -> tuple[list["Said"], bool]:
        """What the peer said since the last call, and whether the channel ended."""
        out = []
        while True:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(1024, socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(16))
            except BlockingIOError:
                return out, False
            except (ConnectionResetError, BrokenPipeError):
                return out, True
            if not data:
                return out, True
            said = Said(*_REPLY.unpack(data[:_REPLY.size])) if len(data) >= _REPLY.size else None
            for level, kind, payload in anc:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_RIGHTS:
                    fds = list(struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4]))
                    if said is None:
                        for fd in fds:
                            os.close(fd)
                    else:
                        said.fds = fds
                elif kind == socket.SCM_CREDENTIALS and said is not None:
                    said.pid = _CREDS.unpack(payload[:_CREDS.size])[0]
            if said is not None:
                said.text = data[_REPLY.size:].decode(errors="replace")
                out.append(said)

    def close(self) -> None:
        self.sock.close()


class Said:
    """One message from an exec server or the spawner (see init.c)."""

    __slots__ = ("kind", "id", "a", "b", "fds", "pid", "text")

    def __init__(self, kind: int, rid: int, a: int, b: int) -> None:
        self.kind, self.id, self.a, self.b = kind, rid, a, b
        self.fds: list[int] = []
        self.pid = 0
        self.text = ""


class Template:
    """A pool's template container: its state is starting, ready or dying."""

    def __init__(self, pool: PoolConfig, template_id: str, bundle_dir: str) -> None:
        self.pool = pool
        self.id = template_id
        self.bundle_dir = bundle_dir
        self.state = "starting"
        self.chan: Channel | None = None
        self.filters = 0  # how many seccomp programs its spawner was given

    @property
    def log_path(self) -> str:
        return os.path.join(self.bundle_dir, "zentry.log")

    def prepare(self, init_bin: str, node: str) -> socket.socket:
        """Write the bundle and make the channel; returns the spawner's end (for ``zentry run -d``'s fd 3)."""
        os.makedirs(self.bundle_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.bundle_dir, "config.json"), "w") as f:
            json.dump(template_config(self.pool, init_bin, node=node), f)
        self.chan, theirs = Channel.pair()
        return theirs

    def run_argv(self, zentry: str, root: str) -> list[str]:
        return [zentry, "--root", root, "run", "-d", "--pool-spawner", "--preserve-fds", "1", "--bundle", self.bundle_dir, self.id]

    def cgroup(self, sandbox_id: str):
        """The cgroup of one of its sandboxes: below the template's own."""
        from zentry.actors.sandbox.cgroups import DEFAULT_PARENT, Cgroup

        path = (self.pool.config.get("linux") or {}).get("cgroupsPath") or f"{DEFAULT_PARENT}/{self.id}"
        return Cgroup(f"{path.rstrip('/')}/{sandbox_id}")

    def fd_socket(self, root: str) -> str:
        from zentry.bus.endpoints import Endpoints, bus_dir_for

        return Endpoints(bus_dir_for(os.path.join(root, self.id))).fd_socket


class PoolSandbox:
    """One sandbox of a pool; ``state`` is starting, warm, claimed or dying."""

    def __init__(self, pool: PoolConfig, sandbox_id: str, template: Template) -> None:
        self.pool = pool
        self.id = sandbox_id
        self.template = template
        self.state = "starting"
        self.chan: Channel | None = None
        self.rid = 0  # its spawn request's id
        self.pid = 0  # its init, as this host numbers it
        self.pidfd = -1
        self.cgroup = None
        self.hello = False
        self.listener_sent = False
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

    def send(self, op: int, rid: int, args: list[str], *, env: list[str] = (), cwd: str = "", uid: int = 0, gid: int = 0,
             groups: list[int] = (), mode: int = 0, fds: list[int] = ()) -> None:
        data = _HEADER.pack(op, rid, uid, gid, mode, len(args), len(env), len(groups))
        data += struct.pack(f"{len(groups)}I", *groups)
        data += b"".join(s.encode() + b"\0" for s in [cwd, *args, *env])
        try:
            self.chan.send(data, list(fds))
        except SystemFailure as err:
            raise SystemFailure(f"sandbox {self.id}: {err}") from err


def remove_bundle(bundle_dir: str) -> None:
    shutil.rmtree(bundle_dir, ignore_errors=True)
