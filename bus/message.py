"""How a message type is declared: the ``@message`` decorator, the registry, and field introspection.

A message type is a frozen, slotted, keyword-only class with a wire tag and
a one-line doc per field::

    @message("container.start", "request")
    class Start(Message):
        \"\"\"Start a created container.\"\"\"
        container_id: str = doc("the container to start")

The registry maps tags to classes; ``bus/messages.py`` is the one module that
declares the catalogue, and ``docs/protocol.md`` documents it (a test keeps
the two equal). :func:`fields` lists a type's fields (name, wire type name,
doc, default) for the docs checker and the tests. Decoding checks field types
strictly; unknown fields are ignored (the versioning rule), missing required
fields are an error.

Why not dataclasses: creating ~60 dataclasses cost ~90 ms at import (each
execs its own generated methods, and ``dataclasses`` imports ``inspect``),
which every CLI call paid. Here the metaclass of :class:`Message` reads a
declaration's annotations as text (no ``typing`` evaluation: see
:func:`parse_type`) and makes the class slotted as it is created, and
``@message`` registers it; a type's ``__init__``, ``to_wire`` and
``from_wire`` are generated the first time the type is used (one small
``exec`` per type actually used), so importing the catalogue costs a few
milliseconds and the hot path runs straight-line code. Instances are
immutable (:class:`FrozenMessageError`), compare and hash by type and
field values, and pickle.
"""

from __future__ import annotations

from operator import attrgetter

from zentry.bus.errors import ProtocolError, UnknownMessage

#: wire tag -> message class
REGISTRY: dict[str, type["Message"]] = {}


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: A field without a default (or a factory).
MISSING = _Missing()
_ABSENT = object()


class FrozenMessageError(AttributeError):
    """A message's fields cannot be assigned or deleted (messages are immutable)."""


class Field:
    """One field of a message type, as :func:`fields` returns it.

    ``type`` is the wire type name (``int``, ``list[str]``, ``map[str, any]``,
    ``str | None``…, the names docs/protocol.md uses); ``spec`` the same
    parsed: a scalar name (``int``, ``float``, ``str``, ``bytes``, ``bool``,
    ``any``, ``none``), ``("list", item)``, ``("map", key, value)`` or
    ``("union", (spec, ...))``.
    """

    __slots__ = ("name", "type", "spec", "doc", "default", "factory", "check", "exact")

    def __init__(self, doc: str, default: object = MISSING, factory: object = MISSING) -> None:
        self.doc = doc
        self.default = default
        self.factory = factory
        self.name = ""
        self.type = ""
        self.spec: object = None
        self.check = None
        self.exact: frozenset = frozenset()

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.factory is MISSING

    def default_value(self) -> object:
        """The value a receiver assumes when the field is left out (a fresh one for factories)."""
        if self.factory is not MISSING:
            return self.factory()  # type: ignore[operator]
        if self.default is MISSING:
            raise LookupError(f"field {self.name!r} is required: it has no default")
        return self.default

    def __repr__(self) -> str:
        return f"Field({self.name!r}, {self.type!r}, required={self.required})"


def doc(text: str, default: object = MISSING, *, factory: object = MISSING) -> object:
    """A field with its one-line documentation (shown in docs/protocol.md)."""
    return Field(text, default, factory)


_PARSED: dict[object, tuple] = {}


def _field_type(annotation: object) -> tuple:
    """(spec, check, type name, exact types) of an annotation; cached: most fields are str or int."""
    got = _PARSED.get(annotation)
    if got is None:
        spec = parse_type(annotation)
        check, name = _checker(spec)
        got = _PARSED[annotation] = (spec, check, name, _EXACT.get(name, frozenset()))
    return got


class _MessageType(type):
    """Turns a message class body into a slotted class in one step: each
    annotated attribute must be a ``doc(...)`` field; it leaves the class
    namespace (its default lives in the Field) and becomes a slot."""

    def __new__(mcs, name: str, bases: tuple, ns: dict, **kw: object) -> type:
        if "__slots__" in ns:  # Message itself
            return super().__new__(mcs, name, bases, ns, **kw)
        declared = []
        for fname, annotation in ns.get("__annotations__", {}).items():
            f = ns.pop(fname, MISSING)
            if not isinstance(f, Field):
                raise TypeError(f"{name}.{fname} has no doc")
            if f.name:  # a doc() object used twice
                f = Field(f.doc, f.default, f.factory)
            f.name = fname
            f.spec, f.check, f.type, f.exact = _field_type(annotation)
            declared.append(f)
        names = tuple(f.name for f in declared)
        ns["__slots__"] = names
        ns["_FIELDS"] = tuple(declared)
        ns["_NAMES"] = names
        if len(names) > 1:
            getter = attrgetter(*names)
            ns["_values"] = lambda self: getter(self)
        elif names:
            ns["_values"] = lambda self, _n=names[0]: (getattr(self, _n),)
        return super().__new__(mcs, name, bases, ns, **kw)


class Message(metaclass=_MessageType):
    """Base of every message type; subclasses are made by ``@message``."""

    __slots__ = ()
    TAG: str = ""
    KIND: str = ""  # "request", "reply" or "event"
    IDEMPOTENT: bool = False
    _FIELDS: tuple[Field, ...] = ()
    _NAMES: tuple[str, ...] = ()

    # Stand-ins until the type's own code is generated on first use (_compile).
    def __init__(self, **values: object) -> None:
        _compile(type(self)).__init__(self, **values)

    def to_wire(self) -> dict:
        return _compile(type(self)).to_wire(self)

    @classmethod
    def from_wire(cls, body: object) -> "Message":
        return _compile(cls).from_wire(body)

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._NAMES)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._NAMES)})"

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenMessageError(f"cannot assign to field {name!r} of {type(self).__name__}: messages are immutable")

    def __delattr__(self, name: str) -> None:
        raise FrozenMessageError(f"cannot delete field {name!r} of {type(self).__name__}: messages are immutable")

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self._values()))


def _rebuild(cls: type[Message], values: tuple) -> Message:
    return cls(**dict(zip(cls._NAMES, values)))


def fields(cls_or_msg: type[Message] | Message) -> tuple[Field, ...]:
    """The declared fields of a message type (or of a message's type), in order."""
    cls = cls_or_msg if isinstance(cls_or_msg, type) else type(cls_or_msg)
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        raise TypeError(f"{cls_or_msg!r} is not a message type")
    return cls._FIELDS


# --- field types: annotation strings, parsed without typing ------------------------

#: type name -> the exact Python types that pass without calling the checker
#: (msgpack decodes to exact int/float/str/bytes/bool).
_EXACT = {"int": frozenset({int}), "float": frozenset({int, float}), "str": frozenset({str}),
          "bytes": frozenset({bytes}), "bool": frozenset({bool})}
_SCALARS = {"int": "int", "float": "float", "str": "str", "bytes": "bytes", "bool": "bool",
            "Any": "any", "typing.Any": "any", "object": "any", "None": "none", "NoneType": "none"}
_GENERICS = {"list": "list", "List": "list", "typing.List": "list", "dict": "map", "Dict": "map", "typing.Dict": "map",
             "Optional": "optional", "typing.Optional": "optional"}


def _tokens(text: str) -> list[str]:
    out, word = [], ""
    for ch in text:
        if ch in "[],|":
            if word.strip():
                out.append(word.strip())
            word = ""
            out.append(ch)
        else:
            word += ch
    if word.strip():
        out.append(word.strip())
    return out


def parse_type(annotation: object) -> object:
    """An annotation (a string, as ``from __future__ import annotations`` leaves
    it, or a builtin type) -> a field spec (see :class:`Field`)."""
    if isinstance(annotation, type):
        annotation = "None" if annotation is type(None) else annotation.__name__
    text = str(annotation)
    toks = _tokens(text)
    pos = 0

    def union() -> object:
        nonlocal pos
        parts = [atom()]
        while pos < len(toks) and toks[pos] == "|":
            pos += 1
            parts.append(atom())
        return parts[0] if len(parts) == 1 else ("union", tuple(parts))

    def atom() -> object:
        nonlocal pos
        if pos >= len(toks) or toks[pos] in "[],|":
            raise TypeError(f"unsupported field type {text!r} in a message declaration")
        name = toks[pos]
        pos += 1
        args: list[object] = []
        if pos < len(toks) and toks[pos] == "[":
            pos += 1
            args.append(union())
            while toks[pos] == ",":
                pos += 1
                args.append(union())
            if toks[pos] != "]":
                raise TypeError(f"unsupported field type {text!r} in a message declaration")
            pos += 1
        if name in _SCALARS and not args:
            return _SCALARS[name]
        kind = _GENERICS.get(name)
        if kind == "list" and len(args) <= 1:
            return ("list", args[0] if args else "any")
        if kind == "map" and len(args) in (0, 2):
            return ("map", *(args or ["str", "any"]))
        if kind == "optional" and len(args) == 1:
            return ("union", (args[0], "none"))
        raise TypeError(f"unsupported field type {text!r} in a message declaration")

    try:
        spec = union()
    except IndexError:
        raise TypeError(f"unsupported field type {text!r} in a message declaration") from None
    if pos != len(toks):
        raise TypeError(f"unsupported field type {text!r} in a message declaration")
    return spec


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_SCALAR_CHECKS = {
    "any": lambda v: True,
    "none": lambda v: v is None,
    "bool": lambda v: isinstance(v, bool),
    "int": _is_int,
    "float": _is_number,
    "str": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes),
}


def _checker(spec: object) -> tuple:
    """A predicate for values of ``spec`` and its readable type name."""
    if isinstance(spec, str):
        return _SCALAR_CHECKS[spec], spec
    kind = spec[0]  # type: ignore[index]
    if kind == "list":
        item, item_name = _checker(spec[1])  # type: ignore[index]
        return (lambda v: isinstance(v, list) and all(item(i) for i in v)), f"list[{item_name}]"
    if kind == "map":
        kc, kn = _checker(spec[1])  # type: ignore[index]
        vc, vn = _checker(spec[2])  # type: ignore[index]
        return (lambda v: isinstance(v, dict) and all(kc(k) and vc(x) for k, x in v.items())), f"map[{kn}, {vn}]"
    alts = spec[1]  # type: ignore[index]
    nullable = "none" in alts
    parts = [_checker(a) for a in alts if a != "none"]
    name = " | ".join(n for _c, n in parts) + (" | None" if nullable else "")
    return (lambda v: (nullable and v is None) or any(c(v) for c, _n in parts)), name


# --- declaring --------------------------------------------------------------------


def message(tag: str, kind: str, *, idempotent: bool = False):
    """Declare a message type with its wire tag and kind (request/reply/event)."""
    if kind not in ("request", "reply", "event"):
        raise ValueError(f"unknown message kind {kind!r}")

    def register(cls: type) -> type:
        if tag in REGISTRY:
            raise ValueError(f"message tag {tag!r} declared twice")
        if not isinstance(cls, _MessageType) or cls is Message:
            raise TypeError(f"{cls!r} is not a subclass of Message")
        cls.TAG = tag
        cls.KIND = kind
        cls.IDEMPOTENT = idempotent
        REGISTRY[tag] = cls
        return cls

    return register


def _compile(cls: type[Message]) -> type[Message]:
    """Generate ``cls``'s ``__init__``, ``to_wire`` and ``from_wire`` (once, on first use)."""
    if "__init__" in cls.__dict__:
        if cls is Message:
            raise TypeError("Message is abstract: declare a type with @message")
        return cls
    fs = cls._FIELDS
    env: dict[str, object] = {"MISSING": MISSING, "_ABSENT": _ABSENT, "ProtocolError": ProtocolError,
                              "_new": object.__new__, "cls": cls, "_b": f"{cls.TAG}: body must be a map, not "}
    params, init, wire, decode, build = [], [], [], [], []
    for i, f in enumerate(fs):
        n = f.name
        env[f"_s{i}"] = cls.__dict__[n].__set__  # the slot's own setter: bypasses the frozen __setattr__
        env[f"_c{i}"] = f.check
        env[f"_x{i}"] = f.exact
        if f.factory is not MISSING:
            env[f"_f{i}"] = f.factory
            params.append(f"{n}=MISSING")
            init.append(f"    if {n} is MISSING: {n} = _f{i}()")
        elif f.default is not MISSING:
            env[f"_d{i}"] = f.default
            params.append(f"{n}=_d{i}")
        else:
            params.append(n)
        init.append(f"    _s{i}(self, {n})")
        wire.append(f"{n!r}: self.{n}")
        decode.append(f"    v = body.get({n!r}, _ABSENT)")
        env[f"_w{i}"] = f"{cls.TAG}: field {n!r} must be {f.type}, got "
        if f.required:
            env[f"_r{i}"] = f"{cls.TAG}: missing field {n!r}"
            decode.append(f"    if v is _ABSENT: raise ProtocolError(_r{i})")
            decode.append(f"    if type(v) not in _x{i} and not _c{i}(v): raise ProtocolError(_w{i} + type(v).__name__)")
        else:
            default = f"_f{i}()" if f.factory is not MISSING else f"_d{i}"
            decode.append(f"    if v is _ABSENT: v = {default}")
            decode.append(f"    elif type(v) not in _x{i} and not _c{i}(v): raise ProtocolError(_w{i} + type(v).__name__)")
        decode.append(f"    _s{i}(m, v)")
    src = [
        f"def __init__(self{', *, ' + ', '.join(params) if params else ''}):",
        *(init or ["    pass"]),
        "def to_wire(self):",
        f"    return {{{', '.join(wire)}}}",
        "def from_wire(body):",
        "    if type(body) is not dict: raise ProtocolError(_b + type(body).__name__)",
        "    m = _new(cls)",
        *decode,
        "    return m",
    ]
    exec(compile("\n".join(src), f"<message {cls.TAG}>", "exec"), env)  # noqa: S102 - our own generated code
    init_fn = env["__init__"]
    init_fn.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.to_wire = env["to_wire"]  # type: ignore[method-assign]
    cls.from_wire = staticmethod(env["from_wire"])  # type: ignore[method-assign, assignment]
    cls.__init__ = init_fn  # type: ignore[misc]  # last: it marks the class compiled
    return cls


def precompile(*types: type[Message]) -> None:
    """Generate these types' methods now: a process about to fork does it once
    for the children that will all use them, instead of each child on its own."""
    for cls in types:
        _compile(cls)


def lookup(tag: str) -> type[Message]:
    try:
        return REGISTRY[tag]
    except KeyError:
        raise UnknownMessage(f"unknown message type {tag!r}") from None
