"""The envelope every frame on the bus carries.

Wire form (one msgpack array, see docs/protocol.md)::

    [version, type, id, parent, sender, time_ns, body]

``id`` is unique per message (16 random bytes as hex would be slow to make;
we use ``<sender-pid>-<counter>`` strings, unique per host while the pid
lives). ``parent`` is the id of the request a reply or event answers (Jupyter's
parent_header), or "" for none: it is what lets the tap show causality.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass

from zentry.bus import codec
from zentry.bus.errors import ProtocolError, UnknownMessage
from zentry.bus.message import Message, lookup

#: The protocol version. A peer refuses a frame whose major version differs.
PROTOCOL_VERSION = 1

_counter = itertools.count(1)
_prefix = f"{os.getpid():x}-"


def _after_fork() -> None:
    global _prefix
    _prefix = f"{os.getpid():x}-"


# Reset in the child, instead of a getpid() per message.
os.register_at_fork(after_in_child=_after_fork)


def new_id() -> str:
    """A message id unique on this host (pid + counter; reset after fork)."""
    return _prefix + str(next(_counter))


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message with its routing and causality header."""

    type: str
    id: str
    parent: str
    sender: str
    time_ns: int
    body: Message
    version: int = PROTOCOL_VERSION

    @classmethod
    def wrap(cls, body: Message, *, sender: str, parent: str = "", id: str | None = None) -> "Envelope":
        return cls(type=body.TAG, id=id or new_id(), parent=parent, sender=sender, time_ns=time.time_ns(), body=body)

    def encode(self) -> bytes:
        return codec.pack([self.version, self.type, self.id, self.parent, self.sender, self.time_ns, self.body.to_wire()])


def encode_message(body: Message, *, sender: str, parent: str = "", id: str | None = None) -> tuple[str, bytes]:
    """``(id, frame)`` of ``Envelope.wrap(...).encode()`` without building the Envelope (the hot path)."""
    mid = id or new_id()
    return mid, codec.pack([PROTOCOL_VERSION, body.TAG, mid, parent, sender, time.time_ns(), body.to_wire()])


def decode_header(frame: bytes) -> tuple[list, str]:
    """Decode a frame's outer array and check the header fields; returns (fields, id).

    Split from :func:`decode` so that an actor can answer a frame with a good
    header but a bad body with an error reply naming the request's id.
    """
    fields = codec.unpack(frame)
    if not isinstance(fields, list) or len(fields) != 7:
        raise ProtocolError("envelope must be an array of 7 fields")
    version, mtype, mid, parent, sender, time_ns, _body = fields
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("envelope version must be an int")
    if not isinstance(mid, str) or not mid or len(mid) > 128:
        raise ProtocolError("envelope id must be a non-empty string of at most 128 characters")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {PROTOCOL_VERSION})", id=mid)
    for name, value in (("type", mtype), ("parent", parent), ("sender", sender)):
        if not isinstance(value, str) or len(value) > 256:
            raise ProtocolError(f"envelope {name} must be a string of at most 256 characters", id=mid)
    if not isinstance(time_ns, int) or isinstance(time_ns, bool) or time_ns < 0:
        raise ProtocolError("envelope time must be a non-negative int (ns)", id=mid)
    return fields, mid


def decode(frame: bytes) -> Envelope:
    """Decode and type-check one frame. Raises ProtocolError/UnknownMessage."""
    fields, mid = decode_header(frame)
    version, mtype, _mid, parent, sender, time_ns, body = fields
    try:
        cls = lookup(mtype)
    except UnknownMessage as err:
        err.details["id"] = mid
        raise
    try:
        msg = cls.from_wire(body)
    except ProtocolError as err:
        err.details["id"] = mid
        raise
    return Envelope(type=mtype, id=mid, parent=parent, sender=sender, time_ns=time_ns, body=msg, version=version)
