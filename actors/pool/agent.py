"""The node agent (``zentry pool serve``): warm sandbox pools on one host, an actor on the bus.

One loop (``bus/actor.py``) serves ``pool.*`` requests on ``pool.sock``
under ``<root>/pool-agent`` and, with CURVE, on tcp. Nothing in it blocks:
each pool's template (a zentry container whose init is the spawner) starts
and ends as a ``zentry run -d --pool-spawner`` / ``zentry delete -f`` child
process watched through a pidfd; a sandbox starts as a request to its
template's spawner and ends with a signal to its init (``sandbox.py``,
``init.c``); commands run through each sandbox's exec server over a
SOCK_SEQPACKET channel, their output read from non-blocking pipes. A claim
takes a warm sandbox off a deque.

Under ``--root`` (which is also the templates' zentry root, so ``zentry
list``/``tap``/``metrics-server`` see them):

    pool-agent/            the agent's bus directory (pool.sock, events.sock: ``zentry tap`` follows it)
    pool-agent/agent.lock  held while an agent serves this root
    pool-agent/bundles/ID  each template's config.json and CLI log; what a restarted agent cleans up

A graceful stop (SIGTERM, ``shutdown``) ends every template, and with it
every sandbox, and removes ``pool-agent``; a killed agent's spawners see
their channels end and take their sandboxes with them, and the next agent
on the root deletes the templates left.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import json
import os
import secrets
import signal
import threading
import time

import zmq
import zmq.backend

from zentry.actors.pool import sandbox as sbmod
from zentry.actors.pool.config import AgentConfig, PoolConfig
from zentry.actors.pool.sandbox import EXITED, FAILED, HELLO, LISTENER, OP_EXEC, OP_GET, OP_KILL, OP_PUT, REFUSED, STARTED, Job, PoolSandbox, Template
from zentry.bus import envelope as envmod
from zentry.bus.actor import DEFERRED, Actor, Request, _recv_request, handles
from zentry.bus.codec import MAX_BIN
from zentry.bus.endpoints import Endpoints, bus_dir_for, make_private_dir
from zentry.bus.errors import AlreadyExists, InvalidArgument, LimitReached, NotFound, SystemFailure
from zentry.bus.log import get_logger
from zentry.bus.messages import (
    Error,
    Ok,
    PoolClaim,
    PoolClaimed,
    PoolClaimEvent,
    PoolExec,
    PoolExecEvent,
    PoolExited,
    PoolExpireEvent,
    PoolFile,
    PoolGet,
    PoolOutput,
    PoolPut,
    PoolRefillEvent,
    PoolRelease,
    PoolReleaseEvent,
    PoolStatus,
    PoolStatusReply,
)

log = get_logger("zentry.pool")

AGENT_DIR = "pool-agent"
#: how long a claim waits for a sandbox being started before it is refused
CLAIM_WAIT = 30.0
#: how many ended sandboxes' handles are remembered, to say how they ended
ENDED_KEPT = 4096
#: output kept per command when not streamed (more is cut, and said so on stderr)
OUTPUT_LIMIT = 3 * 1024 * 1024
SWEEP_INTERVAL = 0.2
_send = getattr(zmq.backend, "Socket", zmq.Socket).send


def exit_status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return r, w


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass  # the reader went away: its exit status tells
    finally:
        os.close(fd)


def _feed(data: bytes) -> int:
    """A pipe's read end that yields ``data`` then EOF (a thread writes what the pipe cannot hold)."""
    r, w = os.pipe()
    if len(data) <= 65536:
        _write_all(w, data)
    else:
        threading.Thread(target=_write_all, args=(w, data), daemon=True).start()
    return r


class _AuthorizedKeys:
    """ZAP credentials provider: only the listed client public keys may connect."""

    def __init__(self, keys: set[bytes]) -> None:
        self.keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class PoolAgent(Actor):
    name = "pool"
    heartbeat_interval = 30.0

    def __init__(self, config: AgentConfig, root: str, zentry: str) -> None:
        self.root = os.path.abspath(root)
        self.dir = os.path.join(self.root, AGENT_DIR)
        make_private_dir(self.dir)
        super().__init__(Endpoints(bus_dir_for(self.dir)), sandbox_id=AGENT_DIR)
        if self.endpoints.bus_dir != self.dir:
            make_private_dir(self.endpoints.bus_dir)
        self.config = config
        self.zentry = zentry
        self.pools: dict[str, PoolConfig] = config.pools
        self.bundles = os.path.join(self.dir, "bundles")
        make_private_dir(self.bundles)
        self.sandboxes: dict[str, PoolSandbox] = {}
        self.warm: dict[str, collections.deque[str]] = {name: collections.deque() for name in self.pools}
        self.waiting: dict[str, collections.deque[tuple[Request, PoolClaim, float]]] = {name: collections.deque() for name in self.pools}
        self.backoff: dict[str, tuple[float, float]] = {}  # pool -> (retry at, delay) after failed starts
        self.jobs_by_fd: dict[int, Job] = {}
        self.templates: dict[str, Template] = {}  # pool -> its template
        self.by_chan: dict[int, PoolSandbox | Template] = {}
        self.by_rid: dict[int, PoolSandbox] = {}  # spawn request -> its sandbox, until the spawner says it exited
        self.cgroups = CgroupWorker()  # mkdir/rmdir in cgroupfs wait on the kernel's cgroup mutex: never in this loop
        self.handovers: dict[int, tuple[object, PoolSandbox]] = {}  # fds.sock connections awaiting the sentry's answer
        self.by_pidfd: dict[int, tuple[Template, str, int]] = {}
        self.ended: collections.OrderedDict[str, str] = collections.OrderedDict()  # recent handles -> how they ended
        self._rid = 0
        self._lock_fd = -1
        self.tcp: list[zmq.Socket] = []
        self._auth = None
        self.init_bin = ""
        self.metrics = _Metrics(self.pools)
        # Before anything binds: a second agent on this root must not take the first one's socket.
        self._lock_fd = os.open(os.path.join(self.dir, "agent.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise AlreadyExists(f"another node agent serves {self.root}") from None
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        try:
            self._keys = None
            if config.listen:
                from zentry.bus.tap import read_authorized_keys, read_key

                self._keys = (read_key(config.server_secret_file, secret=True), read_authorized_keys(config.authorized_keys))
            self.init_bin = sbmod.init_binary()
            self.renice = sbmod.raise_priority()
        except BaseException:  # bad keys, no compiler...: nothing of this agent stays behind
            os.close(self._lock_fd)
            self._lock_fd = -1
            if not os.listdir(self.bundles):
                self._remove_dirs()
            raise

    # --- lifecycle ----------------------------------------------------------------
    def on_start(self) -> None:
        from zentry.bus.events import EventStream

        self.stream = EventStream(self.ctx, self.endpoints.events_in, self.endpoints.events)
        self.stream.start()
        self.stream.wait_ready()
        if self.config.listen:
            self._bind_tcp()
        if self.config.metrics_listen:
            self.metrics.serve(self.config.metrics_listen)
        self.watch_fd(self.cgroups.done_fd, lambda _fd: self.cgroups.deliver())
        left = self._clean_leftovers()
        self.call_later(0, lambda: self._started(left))
        self.call_later(SWEEP_INTERVAL, self._sweep)

    def _started(self, left: list[Template]) -> None:
        for tmpl in left:
            self.publish(PoolReleaseEvent(pool=tmpl.pool.name, handle=tmpl.id, reason="left"), container_id=tmpl.id)
        for name in self.pools:
            self._refill(name)

    def on_stop(self) -> None:
        self._destroy_all()
        for sock in self.tcp:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.metrics.close()
        if getattr(self, "stream", None) is not None:
            self.stream.stop()
            self.stream.join(2)  # before the loop closes the context under its sockets

    def on_failure(self, exc: BaseException) -> None:
        self._destroy_all()

    def remove_dir(self) -> None:
        """After a graceful stop with nothing left: the agent's directory goes too."""
        if self._lock_fd < 0 or self.sandboxes or os.listdir(self.bundles):
            return
        self._remove_dirs()

    def _remove_dirs(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
        if self.endpoints.bus_dir != self.dir:
            shutil.rmtree(self.endpoints.bus_dir, ignore_errors=True)

    def _bind_tcp(self) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        secret, keys = self._keys
        self._auth = ThreadAuthenticator(self.ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", _AuthorizedKeys(keys))
        sock = self.ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_secretkey = secret
        sock.curve_publickey = zmq.curve_public(secret)
        sock.setsockopt(zmq.LINGER, 100)
        for ep in self.config.listen:
            sock.bind(ep)
            log.info("pool agent %s: serving %s", self.config.node, sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.tcp.append(sock)
        self._poller.register(sock, zmq.POLLIN)
        self._fd_watches[sock] = self._serve_tcp  # type: ignore[index]

    def _serve_tcp(self, sock) -> None:
        while self._stopping is None and sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._serve(sock, _recv_request(sock))

    def _clean_leftovers(self) -> list[Template]:
        """Templates a previous agent left (its channels are gone, so their spawners
        ended, and every sandbox with them): deleted, as they are found in bundles/."""
        left = []
        for tid in sorted(os.listdir(self.bundles)):
            bundle = os.path.join(self.bundles, tid)
            pool_name = "?"
            try:
                with open(os.path.join(bundle, "config.json")) as f:
                    pool_name = json.load(f).get("annotations", {}).get(sbmod.POOL_ANNOTATION, "?").rpartition("/")[2]
            except (OSError, ValueError, AttributeError):
                pass
            tmpl = Template(PoolConfig(name=pool_name, config={}), tid, bundle)
            tmpl.state = "dying"
            self._delete(tmpl)
            left.append(tmpl)
        return left

    # --- requests -----------------------------------------------------------------
    @handles(PoolClaim)
    def _claim(self, msg: PoolClaim, req: Request):
        pool = self._pool(msg.pool)
        if self.warm[pool.name]:
            return self._hand_out(pool, self.warm[pool.name].popleft(), msg, req)
        refusal = self._room(pool, starting_counts=True)
        if refusal and not self._starting(pool.name):
            self.metrics.refused.labels(pool.name, "limit").inc()
            raise LimitReached(f"node {self.config.node}: pool {pool.name} has no warm sandbox and {refusal}")
        self.waiting[pool.name].append((req, msg, time.monotonic() + CLAIM_WAIT))
        self._refill(pool.name, parent=req.id)
        return DEFERRED

    def _hand_out(self, pool: PoolConfig, sid: str, msg: PoolClaim, req: Request) -> PoolClaimed:
        sb = self.sandboxes[sid]
        sb.state = "claimed"
        now = time.monotonic()
        sb.claimed_mono = sb.last_used = now
        sb.ttl = msg.ttl_ms / 1000 if msg.ttl_ms else pool.ttl
        sb.idle = msg.idle_ms / 1000 if msg.idle_ms else pool.idle
        sb.expires_ns = time.time_ns() + int(sb.ttl * 1e9) if sb.ttl else 0
        sb.claim_id = req.id
        sb.owner = msg.owner
        latency = time.perf_counter_ns() - req.started_ns
        self.metrics.claim_seconds.labels(pool.name).observe(latency / 1e9)
        self.publish(PoolClaimEvent(pool=pool.name, handle=sid, owner=msg.owner, latency_ns=latency), parent=req.id, container_id=sid)
        # after the reply has left: preparing a start (its bundle, its channel) is not the claimant's wait
        self.call_later(0, lambda: self._refill(pool.name, parent=req.id))
        return PoolClaimed(handle=sid, pool=pool.name, node=self.config.node, expires_ns=sb.expires_ns)

    @handles(PoolRelease)
    def _release(self, msg: PoolRelease, req: Request):
        sb = self._claimed(msg.handle)
        self._destroy(sb, "released", parent=req.id)
        return Ok()

    @handles(PoolStatus)
    def _status(self, msg: PoolStatus, req: Request) -> PoolStatusReply:
        pools = []
        claimed = waiting = capacity = 0
        for name, pool in self.pools.items():
            counts = self._counts(name)
            claimed += counts["claimed"]
            waiting += len(self.waiting[name])
            capacity += pool.max
            pools.append({"name": name, "warm": counts["warm"], "claimed": counts["claimed"], "starting": counts["starting"],
                          "target": pool.warm, "max": pool.max})
        if self.config.max_sandboxes:
            capacity = min(capacity, self.config.max_sandboxes)
        return PoolStatusReply(node=self.config.node, pools=pools, sandboxes=len(self.sandboxes),
                               max_sandboxes=self.config.max_sandboxes, memory_budget=self.config.memory_budget,
                               memory_reserved=self._reserved(), load=(claimed + waiting) / max(1, capacity))

    @handles(PoolExec)
    def _exec(self, msg: PoolExec, req: Request):
        sb = self._claimed(msg.handle)
        if not msg.args:
            raise InvalidArgument("pool.exec: args is empty")
        process = sb.pool.config.get("process") or {}
        uid, gid, groups = self._user(sb, msg.user)
        job = self._job(OP_EXEC, req, sb, stream=msg.stream, args=msg.args, limit=OUTPUT_LIMIT)
        stdin = _feed(msg.stdin)
        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        try:
            sb.send(OP_EXEC, job.rid, msg.args, env=msg.env or process.get("env") or [], cwd=msg.cwd or process.get("cwd") or "/",
                    uid=uid, gid=gid, groups=groups, fds=[stdin, out_w, err_w])
        except Exception:
            for fd in (out_r, err_r):
                os.close(fd)
            sb.jobs.pop(job.rid, None)
            raise
        finally:
            for fd in (stdin, out_w, err_w):
                os.close(fd)
        self._watch_output(job, {out_r: 1, err_r: 2})
        if msg.timeout_ms:
            self.call_later(msg.timeout_ms / 1000, lambda: self._time_out(job))
        return DEFERRED

    @handles(PoolPut)
    def _put(self, msg: PoolPut, req: Request):
        sb = self._claimed(msg.handle)
        self._check_path(msg.path)
        uid, gid, groups = self._user(sb, "")
        job = self._job(OP_PUT, req, sb, args=[msg.path], limit=65536)
        source = _feed(msg.data)
        err_r, err_w = _pipe()
        try:
            sb.send(OP_PUT, job.rid, [msg.path], uid=uid, gid=gid, groups=groups, mode=msg.mode & 0o7777, fds=[source, err_w, err_w])
        except Exception:
            os.close(err_r)
            sb.jobs.pop(job.rid, None)
            raise
        finally:
            os.close(source)
            os.close(err_w)
        self._watch_output(job, {err_r: 2})
        return DEFERRED

    @handles(PoolGet)
    def _get(self, msg: PoolGet, req: Request):
        sb = self._claimed(msg.handle)
        self._check_path(msg.path)
        uid, gid, groups = self._user(sb, "")
        job = self._job(OP_GET, req, sb, args=[msg.path], limit=MAX_BIN - 65536)
        null = _feed(b"")
        out_r, out_w = _pipe()
        err_r, err_w = _pipe()
        try:
            sb.send(OP_GET, job.rid, [msg.path], uid=uid, gid=gid, groups=groups, fds=[null, out_w, err_w])
        except Exception:
            os.close(out_r)
            os.close(err_r)
            sb.jobs.pop(job.rid, None)
            raise
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        self._watch_output(job, {out_r: 1, err_r: 2})
        return DEFERRED

    # --- helpers of the requests ------------------------------------------------------
    def _pool(self, name: str) -> PoolConfig:
        pool = self.pools.get(name)
        if pool is None:
            raise NotFound(f"node {self.config.node} has no pool {name!r} (pools: {', '.join(sorted(self.pools))})")
        return pool

    def _claimed(self, handle: str) -> PoolSandbox:
        sb = self.sandboxes.get(handle)
        if sb is None or sb.state != "claimed":
            how = self.ended.get(handle)
            if how:
                raise NotFound(f"node {self.config.node}: no claimed sandbox {handle!r}: it {how}")
            raise NotFound(f"node {self.config.node}: no claimed sandbox {handle!r} (released, expired, or never claimed)")
        sb.last_used = time.monotonic()
        return sb

    @staticmethod
    def _check_path(path: str) -> None:
        if not path.startswith("/") or "\0" in path:
            raise InvalidArgument(f"{path!r}: give an absolute path in the sandbox")

    @staticmethod
    def _user(sb: PoolSandbox, text: str) -> tuple[int, int, list[int]]:
        user = (sb.pool.config.get("process") or {}).get("user") or {}
        if not text:
            return int(user.get("uid", 0)), int(user.get("gid", 0)), [int(g) for g in user.get("additionalGids") or []]
        uid_s, _, gid_s = text.partition(":")
        if not uid_s.isdigit() or (gid_s and not gid_s.isdigit()):
            raise InvalidArgument(f"user {text!r}: give uid[:gid] as numbers")
        return int(uid_s), int(gid_s or 0), []

    def _job(self, op: int, req: Request, sb: PoolSandbox, **kw) -> Job:
        self._rid = (self._rid + 1) & 0xFFFFFFFF or 1
        job = Job(self._rid, op, req, sb, **kw)
        sb.jobs[job.rid] = job
        return job

    def _watch_output(self, job: Job, pipes: dict[int, int]) -> None:
        job.pipes = pipes
        for fd in pipes:
            self.jobs_by_fd[fd] = job
            self.watch_fd(fd, self._on_output)

    def _on_output(self, fd: int) -> None:
        job = self.jobs_by_fd.get(fd)
        if job is not None:
            self._drain(job, fd)

    def _drain(self, job: Job, fd: int) -> None:
        which = job.pipes.get(fd)
        while which is not None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_pipe(job, fd)
                return
            if job.stream:
                self._send_partial(job.req, PoolOutput(handle=job.sandbox.id, fd=which, data=data))
                continue
            buf = job.buffers[which]
            room = job.limit - len(buf)
            if len(data) > room:
                job.truncated = True
                data = data[:max(0, room)]
                if job.op != OP_EXEC:  # a file too big for one message: stop reading it
                    self._kill_job(job, signal.SIGKILL)
            buf += data

    def _close_pipe(self, job: Job, fd: int) -> None:
        if job.pipes.pop(fd, None) is not None:
            self.unwatch_fd(fd)
            self.jobs_by_fd.pop(fd, None)
            os.close(fd)

    def _send_partial(self, req: Request, msg) -> None:
        frame = envmod.encode_message(msg, sender=self.name, parent=req.env.id)[1]
        try:
            _send(req.sock, req.identity, zmq.SNDMORE | zmq.NOBLOCK)
            _send(req.sock, frame, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _kill_job(self, job: Job, sig: int) -> None:
        sb = job.sandbox
        if sb.chan is not None and job.rid in sb.jobs:
            try:
                sb.send(OP_KILL, 0, ["-"], uid=job.rid, gid=int(sig))
            except (OSError, SystemFailure) as err:  # the sandbox is ending: its end reports the job
                log.debug("sandbox %s: cannot signal request %d: %s", sb.id, job.rid, err)

    def _time_out(self, job: Job) -> None:
        if job.rid in job.sandbox.jobs and job.status is None:
            job.timed_out = True
            self._kill_job(job, signal.SIGKILL)

    def _finish(self, job: Job, wait_status: int | None, error: str = "") -> None:
        """The exec server reported the end of ``job`` (or the sandbox ended: ``error``)."""
        sb = job.sandbox
        sb.jobs.pop(job.rid, None)
        for fd in list(job.pipes):
            self._drain(job, fd)
            self._close_pipe(job, fd)
        sb.last_used = time.monotonic()
        req = job.req
        duration = time.perf_counter_ns() - job.started_ns
        if error:
            req.reply(Error(code=SystemFailure.code, message=error))
            return
        status = exit_status(wait_status)
        if job.op == OP_EXEC:
            stderr = bytes(job.buffers[2])
            if job.truncated:
                stderr += f"\nzentry pool: output cut at {OUTPUT_LIMIT} bytes per stream\n".encode()
            self.metrics.exec_seconds.labels(sb.pool.name).observe(duration / 1e9)
            self.publish(PoolExecEvent(handle=sb.id, args=job.args, exit_status=status, duration_ns=duration), parent=req.id, container_id=sb.id)
            req.reply(PoolExited(handle=sb.id, exit_status=status, stdout=bytes(job.buffers[1]), stderr=stderr,
                                 duration_ns=duration, timed_out=job.timed_out))
            return
        text = bytes(job.buffers[2]).decode(errors="replace").strip()
        if job.truncated:
            req.reply(Error(code=LimitReached.code, message=f"{sb.id}:{job.args[0]}: larger than one message ({MAX_BIN} bytes)"))
        elif status != 0:
            code = NotFound.code if "No such file" in text else InvalidArgument.code if text else SystemFailure.code
            req.reply(Error(code=code, message=text.replace("zentry pool: ", f"{sb.id}: ") or f"{sb.id}: failed with status {status}"))
        elif job.op == OP_GET:
            req.reply(PoolFile(handle=sb.id, path=job.args[0], data=bytes(job.buffers[1])))
        else:
            req.reply(Ok())

    # --- channels: the templates' spawners and the sandboxes' exec servers ---------------
    def _watch_chan(self, owner, chan) -> None:
        self.by_chan[chan.fileno()] = owner
        self.watch_fd(chan.fileno(), self._on_channel)

    def _unwatch_chan(self, owner) -> None:
        if owner.chan is not None:
            self.unwatch_fd(owner.chan.fileno())
            self.by_chan.pop(owner.chan.fileno(), None)
            owner.chan.close()
            owner.chan = None

    def _on_channel(self, fd: int) -> None:
        owner = self.by_chan.get(fd)
        if owner is None or owner.chan is None:
            return
        said, ended = owner.chan.messages()
        if isinstance(owner, Template):
            for msg in said:
                self._on_spawner(owner, msg)
            if ended and owner.chan is not None:
                self._template_ended(owner)
            return
        sb = owner
        for msg in said:
            if msg.pid and not sb.pid:
                self._know_pid(sb, msg.pid)
            if msg.kind == LISTENER and msg.fds and sb.state == "starting" and not sb.listener_sent:
                # (only from the setup, before anything of a user's ran: never again)
                sb.listener_sent = True
                self._hand_listener(sb, msg.fds.pop(0))
            elif msg.kind == HELLO:
                sb.hello = True
                self._maybe_ready(sb)
            elif msg.kind == FAILED:
                self._start_failed(sb, msg.text or f"setup step {msg.a} failed: {os.strerror(msg.b)}")
            elif msg.kind == EXITED:
                job = sb.jobs.get(msg.id)
                if job is not None:
                    job.status = msg.b
                    self._finish(job, msg.b)
            elif msg.kind == REFUSED:
                job = sb.jobs.get(msg.id)
                if job is not None:
                    self._finish(job, None, error=f"sandbox {sb.id}: the exec server refused the request: {os.strerror(msg.b)}")
            for extra in msg.fds:
                os.close(extra)
        if ended and sb.chan is not None:
            self._channel_ended(sb)

    def _know_pid(self, sb: PoolSandbox, pid: int) -> None:
        """The sandbox's init, as this host numbers it (from its first message's credentials)."""
        try:
            sb.pidfd = os.pidfd_open(pid)
            sb.pid = pid
        except OSError:
            pass  # already gone: the spawner reports its exit

    def _hand_listener(self, sb: PoolSandbox, fd: int) -> None:
        """Give the sandbox's seccomp listener to its template's sentry (the exec'd-process
        path of fds.sock); its answer is read when it comes (a claim never waits for it)."""
        from zentry.bus import fdpass

        conn = None
        try:
            conn = fdpass.connect(sb.template.fd_socket(self.root), timeout=5)
            fdpass.send_fds(conn, {"kind": "listener", "container_id": sb.template.id, "pid": sb.pid,
                                   "args": [sbmod.INIT_PATH, sb.id]}, [fd])
        except (OSError, SystemFailure) as err:
            if conn is not None:
                conn.close()
            self._start_failed(sb, f"its template's sentry did not take its listener: {err}")
            return
        finally:
            os.close(fd)
        conn.setblocking(False)
        self.handovers[conn.fileno()] = (conn, sb)
        self.watch_fd(conn.fileno(), self._on_handover)

    def _on_handover(self, fd: int) -> None:
        conn, sb = self.handovers.pop(fd)
        self.unwatch_fd(fd)
        try:
            answer = conn.recv(256)
        except OSError as err:
            answer = str(err).encode()
        conn.close()
        if answer != b"ok" and sb.state != "dying":
            error = f"its template's sentry did not take its listener: {answer.decode(errors='replace') or 'no answer'}"
            if sb.state == "starting":
                self._start_failed(sb, error)
            else:
                log.warning("pool %s: sandbox %s: %s", sb.pool.name, sb.id, error)
                self._destroy(sb, "failed", parent=sb.claim_id, how=f"ended: {error}")

    def _channel_ended(self, sb: PoolSandbox) -> None:
        tmpl = sb.template
        if tmpl.chan is not None:  # its template's end, if already said, is the cause: it tells the claimant
            self._on_channel(tmpl.chan.fileno())
        self._unwatch_chan(sb)
        if sb.state == "starting":
            self._start_failed(sb, "its init ended during setup")
            return
        if sb.state in ("warm", "claimed"):
            self._destroy(sb, "failed", parent=sb.claim_id, how=_INIT_EXITED.format(template=tmpl.id))

    # --- templates ----------------------------------------------------------------------
    def _on_spawner(self, tmpl: Template, msg) -> None:
        if msg.kind == HELLO:
            try:
                request, tmpl.filters = sbmod.filters(tmpl.pool)
                tmpl.chan.send(request)
            except Exception as err:
                self._template_failed(tmpl, f"cannot compile its seccomp filters: {err}")
        elif msg.kind == STARTED and msg.id == 0:  # the filters are loaded: sandboxes can be made
            if msg.a != tmpl.filters:
                self._template_failed(tmpl, f"its spawner took {msg.a} of {tmpl.filters} seccomp filters")
                return
            tmpl.state = "ready"
            self.backoff.pop(tmpl.pool.name, None)
            self._refill(tmpl.pool.name)
        elif msg.kind == REFUSED and msg.id in self.by_rid:
            self._start_failed(self.by_rid[msg.id], f"the spawner refused it: {os.strerror(msg.b)}")
        elif msg.kind == EXITED and msg.id in self.by_rid:
            self._sandbox_gone(self.by_rid.pop(msg.id))

    def _start_template(self, pool: PoolConfig) -> None:
        tid = f"{pool.name}-{secrets.token_hex(5)}"
        tmpl = self.templates[pool.name] = Template(pool, tid, os.path.join(self.bundles, tid))
        try:
            theirs = tmpl.prepare(self.init_bin, self.config.node)
            try:
                self._cli(tmpl, "start", tmpl.run_argv(self.zentry, self.root), fd3=theirs.fileno())
            finally:
                theirs.close()
        except Exception as err:
            self._template_failed(tmpl, f"{type(err).__name__}: {err}")
            return
        self._watch_chan(tmpl, tmpl.chan)

    def _template_failed(self, tmpl: Template, error: str) -> None:
        if tmpl.state == "dying":
            return
        pool = tmpl.pool.name
        log.warning("pool %s: its template %s failed: %s", pool, tmpl.id, error)
        self.metrics.refill_failures.labels(pool).inc()
        self.publish(PoolRefillEvent(pool=pool, handle=tmpl.id, duration_ns=0, error=error), container_id=tmpl.id)
        self._back_off(pool)
        self._end_template(tmpl)
        self._refuse_waiting(pool, error)

    def _template_ended(self, tmpl: Template) -> None:
        """The spawner is gone: so is every sandbox it made."""
        if tmpl.state == "starting":
            self._template_failed(tmpl, sbmod.log_tail(tmpl.log_path) or "its spawner ended during start")
            return
        self._end_template(tmpl)

    def _end_template(self, tmpl: Template) -> None:
        if tmpl.state == "dying":
            return
        tmpl.state = "dying"
        self._unwatch_chan(tmpl)  # the spawner kills its sandboxes and exits
        for sb in [sb for sb in self.sandboxes.values() if sb.template is tmpl]:
            if sb.state != "dying":
                if self._stopping is None:
                    self._destroy(sb, "failed", parent=sb.claim_id,
                                  how=f"ended with its template {tmpl.id} (its spawner, controller or sentry died)")
                else:
                    self._destroy(sb, "shutdown", parent=sb.claim_id, how=f"ended: node {self.config.node} is stopping")
            self.by_rid.pop(sb.rid, None)
            self._sandbox_gone(sb)
        if self.templates.get(tmpl.pool.name) is tmpl:
            del self.templates[tmpl.pool.name]
        self._delete(tmpl)

    def _delete(self, tmpl: Template) -> None:
        try:
            self._cli(tmpl, "delete", [self.zentry, "--root", self.root, "delete", "--force", tmpl.id])
        except OSError as err:
            log.warning("cannot delete template %s: %s", tmpl.id, err)

    def _cli(self, tmpl: Template, what: str, argv: list[str], fd3: int | None = None) -> None:
        """Run ``zentry ARGV`` for ``tmpl`` (its start or its delete) without waiting."""
        pid, pidfd = sbmod.spawn(argv, fd3=fd3, log_path=tmpl.log_path, renice=self.renice)
        self.by_pidfd[pidfd] = (tmpl, what, pid)
        self.watch_fd(pidfd, self._on_pidfd)

    def _on_pidfd(self, fd: int) -> None:
        tmpl, what, pid = self.by_pidfd.pop(fd)
        self.unwatch_fd(fd)
        os.close(fd)
        status = 0
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        self._child_done(tmpl, what, status)

    def _child_done(self, tmpl: Template, what: str, status: int) -> None:
        if what == "start":
            code = exit_status(status)
            if code != 0:
                self._template_failed(tmpl, sbmod.log_tail(tmpl.log_path) or f"zentry run exited with {code}")
        else:  # deleted
            sbmod.remove_bundle(tmpl.bundle_dir)
            if tmpl.pool.name in self.pools:
                self._refill(tmpl.pool.name)

    # --- sandboxes ---------------------------------------------------------------------
    def _start(self, pool: PoolConfig, parent: str) -> None:
        """A new sandbox: its cgroup made by the worker thread, then the spawner's request."""
        tmpl = self.templates[pool.name]
        sid = f"{pool.name}-{secrets.token_hex(5)}"
        sb = PoolSandbox(pool, sid, tmpl)
        sb.parent = parent
        self._rid = (self._rid + 1) & 0xFFFFFFFF or 1
        sb.rid = self._rid
        sb.cgroup = tmpl.cgroup(sid)
        self.sandboxes[sid] = sb
        self.cgroups.submit(lambda: _make_cgroup(sb.cgroup, sbmod.sandbox_resources(pool)), lambda procs, err: self._spawn(sb, procs, err))
        self._update_gauges(pool.name)

    def _spawn(self, sb: PoolSandbox, procs: list[int] | None, err: BaseException | None) -> None:
        """Its cgroup is ready (``procs``: its cgroup.procs files): ask the template's spawner."""
        theirs = None
        try:
            if err is not None:
                raise err
            if sb.state != "starting" or sb.template.chan is None:  # ended meanwhile
                self._sandbox_gone(sb)
                return
            sb.chan, theirs = sbmod.Channel.pair()
            sb.template.chan.send(sbmod.spawn_request(sb.pool, sb.rid), [theirs.fileno(), *procs])
            self.by_rid[sb.rid] = sb
        except Exception as exc:
            self._start_failed(sb, f"{type(exc).__name__}: {exc}")
            self._sandbox_gone(sb)
            return
        finally:
            for fd in procs or ():
                os.close(fd)
            if theirs is not None:
                theirs.close()
        self._watch_chan(sb, sb.chan)

    def _maybe_ready(self, sb: PoolSandbox) -> None:
        if sb.state != "starting" or not sb.hello:
            return
        if not sb.listener_sent:  # never without the sentry
            self._start_failed(sb, "its exec server started without handing over a seccomp listener")
            return
        pool = sb.pool.name
        self.backoff.pop(pool, None)
        sb.state = "warm"
        duration = time.perf_counter_ns() - sb.start_ns
        self.metrics.start_seconds.labels(pool).observe(duration / 1e9)
        self.publish(PoolRefillEvent(pool=pool, handle=sb.id, duration_ns=duration), parent=sb.parent, container_id=sb.id)
        waiting = self.waiting[pool]
        while waiting:
            req, msg, _deadline = waiting.popleft()
            if req.answered:
                continue
            req.reply(self._hand_out(sb.pool, sb.id, msg, req))
            break
        else:
            self.warm[pool].append(sb.id)
        self._update_gauges(pool)
        self._refill(pool)

    def _start_failed(self, sb: PoolSandbox, error: str) -> None:
        if sb.state != "starting":
            return
        pool = sb.pool.name
        self.metrics.refill_failures.labels(pool).inc()
        self.publish(PoolRefillEvent(pool=pool, handle=sb.id, duration_ns=time.perf_counter_ns() - sb.start_ns, error=error),
                     parent=sb.parent, container_id=sb.id)
        log.warning("pool %s: cannot start sandbox %s: %s", pool, sb.id, error)
        self._back_off(pool)
        self._kill(sb)
        if not self._starting(pool) and not self.warm[pool]:
            self._refuse_waiting(pool, error)

    def _back_off(self, pool: str) -> None:
        """A start failed: the pool's next waits longer (0.5 s doubling to 30 s)."""
        _at, delay = self.backoff.get(pool, (0.0, 0.5))
        delay = min(delay * 2, 30.0)
        self.backoff[pool] = (time.monotonic() + delay, delay)

    def _refuse_waiting(self, pool: str, error: str) -> None:
        """The claims waiting for a sandbox of ``pool`` get the start's error."""
        while self.waiting[pool]:
            req, _msg, _deadline = self.waiting[pool].popleft()
            req.reply(Error(code=SystemFailure.code, message=f"node {self.config.node}: pool {pool}: cannot start a sandbox: {error}"))

    def _destroy(self, sb: PoolSandbox, reason: str, parent: str = "", how: str = "") -> None:
        """End a warm or claimed sandbox; it is gone when its spawner reports its init's exit.
        ``how`` it ended, as its claimant is told (by default: "was released", "expired (ttl)"...)."""
        pool = sb.pool.name
        if sb.state == "warm" and sb.id in self.warm.get(pool, ()):
            self.warm[pool].remove(sb.id)
        how = how or ("was released" if reason == "released" else f"expired ({reason})")
        if sb.state == "claimed":
            self.ended[sb.id] = how
            while len(self.ended) > ENDED_KEPT:
                self.ended.popitem(last=False)
        for job in list(sb.jobs.values()):
            self._finish(job, None, error=f"sandbox {sb.id} {how} while the command ran")
        self.publish(PoolReleaseEvent(pool=pool, handle=sb.id, reason=reason), parent=parent, container_id=sb.id)
        self._kill(sb)
        self._update_gauges(pool)

    def _kill(self, sb: PoolSandbox) -> None:
        """SIGKILL its init (the pid namespace goes with it); a sandbox still in setup ends with its channel."""
        sb.state = "dying"
        self._unwatch_chan(sb)
        if sb.pidfd >= 0:
            try:
                signal.pidfd_send_signal(sb.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def _sandbox_gone(self, sb: PoolSandbox) -> None:
        """Its init has exited (the spawner said so): its cgroup goes, a new one may start.
        (The spawner's report may come before its channel's end: its claimant is told here then.)"""
        if sb.state in ("warm", "claimed"):
            self._destroy(sb, "failed", parent=sb.claim_id, how=_INIT_EXITED.format(template=sb.template.id))
        elif sb.state == "starting":
            self._start_failed(sb, "its init ended during setup")
        sb.state = "dying"
        self._unwatch_chan(sb)
        if sb.pidfd >= 0:
            os.close(sb.pidfd)
            sb.pidfd = -1
        if self.sandboxes.pop(sb.id, None) is None:
            return
        if sb.cgroup is not None:
            self.cgroups.submit(lambda: _remove_cgroup(sb.cgroup, time.monotonic() + 10), _logged)
        self._update_gauges(sb.pool.name)
        if sb.pool.name in self.pools:
            self.call_later(0, lambda: self._refill(sb.pool.name, parent=sb.claim_id))

    def _destroy_all(self) -> None:
        """Stopping: every template ends (its spawner kills its sandboxes); their deletes are waited for."""
        import select

        self.pools = {}
        deadline = time.monotonic() + 60

        def calls(kind: str | None = None) -> int:
            return sum(1 for _t, what, _pid in self.by_pidfd.values() if kind is None or what == kind)

        done_starting = False
        while time.monotonic() < deadline:
            if not done_starting and not calls("start"):
                done_starting = True
                for tmpl in list(self.templates.values()):
                    self._end_template(tmpl)
            if done_starting and not calls():
                break
            ready, _, _ = select.select(list(self.by_pidfd), [], [], 0.5)
            for fd in ready:
                if fd in self.by_pidfd:
                    self._on_pidfd(fd)
        self.cgroups.close(timeout=max(1.0, deadline - time.monotonic()))  # the sandboxes' cgroups are gone

    # --- capacity and refill --------------------------------------------------------------
    def _counts(self, pool: str) -> dict[str, int]:
        counts = {"warm": 0, "claimed": 0, "starting": 0, "dying": 0}
        for sb in self.sandboxes.values():
            if sb.pool.name == pool:
                counts[sb.state] += 1
        return counts

    def _starting(self, pool: str | None = None) -> int:
        return sum(1 for sb in self.sandboxes.values() if sb.state == "starting" and (pool is None or sb.pool.name == pool))

    def _reserved(self) -> int:
        return sum(sb.pool.memory for sb in self.sandboxes.values())

    def _room(self, pool: PoolConfig, starting_counts: bool = True) -> str:
        """Why one more sandbox of ``pool`` may not start now, or ""."""
        mine = sum(1 for sb in self.sandboxes.values() if sb.pool.name == pool.name and sb.state != "dying")
        if mine >= pool.max:
            return f"the pool is at its maximum ({pool.max} sandboxes)"
        if self.config.max_sandboxes and len(self.sandboxes) >= self.config.max_sandboxes:
            return f"the node is at its limit ({self.config.max_sandboxes} sandboxes)"
        if self.config.memory_budget and self._reserved() + pool.memory > self.config.memory_budget:
            return (f"the node's memory budget is spent ({self._reserved() >> 20} MiB of {self.config.memory_budget >> 20} MiB "
                    f"reserved; a {pool.name} sandbox needs {pool.memory >> 20} MiB)")
        return ""

    def _refill(self, name: str, parent: str = "") -> None:
        pool = self.pools.get(name)
        if pool is None or self._stopping is not None:
            return
        retry_at, _delay = self.backoff.get(name, (0.0, 0.0))
        if retry_at > time.monotonic():
            return
        tmpl = self.templates.get(name)
        if tmpl is None:
            self._start_template(pool)
            return
        if tmpl.state != "ready":
            return
        while True:
            want = pool.warm + len(self.waiting[name])
            if len(self.warm[name]) + self._starting(name) >= want:
                return
            if self._starting() >= self.config.parallel_starts or self._room(pool):
                return
            self._start(pool, parent)

    def _sweep(self) -> None:
        now = time.monotonic()
        for sb in list(self.sandboxes.values()):
            if sb.state != "claimed" or sb.jobs:
                continue
            reason = ""
            if sb.ttl and now - sb.claimed_mono >= sb.ttl:
                reason = "ttl"
            elif sb.idle and now - sb.last_used >= sb.idle:
                reason = "idle"
            if reason:
                self.metrics.expired.labels(sb.pool.name, reason).inc()
                self.publish(PoolExpireEvent(pool=sb.pool.name, handle=sb.id, reason=reason), parent=sb.claim_id, container_id=sb.id)
                self._destroy(sb, reason, parent=sb.claim_id)
        for name, waiting in self.waiting.items():
            while waiting and (waiting[0][0].answered or waiting[0][2] <= now):
                req, _msg, _deadline = waiting.popleft()
                if not req.answered:
                    self.metrics.refused.labels(name, "timeout").inc()
                    req.reply(Error(code=LimitReached.code,
                                    message=f"node {self.config.node}: no {name} sandbox became ready within {CLAIM_WAIT:g}s"))
        for name in self.pools:
            self._refill(name)
        self.call_later(SWEEP_INTERVAL, self._sweep)

    def _update_gauges(self, pool: str) -> None:
        if pool not in self.metrics.pools:
            return
        counts = self._counts(pool)
        for state in ("warm", "claimed", "starting"):
            self.metrics.sandboxes.labels(pool, state).set(counts[state])


class CgroupWorker:
    """One thread that makes and removes the sandboxes' cgroups: a mkdir or rmdir
    in cgroupfs waits on the kernel's cgroup mutex behind every other one on the
    host (tens of ms while sandboxes are torn down), and the agent's loop must
    answer claims meanwhile. ``submit(job, then)``: ``then(result, error)`` runs in
    the loop (``deliver``, when ``done_fd`` is readable)."""

    def __init__(self) -> None:
        import queue

        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self.done_fd, self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="pool-cgroups", daemon=True)
        self._thread.start()

    def submit(self, job, then) -> None:
        self._jobs.put((job, then))

    def _run(self) -> None:
        while True:
            job, then = self._jobs.get()
            if job is None:
                return
            try:
                outcome = (job(), None)
            except Exception as err:
                outcome = (None, err)
            self._done.put((then, outcome))
            try:
                os.write(self._wake, b"x")
            except BlockingIOError:  # the loop has 64 KiB of wake-ups to read already
                pass

    def deliver(self) -> None:
        try:
            while os.read(self.done_fd, 4096):
                pass
        except BlockingIOError:
            pass
        while not self._done.empty():
            then, (result, error) = self._done.get()
            then(result, error)

    def close(self, timeout: float) -> None:
        """The jobs submitted so far are done, and their callbacks run."""
        self._jobs.put((None, None))
        self._thread.join(timeout)
        self.deliver()


def _make_cgroup(cg, resources: dict) -> list[int]:
    """Make ``cg`` with ``resources``; its cgroup.procs files, open for the spawner."""
    cg.create()
    cg.apply(resources)
    return [os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC) for d in cg.dirs()]


def _remove_cgroup(cg, deadline: float) -> None:
    """rmdir each of its directories, again while the kernel still tears the pid namespace down."""
    while True:
        busy = False
        for where in cg.dirs():
            try:
                os.rmdir(where)
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise SystemFailure(f"cannot remove cgroup {where}: {err.strerror}") from err
                busy = True
        if not busy:
            return
        if time.monotonic() > deadline:
            cg.destroy()  # kills what is left
            return
        time.sleep(0.02)


_INIT_EXITED = "ended: its init exited (killed, out of memory, or its template {template} ended)"


def _logged(_result, error: BaseException | None) -> None:
    if error is not None:
        log.warning("%s", error)


class _Metrics:
    """The agent's Prometheus series (served on ``metrics_listen``)."""

    def __init__(self, pools) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.pools = set(pools)
        self.registry = CollectorRegistry()
        buckets = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.sandboxes = Gauge("zentry_pool_sandboxes", "Sandboxes of a pool by state (warm, claimed, starting)",
                               ["pool", "state"], registry=self.registry)
        self.claim_seconds = Histogram("zentry_pool_claim_seconds", "Time from a claim request to its reply",
                                       ["pool"], buckets=buckets, registry=self.registry)
        self.exec_seconds = Histogram("zentry_pool_exec_seconds", "Time from an exec request to the command's exit",
                                      ["pool"], buckets=buckets, registry=self.registry)
        self.start_seconds = Histogram("zentry_pool_start_seconds", "Time to start a warm sandbox",
                                       ["pool"], buckets=buckets, registry=self.registry)
        self.refill_failures = Counter("zentry_pool_refill_failures", "Warm sandboxes that failed to start",
                                       ["pool"], registry=self.registry)
        self.expired = Counter("zentry_pool_expired", "Claimed sandboxes destroyed by ttl or idle timeout",
                               ["pool", "reason"], registry=self.registry)
        self.refused = Counter("zentry_pool_claims_refused", "Claims refused (limit, timeout)",
                               ["pool", "reason"], registry=self.registry)
        for pool in pools:
            for state in ("warm", "claimed", "starting"):
                self.sandboxes.labels(pool, state).set(0)
            self.refill_failures.labels(pool)
        self.server = None

    def serve(self, listen: str) -> None:
        from prometheus_client import start_http_server

        from zentry.cmd.metrics_server import parse_listen

        host, port = parse_listen(listen)
        self.server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
