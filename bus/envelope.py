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

from zentry.bus import codec
from zentry.bus.errors import ProtocolError, UnknownMessage
from zentry.bus.message import REGISTRY, Message

#: The protocol version. A peer refuses a frame whose version differs.
#: 2: events travel in batches (``[topic, seq, batch]``, bus/events.py).
PROTOCOL_VERSION = 2

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


class Envelope:
    """One message with its routing and causality header (immutable)."""

    __slots__ = ("type", "id", "parent", "sender", "time_ns", "body", "version")

    def __init__(self, *, type: str, id: str, parent: str, sender: str, time_ns: int, body: Message,
                 version: int = PROTOCOL_VERSION) -> None:
        _set_type(self, type)
        _set_id(self, id)
        _set_parent(self, parent)
        _set_sender(self, sender)
        _set_time(self, time_ns)
        _set_body(self, body)
        _set_version(self, version)

    def _key(self) -> tuple:
        return (self.version, self.type, self.id, self.parent, self.sender, self.time_ns, self.body)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Envelope:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Envelope(type={self.type!r}, id={self.id!r}, parent={self.parent!r}, sender={self.sender!r}, "
                f"time_ns={self.time_ns!r}, body={self.body!r}, version={self.version!r})")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to {name!r}: an Envelope is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete {name!r}: an Envelope is immutable")

    @classmethod
    def wrap(cls, body: Message, *, sender: str, parent: str = "", id: str | None = None) -> "Envelope":
        return cls(type=body.TAG, id=id or new_id(), parent=parent, sender=sender, time_ns=time.time_ns(), body=body)

    def encode(self) -> bytes:
        return codec.pack([self.version, self.type, self.id, self.parent, self.sender, self.time_ns, self.body.to_wire()])


# The slots' own setters (the class refuses attribute assignment).
_new = object.__new__
_set_type = Envelope.type.__set__  # type: ignore[attr-defined]
_set_id = Envelope.id.__set__  # type: ignore[attr-defined]
_set_parent = Envelope.parent.__set__  # type: ignore[attr-defined]
_set_sender = Envelope.sender.__set__  # type: ignore[attr-defined]
_set_time = Envelope.time_ns.__set__  # type: ignore[attr-defined]
_set_body = Envelope.body.__set__  # type: ignore[attr-defined]
_set_version = Envelope.version.__set__  # type: ignore[attr-defined]


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
    fields = codec.unpack(frame)
    # The common case in one test of exact types (msgpack makes exact ints and
    # strs); anything unusual goes through decode_header for the precise error.
    if type(fields) is list and len(fields) == 7:
        version, mtype, mid, parent, sender, time_ns, body = fields
        if not (type(version) is int and version == PROTOCOL_VERSION and type(mid) is str and 0 < len(mid) <= 128
                and type(mtype) is str and len(mtype) <= 256 and type(parent) is str and len(parent) <= 256
                and type(sender) is str and len(sender) <= 256 and type(time_ns) is int and time_ns >= 0):
            decode_header(frame)
    else:
        decode_header(frame)
        raise AssertionError("decode_header accepted what decode refused")  # pragma: no cover
    cls = REGISTRY.get(mtype)
    if cls is None:
        raise UnknownMessage(f"unknown message type {mtype!r}", id=mid)
    try:
        msg = cls.from_wire(body)
    except ProtocolError as err:
        err.details["id"] = mid
        raise
    env = _new(Envelope)
    _set_type(env, mtype)
    _set_id(env, mid)
    _set_parent(env, parent)
    _set_sender(env, sender)
    _set_time(env, time_ns)
    _set_body(env, msg)
    _set_version(env, version)
    return env
