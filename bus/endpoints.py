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

Whatever the umask: a bus directory is made 0700 (and refused if it exists
owned by someone else, or is a symlink), ``/run/zentry-bus`` 0711, and every
ipc socket is bound under umask 0177 and then set to 0600. An ``ipc://``
endpoint without CURVE keys (``zentry tap --serve``) is accepted only in a
directory owned by this user (or root) that nobody else can enter
(:func:`check_private_socket_dir`): anyone who can connect reads the stream.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from zentry.bus.access import check_private
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


BUS_PARENT = "/run/zentry-bus"


def make_private_dir(path: str) -> None:
    """Create ``path`` (parents 0711) with the leaf at mode 0700, whatever the umask;
    refuse a leaf that is a symlink or someone else's (it could be planted)."""
    import stat

    from zentry.bus.errors import PermissionDenied

    old = os.umask(0o077)
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            os.umask(0o066)  # parents 0711: traversable, not listable or writable
            os.makedirs(parent, mode=0o711, exist_ok=True)
            os.umask(0o077)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    finally:
        os.umask(old)
    # its parent (the state root, or /run/zentry-bus) must be ours alone too:
    # whoever can write there can swap the directory for their own later
    check_private(parent, "bus directory parent", directory=True, st=os.stat(parent))
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionDenied(f"refusing bus directory {path}: {'not a directory' if not stat.S_ISDIR(st.st_mode) else f'owned by uid {st.st_uid}'}")
    os.chmod(path, 0o700)


def check_private_socket_dir(socket_path: str, purpose: str) -> None:
    """Refuse a socket path whose directory others could enter (or own):
    whoever can connect to it reads what it serves. ``purpose`` says what
    was asked, for the message (``serve ipc:///x without CURVE keys``)."""
    import stat

    from zentry.bus.errors import PermissionDenied

    where = os.path.dirname(os.path.abspath(socket_path))
    try:
        st = os.stat(where)
    except OSError as err:
        raise InvalidArgument(f"cannot {purpose}: {where}: {err.strerror}") from None
    if st.st_uid not in (0, os.geteuid()):
        problem = f"owned by uid {st.st_uid}"
    elif st.st_mode & 0o077:
        problem = f"open to others (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return
    raise PermissionDenied(f"refusing to {purpose}: its directory {where} is {problem}; use a directory of mode 0700")


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
    """Refuse endpoints that would expose a sandbox: tcp needs CURVE keys, ipc without them a private directory."""
    if endpoint.startswith("ipc://"):
        if not curve_secret:
            check_private_socket_dir(endpoint[len("ipc://"):], f"serve {endpoint} without CURVE keys")
        return
    if endpoint.startswith("tcp://"):
        if not curve_secret:
            raise InvalidArgument(f"refusing to listen on {endpoint} without CURVE keys (--server-key)")
        return
    if endpoint.startswith("inproc://"):
        return
    raise InvalidArgument(f"unsupported endpoint {endpoint!r} (ipc:// or tcp:// with CURVE)")


def bind_private(sock, endpoint: str) -> None:
    """Bind a ZeroMQ socket; an ipc socket file is 0600 from its first moment, whatever the umask."""
    if not endpoint.startswith("ipc://"):
        sock.bind(endpoint)
        return
    old = os.umask(0o177)
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old)
    chmod_socket(endpoint)


def chmod_socket(endpoint: str) -> None:
    """Make an ipc socket file owner-only (0600)."""
    if endpoint.startswith("ipc://"):
        try:
            os.chmod(endpoint[len("ipc://"):], 0o600)
        except FileNotFoundError:
            pass
