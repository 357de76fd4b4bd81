"""The gofer actor: the only process that touches the host filesystem for a sandbox.

Before it starts any thread it moves into a private mount namespace; every
container root of the sandbox is assembled there (``rootfs.prepare_rootfs``)
at ``<bus_dir>/<container>.root``, so nothing it mounts is visible on the
host. A container init joins a copy of this namespace and pivots into its
root. When the gofer exits, its namespace (and every mount in it) goes away.

The gofer watches its controller's pidfd: without a controller nobody
prepares or releases roots any more (the sandbox kills the containers), so
it stops too.
"""

from __future__ import annotations

import os
import time

from zentry.actors.spawn import release_from_parent, report_ready
from zentry.bus.actor import Actor, Request, handles
from zentry.bus.endpoints import Endpoints
from zentry.bus.errors import NotFound
from zentry.bus.message import Message
from zentry.bus.messages import Ok, Prepare, Prepared, ReleaseRoot, RootPrepared
from zentry.sentry.abi import libc


class Gofer(Actor):
    name = "gofer"

    def __init__(self, endpoints: Endpoints, *, sandbox_id: str, ready_fd: int, controller_pid: int = 0) -> None:
        super().__init__(endpoints, sandbox_id=sandbox_id)
        self.ready_fd = ready_fd
        self.controller_pid = controller_pid
        self.roots: dict[str, str] = {}

    def on_start(self) -> None:
        if self.controller_pid:
            self.stop_with(self.controller_pid, "controller")
        report_ready(self.ready_fd)

    def on_stop(self) -> None:
        for cid in list(self.roots):
            self._release(cid)

    def mountpoint(self, container_id: str) -> str:
        return os.path.join(self.endpoints.bus_dir, f"{container_id}.root")

    @handles(Prepare)
    def prepare(self, msg: Prepare, req: Request) -> Message:
        from zentry.actors.gofer import rootfs

        t0 = time.perf_counter_ns()
        target = self.mountpoint(msg.container_id)
        os.makedirs(target, mode=0o755, exist_ok=True)
        try:
            rootfs.prepare_rootfs(msg.config, msg.bundle, target)
        except BaseException:
            rootfs.cleanup(target)
            _rmdir(target)
            raise
        self.roots[msg.container_id] = target
        release_from_parent()
        self.publish(
            RootPrepared(
                container_id=msg.container_id,
                rootfs=target,
                mounts=len(msg.config.get("mounts") or []),
                duration_ns=time.perf_counter_ns() - t0,
            ),
            parent=req.id,
        )
        return Prepared(rootfs=target, mntns_pid=os.getpid())

    @handles(ReleaseRoot)
    def release_root(self, msg: ReleaseRoot, req: Request) -> Message:
        if msg.container_id not in self.roots:
            raise NotFound(f"gofer has no root for container {msg.container_id!r}")
        self._release(msg.container_id)
        return Ok()

    def _release(self, container_id: str) -> None:
        from zentry.actors.gofer import rootfs

        target = self.roots.pop(container_id)
        rootfs.cleanup(target)
        _rmdir(target)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


def gofer_main(endpoints: Endpoints, sandbox_id: str, ready_fd: int, controller_pid: int = 0) -> int:
    """Entry point in the forked child: private mount namespace first, then the bus."""
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    libc.prctl(libc.PR_SET_NAME, _cstr("zentry-gofer"))
    return Gofer(endpoints, sandbox_id=sandbox_id, ready_fd=ready_fd, controller_pid=controller_pid).run()


def _cstr(text: str) -> int:
    import ctypes

    buf = ctypes.create_string_buffer(text.encode())
    _cstr.keep = buf  # type: ignore[attr-defined]
    return ctypes.addressof(buf)
