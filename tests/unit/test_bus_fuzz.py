"""The decoder under hostile input: whatever arrives, ``envelope.decode``
returns an Envelope or raises ProtocolError/UnknownMessage (both
ZentryErrors) — never another exception, never unbounded memory."""

from __future__ import annotations

import random
import resource
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zentry.bus.messages as M
from zentry.bus import codec, envelope
from zentry.bus.envelope import Envelope, PROTOCOL_VERSION
from zentry.bus.errors import ProtocolError, UnknownMessage, ZentryError
from zentry.bus.message import REGISTRY, fields

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Recursive values are slow to generate; fewer examples of them.
SLOW_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def outcome(frame: bytes) -> str:
    """Decode ``frame``: "ok" or "refused"; any other exception fails the test."""
    try:
        env = envelope.decode(frame)
    except (ProtocolError, UnknownMessage) as err:
        assert isinstance(err, ZentryError) and err.code in ("protocol", "unknown_message")
        assert str(err)
        return "refused"
    assert isinstance(env, Envelope) and env.type in REGISTRY
    return "ok"


VALID_FRAMES = [
    Envelope.wrap(m, sender="fuzz", parent="p-1").encode()
    for m in (
        M.Ping(),
        M.Kill(container_id="web", signal=9, all=True),
        M.Create(container_id="c", bundle="/b", config={"process": {"args": ["sh"]}, "n": [1, 2.5, None]},
                 sandbox_id="s", sandbox_pid=1, gofer_pid=2),
        M.Syscall(container_id="c", pid=1, tid=2, syscall="openat", args=[-100, "/etc", 0], result=-2, errno="ENOENT", duration_ns=5),
        M.Error(code="not_found", message="no", details={"id": "x"}),
        M.States(states=[{"id": "a"}, {"id": "b"}]),
    )
]

wire_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.binary(max_size=20)
)
wire_values = st.recursive(
    wire_scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=12,
)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(data):
    assert outcome(data) in ("ok", "refused")


@SETTINGS
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_truncated_valid_frames_are_refused(frame, data):
    cut = data.draw(st.integers(0, len(frame) - 1))
    assert outcome(frame[:cut]) == "refused"


@SETTINGS
@given(st.sampled_from(VALID_FRAMES), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_are_refused(frame, extra):
    assert outcome(frame + extra) == "refused"


@SLOW_SETTINGS
@given(wire_values)
def test_random_msgpack_values(value):
    assert outcome(msgpack.packb(value, use_bin_type=True)) in ("ok", "refused")


@SLOW_SETTINGS
@given(
    st.lists(wire_values, min_size=7, max_size=7),
    st.sampled_from(sorted(REGISTRY)),
)
def test_random_envelope_shaped_arrays(fields, tag):
    fields[0] = PROTOCOL_VERSION
    fields[1] = tag
    fields[2] = "id-1"
    assert outcome(msgpack.packb(fields, use_bin_type=True)) in ("ok", "refused")


@SLOW_SETTINGS
@given(st.sampled_from([t for t in sorted(REGISTRY) if fields(REGISTRY[t])]), st.data())
def test_wrong_field_values(tag, data):
    cls = REGISTRY[tag]
    body = {}
    for f in fields(cls):
        body[f.name] = data.draw(wire_values, label=f.name)
    frame = codec.pack([PROTOCOL_VERSION, tag, "id-2", "", "fuzz", 1, body])
    expect_ok = all(f.check(body[f.name]) for f in fields(cls))
    assert outcome(frame) == ("ok" if expect_ok else "refused")


# --- oversize declarations: refused from the header, before any allocation ------

HUGE = 2**31
OVERSIZE_HEADERS = [
    b"\xdd" + struct.pack(">I", HUGE),           # array32
    b"\xdd" + struct.pack(">I", 2**32 - 1),
    b"\xdc" + struct.pack(">H", 65535) ,          # array16 (< limit, but no data)
    b"\xdf" + struct.pack(">I", HUGE),           # map32
    b"\xde" + struct.pack(">H", 65535),          # map16 over MAX_MAP
    b"\xdb" + struct.pack(">I", HUGE),           # str32
    b"\xda" + struct.pack(">H", 65535),          # str16
    b"\xc6" + struct.pack(">I", HUGE),           # bin32
    b"\xc9" + struct.pack(">I", HUGE) + b"\x01", # ext32
    b"\xc7\xff\x01",                             # ext8
]


def _embedded(header: bytes) -> list[bytes]:
    """``header`` as the whole frame, as the body, and as a body field's value."""
    prefix = codec.pack([PROTOCOL_VERSION, "container.start", "id-3", "", "fuzz", 1])[1:]
    return [
        header,
        header + b"\x00" * 64,
        b"\x97" + prefix + header,                                   # body
        b"\x97" + prefix + b"\x81\xacconta" + b"iner_id" + header,   # a field value
        b"\x91" * 100 + header,                                      # deep inside arrays
    ]


@pytest.mark.parametrize("header", OVERSIZE_HEADERS, ids=lambda h: h[:1].hex())
def test_oversize_declarations_are_refused_cheaply(header):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for frame in _embedded(header):
        for _ in range(200):
            assert outcome(frame) == "refused"
    assert time.perf_counter() - start < 5
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024, f"decoding grew the process by {grown_kib} KiB"


def test_limits_are_enforced_exactly():
    assert codec.unpack(msgpack.packb(["x"] * codec.MAX_ARRAY)) == ["x"] * codec.MAX_ARRAY
    with pytest.raises(ProtocolError, match="max_array_len"):
        codec.unpack(msgpack.packb([0] * (codec.MAX_ARRAY + 1)))
    assert len(codec.unpack(msgpack.packb({str(i): 0 for i in range(codec.MAX_MAP)}))) == codec.MAX_MAP
    with pytest.raises(ProtocolError, match="max_map_len"):
        codec.unpack(msgpack.packb({str(i): 0 for i in range(codec.MAX_MAP + 1)}))
    assert len(codec.unpack(msgpack.packb("s" * codec.MAX_STR))) == codec.MAX_STR
    with pytest.raises(ProtocolError, match="max_str_len"):
        codec.unpack(msgpack.packb("s" * (codec.MAX_STR + 1)))
    assert len(codec.unpack(msgpack.packb(b"b" * codec.MAX_BIN, use_bin_type=True))) == codec.MAX_BIN
    with pytest.raises(ProtocolError, match="max_bin_len"):
        codec.unpack(msgpack.packb(b"b" * (codec.MAX_BIN + 1), use_bin_type=True))


def test_deep_nesting_is_refused():
    for depth in (2000, 100000):
        with pytest.raises(ProtocolError):
            envelope.decode(b"\x91" * depth + b"\xc0")


def test_invalid_utf8_and_bad_map_keys_are_refused():
    for frame in (b"\xa2\xff\xfe", b"\x81\x01\x02", b"\x81\x90\x02", b"\x81\xc0\x02", b"\x81\xcb" + b"\x00" * 8 + b"\x01"):
        assert outcome(frame) == "refused"


# --- a plain loop: 10^5 frames, no crash, every refusal typed --------------------

def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # replace a byte (msgpack type markers are bytes)
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 5))
        elif op == 3 and b:  # delete a run
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 8)]
        elif op == 4:  # truncate
            del b[rng.randrange(len(b) + 1):]
        else:  # splice another valid frame's tail
            other = rng.choice(VALID_FRAMES)
            i = rng.randrange(len(b) + 1)
            b[i:] = other[rng.randrange(len(other)):]
    return bytes(b)


def test_hundred_thousand_random_frames():
    rng = random.Random(0x2E47)
    counts = {"ok": 0, "refused": 0}
    start = time.perf_counter()
    for i in range(100_000):
        if i % 3 == 0:
            frame = rng.randbytes(rng.randint(0, 64))
        else:
            frame = _mutate(rng, rng.choice(VALID_FRAMES))
        try:
            envelope.decode(frame)
            counts["ok"] += 1
        except (ProtocolError, UnknownMessage) as err:
            assert err.code in ("protocol", "unknown_message"), err
            counts["refused"] += 1
        # anything else propagates and fails the test with the frame's index
    elapsed = time.perf_counter() - start
    assert counts["ok"] + counts["refused"] == 100_000
    assert counts["refused"] > 60_000  # the mix is mostly invalid: the decoder really refuses
    assert elapsed < 20, f"took {elapsed:.1f}s"
