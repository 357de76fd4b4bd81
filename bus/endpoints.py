"""Where a sandbox's sockets live, and the rules that keep them private.

Layout (all under the sandbox's bus directory, mode 0700, sockets 0600)::

    controller.sock  ROUTER   lifecycle requests (CLI -> controller)
    controller.ctl   ROUTER   control lane: ping, shutdown
    sandbox.sock / sandbox.ctl, gofer.sock / gofer.ctl   the same for each actor
    events.in        XSUB     every actor's PUB connects here
    events.sock      XPUB     the sandbox's event stream (zentry tap)
    fds.sock         SEQPACKET  SCM_RIGHTS side channel into the sandbox actor

ipc paths are limited to 107 bytes; a bus directory whose paths would be
longer moves to ``/run/zentry-bus/<hash>`` and its path is recorded in the
container's state. ``tcp://`` endpoints are refused unless CURVE keys are given.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from zentry.bus.errors import InvalidArgument

_IPC_MAX = 107
_LONGEST_NAME = "controller.ctl"


def bus_dir_for(state_dir: str) -> str:
    """The bus directory for a sandbox whose state lives in ``state_dir``."""
    if len(os.path.join(state_dir, _LONGEST_NAME)) <= _IPC_MAX - 8:
        return state_dir
    import hashlib  # rare (long state paths), and 20 ms to import

    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:20]
    return os.path.join("/run/zentry-bus", digest)


def make_private_dir(path: str) -> None:
    """Create ``path`` (and parents) with the leaf at mode 0700."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class Endpoints(NamedTuple):
    """The socket addresses of one sandbox."""

    bus_dir: str

    def ipc(self, name: str) -> str:
        return "ipc://" + os.path.join(self.bus_dir, name)

    def path(self, name: str) -> str:
        return os.path.join(self.bus_dir, name)

    def actor(self, actor: str) -> str:
        return self.ipc(f"{actor}.sock")

    def control(self, actor: str) -> str:
        return self.ipc(f"{actor}.ctl")

    @property
    def events_in(self) -> str:
        return self.ipc("events.in")

    @property
    def events(self) -> str:
        return self.ipc("events.sock")

    @property
    def fd_socket(self) -> str:
        return self.path("fds.sock")


def check_endpoint(endpoint: str, curve_secret: bytes | None = None) -> None:
    """Refuse endpoints that would expose a sandbox: tcp needs CURVE keys."""
    if endpoint.startswith("ipc://"):
        return
    if endpoint.startswith("tcp://"):
        if not curve_secret:
            raise InvalidArgument(f"refusing to listen on {endpoint} without CURVE keys (--server-key)")
        return
    if endpoint.startswith("inproc://"):
        return
    raise InvalidArgument(f"unsupported endpoint {endpoint!r} (ipc:// or tcp:// with CURVE)")


def chmod_socket(endpoint: str) -> None:
    """Make an ipc socket file owner-only (0600)."""
    if endpoint.startswith("ipc://"):
        try:
            os.chmod(endpoint[len("ipc://"):], 0o600)
        except FileNotFoundError:
            pass
