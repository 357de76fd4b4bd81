"""Contract: every registered message type round-trips through the envelope,
and the decoder enforces the rules docs/protocol.md states (versioning,
unknown fields, required fields, field types, error codes)."""

from __future__ import annotations

import os

import msgpack
import pytest

import zentry.bus.messages as M
from zentry.bus import codec, envelope, errors
from zentry.bus.envelope import Envelope, PROTOCOL_VERSION
from zentry.bus.errors import ProtocolError, UnknownMessage, ZentryError
from zentry.bus.message import MISSING, REGISTRY, Field, FrozenMessageError, Message, doc, fields, lookup, message

TAGS = sorted(REGISTRY)
V = PROTOCOL_VERSION

# A nested value of every kind the codec carries, for `Any` fields.
ANY_SAMPLE = {"n": None, "b": True, "i": -(2**63), "u": 2**64 - 1, "f": 0.5, "s": "é✓", "y": b"\x00\xff", "l": [1, [2, {"k": "v"}]]}


def sample(spec: object, name: str) -> object:
    """A non-default sample value for a field spec (``Field.spec``)."""
    if spec == "any":
        return ANY_SAMPLE
    if spec == "bool":
        return True
    if spec == "int":
        return 2**40 + len(name)
    if spec == "float":
        return 1.25
    if spec == "str":
        return f"{name}-värde"
    if spec == "bytes":
        return b"\x00" + name.encode()
    kind = spec[0]
    if kind == "list":
        return [sample(spec[1], name), sample(spec[1], name + "2")]
    if kind == "map":
        return {"k1": sample(spec[2], name), "k2": sample(spec[2], name + "2")}
    if kind == "union":
        return sample([a for a in spec[1] if a != "none"][0], name)
    raise AssertionError(f"no sample for {spec!r}")


def wrong(spec: object) -> list:
    """Values that must be refused for a field spec."""
    if spec == "any":
        return []
    if spec == "bool":
        return [1, "true", None]
    if spec == "int":
        return [True, "1", 1.0, None]
    if spec == "float":
        return [False, "1.0", None]
    if spec == "str":
        return [b"bytes", 1, None, ["s"]]
    if spec == "bytes":
        return ["str", 1]
    kind = spec[0]
    if kind == "list":
        bad_items = wrong(spec[1])
        return [{}, "list", None] + ([[bad_items[0]]] if bad_items else [])
    if kind == "map":
        bad_values = wrong(spec[2])
        return [[], "map", None] + ([{"k": bad_values[0]}] if bad_values else [])
    raise AssertionError(f"no wrong values for {spec!r}")


def full_instance(cls: type[Message]) -> Message:
    return cls(**{f.name: sample(f.spec, f.name) for f in fields(cls)})


def required_only(cls: type[Message]) -> Message:
    return cls(**{f.name: sample(f.spec, f.name) for f in fields(cls) if f.required})


def frame_of(tag: str, body: object, *, version: int = PROTOCOL_VERSION, mid: str = "abc-1") -> bytes:
    return codec.pack([version, tag, mid, "p-1", "test", 123, body])


@pytest.mark.parametrize("tag", TAGS)
def test_every_message_round_trips(tag):
    cls = REGISTRY[tag]
    for msg in (full_instance(cls), required_only(cls)):
        env = Envelope.wrap(msg, sender="contract", parent="req-7")
        frame = env.encode()
        back = envelope.decode(frame)
        assert back == env
        assert type(back.body) is cls and back.body == msg
        assert (back.type, back.parent, back.sender, back.version) == (tag, "req-7", "contract", PROTOCOL_VERSION)
        # The wire form is the documented 7-field array with the body as a map.
        wire = msgpack.unpackb(frame, raw=False)
        assert wire[:6] == [PROTOCOL_VERSION, tag, env.id, "req-7", "contract", env.time_ns]
        assert wire[6] == {f.name: getattr(msg, f.name) for f in fields(cls)}


@pytest.mark.parametrize("tag", TAGS)
def test_unknown_fields_are_ignored(tag):
    cls = REGISTRY[tag]
    msg = full_instance(cls)
    body = dict(msg.to_wire(), added_in_v2=[1, 2, 3], another={"x": 1})
    assert envelope.decode(frame_of(tag, body)).body == msg


@pytest.mark.parametrize("tag", TAGS)
def test_missing_optional_fields_take_defaults(tag):
    cls = REGISTRY[tag]
    full = full_instance(cls)
    body = {f.name: getattr(full, f.name) for f in fields(cls) if f.required}
    assert envelope.decode(frame_of(tag, body)).body == required_only(cls)


@pytest.mark.parametrize("tag", [t for t in TAGS if any(f.required for f in fields(REGISTRY[t]))])
def test_missing_required_field_is_refused(tag):
    cls = REGISTRY[tag]
    body = full_instance(cls).to_wire()
    for f in fields(cls):
        if not f.required:
            continue
        partial = {k: v for k, v in body.items() if k != f.name}
        with pytest.raises(ProtocolError, match=f"missing field '{f.name}'") as info:
            envelope.decode(frame_of(tag, partial, mid="m-miss"))
        assert info.value.details["id"] == "m-miss"
        assert type(info.value) is ProtocolError


@pytest.mark.parametrize("tag", [t for t in TAGS if fields(REGISTRY[t])])
def test_wrong_field_types_are_refused(tag):
    cls = REGISTRY[tag]
    body = full_instance(cls).to_wire()
    checked = 0
    for f in fields(cls):
        for bad in wrong(f.spec):
            with pytest.raises(ProtocolError, match=f"field '{f.name}' must be") as info:
                envelope.decode(frame_of(tag, dict(body, **{f.name: bad}), mid="m-type"))
            assert info.value.details["id"] == "m-type"
            checked += 1
    if any(f.spec != "any" for f in fields(cls)):
        assert checked


def test_body_must_be_a_map():
    for body in ([], "x", None, 1, [["container_id", "c"]]):
        with pytest.raises(ProtocolError, match="body must be a map"):
            envelope.decode(frame_of("container.start", body))


def test_unknown_type_is_unknown_message_with_id():
    with pytest.raises(UnknownMessage) as info:
        envelope.decode(frame_of("container.teleport", {}, mid="m-unk"))
    assert info.value.code == "unknown_message"
    assert info.value.details["id"] == "m-unk"
    with pytest.raises(UnknownMessage):
        lookup("nope")


@pytest.mark.parametrize("version", sorted({0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 100, -1}))
def test_version_mismatch_is_refused_with_id(version):
    with pytest.raises(ProtocolError, match="not supported") as info:
        envelope.decode(frame_of("ping", {}, version=version, mid="m-ver"))
    assert type(info.value) is ProtocolError
    assert info.value.details["id"] == "m-ver"


@pytest.mark.parametrize(
    "fields,match",
    [
        ([V, "ping", "i", "", "s", 1], "7 fields"),
        ([V, "ping", "i", "", "s", 1, {}, 0], "7 fields"),
        ({"version": 1}, "7 fields"),
        ([True, "ping", "i", "", "s", 1, {}], "version must be an int"),
        ([V, "ping", "", "", "s", 1, {}], "envelope id"),
        ([V, "ping", 7, "", "s", 1, {}], "envelope id"),
        ([V, "ping", "x" * 129, "", "s", 1, {}], "envelope id"),
        ([V, 5, "i", "", "s", 1, {}], "envelope type"),
        ([V, "ping", "i", None, "s", 1, {}], "envelope parent"),
        ([V, "ping", "i", "", "s" * 257, 1, {}], "envelope sender"),
        ([V, "ping", "i", "", "s", -1, {}], "envelope time"),
        ([V, "ping", "i", "", "s", 1.5, {}], "envelope time"),
        ([V, "ping", "i", "", "s", False, {}], "envelope time"),
    ],
)
def test_bad_headers_are_refused(fields, match):
    with pytest.raises(ProtocolError, match=match):
        envelope.decode(codec.pack(fields))


def test_new_id_is_unique_and_names_the_pid():
    ids = {envelope.new_id() for _ in range(10000)}
    assert len(ids) == 10000
    assert all(i.startswith(f"{os.getpid():x}-") for i in ids)


def test_new_id_prefix_follows_fork():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave without running pytest's atexit
        try:
            os.write(w, envelope.new_id().encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        child_id = os.read(r, 200).decode()
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    assert child_id.startswith(f"{pid:x}-")


# --- the codec's own rules -----------------------------------------------------

def test_codec_refuses_values_that_are_not_wire_types():
    for value in ({1, 2}, object(), 1j, {1: "int key"}.keys(), 2**64):
        with pytest.raises(ProtocolError):
            codec.pack(value)


def test_codec_turns_tuples_into_lists_and_keeps_bytes_and_str_apart():
    assert codec.unpack(codec.pack((1, (2, 3)))) == [1, [2, 3]]
    assert codec.unpack(codec.pack([b"a", "a"])) == [b"a", "a"]


def test_codec_refuses_oversize_frames_both_ways():
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.pack(b"x" * (codec.MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        codec.unpack(b"\xc0" * (codec.MAX_FRAME + 1))


def test_codec_refuses_ext_types_and_timestamps():
    for frame in (b"\xd4\x05\x00", b"\xd6\xff\x00\x00\x00\x01", msgpack.packb(msgpack.ExtType(3, b"abc"))):
        with pytest.raises(ProtocolError):
            codec.unpack(frame)
    # msgpack's packer writes an ExtType it is handed (it is not a wire type:
    # no message field can hold one); the receiving side refuses the frame.
    with pytest.raises(ProtocolError):
        codec.unpack(codec.pack({"x": msgpack.ExtType(3, b"abc")}))


def test_codec_refuses_non_str_map_keys_and_trailing_bytes():
    with pytest.raises(ProtocolError):
        codec.unpack(msgpack.packb({1: 2}))
    with pytest.raises(ProtocolError):
        codec.unpack(msgpack.packb({"a": 1}) + b"\x01")
    with pytest.raises(ProtocolError, match="must be bytes"):
        codec.unpack("a str")  # type: ignore[arg-type]


def test_reply_larger_than_a_frame_cannot_be_encoded():
    big = M.States(states=[{"x": "y" * 1000}] * (codec.MAX_FRAME // 1000 + 10))
    with pytest.raises(ProtocolError, match="exceeds"):
        Envelope.wrap(big, sender="t").encode()


# --- the error hierarchy on the wire -------------------------------------------

@pytest.mark.parametrize("code", sorted(errors.ERROR_CODES))
def test_error_codes_round_trip_to_the_same_class(code):
    cls = errors.ERROR_CODES[code]
    assert cls.code == code
    exc = cls("cannot frob container \"web\": because")
    wire_code, text = errors.to_wire(exc)
    assert wire_code == code
    reply = envelope.decode(Envelope.wrap(M.Error(code=wire_code, message=text, details={"n": 1}), sender="a").encode()).body
    back = errors.from_wire(reply.code, reply.message, reply.details)
    assert type(back) is cls and str(back) == str(exc) and back.details == {"n": 1}
    assert isinstance(back, ZentryError)


def test_error_codes_are_unique_and_complete():
    subclasses = set()
    stack = [ZentryError]
    while stack:
        c = stack.pop()
        stack.extend(c.__subclasses__())
        subclasses.add(c)
    codes = [c.code for c in subclasses if c is not ZentryError]
    assert len(codes) == len(set(codes))
    assert set(codes) == set(errors.ERROR_CODES)


def test_from_wire_unknown_code_is_internal_and_details_cannot_clash():
    assert type(errors.from_wire("no_such_code", "m")) is errors.Internal
    # Regression: details come off the wire; a "message" key used to be a TypeError.
    err = errors.from_wire("not_found", "gone", {"message": "x", "id": "y"})
    assert type(err) is errors.NotFound and str(err) == "gone"
    assert err.details == {"message": "x", "id": "y"}


def test_to_wire_translates_foreign_exceptions():
    assert errors.to_wire(FileNotFoundError(2, "No such file", "/x"))[0] == "system"
    code, text = errors.to_wire(ValueError("bad"))
    assert (code, text) == ("internal", "ValueError: bad")


# --- declaring messages ---------------------------------------------------------

def test_declaration_rules():
    with pytest.raises(ValueError, match="declared twice"):
        message("ping", "request")(type("Again", (Message,), {"__annotations__": {}}))
    with pytest.raises(ValueError, match="unknown message kind"):
        message("x.y", "notice")
    with pytest.raises(TypeError, match="has no doc"):

        @message("test.nodoc", "event")
        class NoDoc(Message):
            x: int = 1

    assert "test.nodoc" not in REGISTRY


def test_messages_are_frozen_slotted_keyword_only():
    msg = M.Kill(container_id="c", signal=9)
    with pytest.raises(FrozenMessageError):
        msg.signal = 15  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del msg.signal
    with pytest.raises(TypeError):
        M.Kill("c", 9)  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


def test_doc_helper_keeps_the_text():
    f = doc("hello", 3)
    assert isinstance(f, Field) and f.doc == "hello" and f.default == 3 and f.factory is MISSING
    assert doc("x", factory=list).default_value() == []


def test_fields_introspection():
    got = {f.name: (f.type, f.required, f.doc) for f in fields(M.Kill)}
    assert got == {
        "container_id": ("str", True, "the container"),
        "signal": ("int", True, "signal number"),
        "all": ("bool", False, "signal every process of the container"),
    }
    assert fields(M.Kill(container_id="c", signal=9)) == fields(M.Kill)
    assert [f.type for f in fields(M.HistoryReply)][0] == "list[list[bytes]]"
    assert fields(M.Syscall)[4].spec == ("list", "any")
    assert fields(M.Error)[2].default_value() == {} and fields(M.Error)[2].default_value() is not fields(M.Error)[2].default_value()
    with pytest.raises(TypeError):
        fields(int)


def test_messages_equality_hash_repr():
    a, b = M.Kill(container_id="c", signal=9), M.Kill(container_id="c", signal=9)
    assert a == b and hash(a) == hash(b) and a != M.Kill(container_id="c", signal=15)
    assert M.Ok() == M.Ok() and M.Ok() != M.Ping()  # same (empty) fields, different types
    assert repr(a) == "Kill(container_id='c', signal=9, all=False)"
    assert M.Error(code="x", message="y").details == {}
    first, second = M.Error(code="x", message="y"), M.Error(code="x", message="y")
    assert first.details is not second.details  # factory defaults are not shared


def test_field_type_annotations_are_parsed_without_typing():
    from zentry.bus.message import parse_type

    assert parse_type("dict[str, Any]") == ("map", "str", "any")
    assert parse_type("list[list[bytes]]") == ("list", ("list", "bytes"))
    assert parse_type("int | None") == ("union", ("int", "none"))
    assert parse_type("Optional[str]") == ("union", ("str", "none"))
    assert parse_type(int) == "int"
    for bad in ("set[int]", "list[", "dict[str]", "tuple[int, int]", "int]"):
        with pytest.raises(TypeError, match="unsupported field type"):
            parse_type(bad)

    @message("test.optional", "event")
    class Optional_(Message):
        n: int | None = doc("maybe a number", None)

    try:
        assert envelope.decode(frame_of("test.optional", {"n": None})).body == Optional_()
        assert envelope.decode(frame_of("test.optional", {"n": 3})).body == Optional_(n=3)
        with pytest.raises(ProtocolError, match="must be int \\| None"):
            envelope.decode(frame_of("test.optional", {"n": "3"}))
    finally:
        REGISTRY.pop("test.optional")


def test_a_reply_in_another_protocol_version_fails_the_request_at_once(tmp_path):
    # An actor started by another version of zentry refuses our request with
    # an error in its own version: the client says so, before its deadline.
    import threading
    import time

    import zmq

    from zentry.bus.client import Client

    endpoint = f"ipc://{tmp_path}/old.sock"
    ctx = zmq.Context()
    server = ctx.socket(zmq.ROUTER)
    server.bind(endpoint)

    def old_actor() -> None:
        ident, frame = server.recv_multipart()
        mid = codec.unpack(frame)[2]
        server.send_multipart([ident, codec.pack([PROTOCOL_VERSION - 1, "error", "x1", mid, "controller", 1, {"code": "protocol", "message": "no"}])])

    t = threading.Thread(target=old_actor)
    t.start()
    client = Client(endpoint, ctx=ctx)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match=f"speaks protocol version {PROTOCOL_VERSION - 1}, this zentry {PROTOCOL_VERSION}"):
        client.request(M.Ping(), timeout=30)
    assert time.monotonic() - started < 10  # not the 30 s deadline
    t.join()
    client.close()
    server.close(0)
    ctx.term()
