"""How a message type is declared: the ``@message`` decorator and the registry.

A message type is a frozen, slotted, keyword-only dataclass with a wire tag
and a one-line doc per field::

    @message("container.start", idempotent=False)
    class Start(Message):
        \"\"\"Start a created container.\"\"\"
        container_id: str = doc("the container to start")

The registry maps tags to classes; ``bus/messages.py`` is the one module that
declares the catalogue, and ``docs/protocol.md`` documents it (a test keeps
the two equal). Decoding checks field types strictly; unknown fields are
ignored (the versioning rule), missing required fields are an error.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, ClassVar

from zentry.bus.errors import ProtocolError, UnknownMessage

#: wire tag -> message class
REGISTRY: dict[str, type["Message"]] = {}


class Message:
    """Base of every message type; subclasses are made by ``@message``."""

    __slots__ = ()
    TAG: ClassVar[str] = ""
    KIND: ClassVar[str] = ""  # "request", "reply" or "event"
    IDEMPOTENT: ClassVar[bool] = False
    _FIELDS: ClassVar[tuple[tuple[str, Callable[[Any], bool], str, bool], ...]] = ()
    _NAMES: ClassVar[tuple[str, ...]] = ()
    _FAST: ClassVar[tuple[tuple[str, frozenset, Callable[[Any], bool], str, bool], ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._NAMES}

    @classmethod
    def from_wire(cls, body: Any) -> "Message":
        if type(body) is not dict:
            raise ProtocolError(f"{cls.TAG}: body must be a map, not {type(body).__name__}")
        values = {}
        # _FAST mirrors _FIELDS with the exact wire types a value may have
        # (msgpack decodes to exact int/float/str/bytes/bool), so the common
        # case is one type() lookup instead of a predicate call.
        for name, exact, check, type_name, required in cls._FAST:
            value = body.get(name, _ABSENT)
            if value is _ABSENT:
                if required:
                    raise ProtocolError(f"{cls.TAG}: missing field {name!r}")
                continue
            if type(value) not in exact and not check(value):
                raise ProtocolError(f"{cls.TAG}: field {name!r} must be {type_name}, got {type(value).__name__}")
            values[name] = value
        return cls(**values)


_ABSENT = object()

#: type name -> the exact Python types that pass without calling the checker
_EXACT = {"int": frozenset({int}), "float": frozenset({int, float}), "str": frozenset({str}),
          "bytes": frozenset({bytes}), "bool": frozenset({bool})}


def doc(text: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """A field with its one-line documentation (shown in docs/protocol.md)."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"doc": text})
    return dataclasses.field(default=default, metadata={"doc": text})


def _checker(tp: Any) -> tuple[Callable[[Any], bool], str]:
    """A predicate for values of annotation ``tp`` and a readable type name."""
    if tp is Any:
        return (lambda v: True), "any"
    if tp is bool:
        return (lambda v: isinstance(v, bool)), "bool"
    if tp is int:
        return (lambda v: isinstance(v, int) and not isinstance(v, bool)), "int"
    if tp is float:
        return (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)), "float"
    if tp is str:
        return (lambda v: isinstance(v, str)), "str"
    if tp is bytes:
        return (lambda v: isinstance(v, bytes)), "bytes"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_checker(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        name = " | ".join(n for _c, n in parts) + (" | None" if nullable else "")
        return (lambda v: (nullable and v is None) or any(c(v) for c, _n in parts)), name
    if tp is list or origin is list:
        item, item_name = _checker(args[0]) if args else ((lambda v: True), "any")
        return (lambda v: isinstance(v, list) and all(item(i) for i in v)), f"list[{item_name}]"
    if tp is dict or origin is dict:
        if args:
            kc, kn = _checker(args[0])
            vc, vn = _checker(args[1])
        else:
            kc, kn, vc, vn = (lambda k: isinstance(k, str)), "str", (lambda v: True), "any"
        return (lambda v: isinstance(v, dict) and all(kc(k) and vc(x) for k, x in v.items())), f"map[{kn}, {vn}]"
    raise TypeError(f"unsupported field type {tp!r} in a message declaration")


def message(tag: str, kind: str, *, idempotent: bool = False) -> Callable[[type], type]:
    """Declare a message type with its wire tag and kind (request/reply/event)."""
    if kind not in ("request", "reply", "event"):
        raise ValueError(f"unknown message kind {kind!r}")

    def register(cls: type) -> type:
        if tag in REGISTRY:
            raise ValueError(f"message tag {tag!r} declared twice")
        dc = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
        hints = typing.get_type_hints(dc)
        fields = []
        for f in dataclasses.fields(dc):
            if "doc" not in f.metadata:
                raise TypeError(f"{tag}.{f.name} has no doc")
            check, type_name = _checker(hints[f.name])
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields.append((f.name, check, type_name, required))
        dc.TAG = tag
        dc.KIND = kind
        dc.IDEMPOTENT = idempotent
        dc._FIELDS = tuple(fields)
        dc._NAMES = tuple(f[0] for f in fields)
        dc._FAST = tuple((n, _EXACT.get(tn, frozenset()), c, tn, r) for n, c, tn, r in fields)
        REGISTRY[tag] = dc
        return dc

    return register


def lookup(tag: str) -> type[Message]:
    try:
        return REGISTRY[tag]
    except KeyError:
        raise UnknownMessage(f"unknown message type {tag!r}") from None
