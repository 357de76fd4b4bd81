"""docs/protocol.md and the code agree: message catalogue, event catalogue,
error codes, codec limits, protocol version — in both directions.

The doc is parsed, never imported: each message section is a heading
``#### `tag` (kind[, idempotent])``, a one-paragraph description (the class
docstring), and either ``No fields`` or a table
``| field | type | required | doc |`` whose required cell is ``yes`` or
``no (default `<json>`)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import zentry.bus.messages  # noqa: F401  (fills the registry)
from zentry.bus import codec, envelope, errors, events, fdpass
from zentry.bus.message import REGISTRY, Field, fields

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"

HEADING = re.compile(r"^#### `([^`]+)` \((request|reply|event)(, idempotent)?\)\s*$")
REQUIRED = re.compile(r"^(yes|no \(default `(.*)`\))$")


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row; ``\\|`` is a literal pipe."""
    body = line.strip()
    assert body.startswith("|") and body.endswith("|"), line
    parts = re.split(r"(?<!\\)\|", body[1:-1])
    return [p.strip().replace("\\|", "|") for p in parts]


def _code(cell: str) -> str:
    m = re.fullmatch(r"`([^`]*)`", cell)
    return m.group(1) if m else cell


def _section(text: str, title: str) -> list[str]:
    """Lines of the ``## title`` section up to the next ``## `` heading."""
    lines = text.splitlines()
    try:
        start = lines.index(f"## {title}")
    except ValueError:
        return []
    out = []
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        out.append(line)
    return out


def _table_rows(lines: list[str]) -> list[list[str]]:
    rows = [_cells(l) for l in lines if l.strip().startswith("|")]
    return [r for r in rows[2:]] if rows else []  # drop header and ---


def parse_messages(text: str) -> dict[str, dict]:
    """tag -> {kind, idempotent, doc, fields: [(name, type, required, default, doc)]}."""
    out: dict[str, dict] = {}
    cur: dict | None = None
    state = ""
    for line in _section(text, "Message catalogue"):
        m = HEADING.match(line)
        if m:
            tag = m.group(1)
            if tag in out:
                raise AssertionError(f"{tag} documented twice")
            cur = out[tag] = {"kind": m.group(2), "idempotent": bool(m.group(3)), "doc": "", "fields": [], "no_fields": False}
            state = "doc"
            continue
        if line.startswith("#"):
            cur, state = None, ""
            continue
        if cur is None:
            continue
        stripped = line.strip()
        if state == "doc":
            if stripped:
                cur["doc"] = (cur["doc"] + " " + stripped).strip()
            elif cur["doc"]:
                state = "body"
            continue
        if stripped.startswith("No fields"):
            cur["no_fields"] = True
        elif stripped.startswith("|"):
            cells = _cells(stripped)
            if cells == ["field", "type", "required", "doc"] or set("".join(cells)) <= set("-:"):
                continue
            if len(cells) != 4:
                raise AssertionError(f"{line!r}: expected 4 cells")
            name, tname, req, fdoc = _code(cells[0]), _code(cells[1]), cells[2], cells[3]
            rm = REQUIRED.match(req)
            if not rm:
                raise AssertionError(f"{line!r}: required must be 'yes' or 'no (default `...`)'")
            cur["fields"].append((name, tname, rm.group(1) == "yes", rm.group(2), fdoc))
    return out


def _default_json(f: Field) -> str:
    return json.dumps(f.default_value())


def _docstring(cls: type) -> str:
    return " ".join((cls.__doc__ or "").split())


def registry_view() -> dict[str, dict]:
    out = {}
    for tag, cls in REGISTRY.items():
        out[tag] = {
            "kind": cls.KIND,
            "idempotent": cls.IDEMPOTENT,
            "doc": _docstring(cls),
            "fields": [(f.name, f.type, f.required, None if f.required else _default_json(f), f.doc) for f in fields(cls)],
        }
    return out


def problems(text: str) -> list[str]:
    """Every disagreement between ``text`` (a protocol.md) and the code."""
    found: list[str] = []
    doc = parse_messages(text)
    code = registry_view()
    for tag in sorted(set(code) - set(doc)):
        found.append(f"message {tag} is not documented")
    for tag in sorted(set(doc) - set(code)):
        found.append(f"message {tag} is documented but not registered")
    for tag in sorted(set(doc) & set(code)):
        d, c = doc[tag], code[tag]
        for key in ("kind", "idempotent", "doc"):
            if d[key] != c[key]:
                found.append(f"{tag}: {key} is {d[key]!r} in the doc, {c[key]!r} in the code")
        if c["fields"] and d["no_fields"]:
            found.append(f"{tag}: doc says no fields")
        if not c["fields"] and not d["no_fields"] and not d["fields"]:
            found.append(f"{tag}: doc neither lists fields nor says 'No fields'")
        dnames = [f[0] for f in d["fields"]]
        cnames = [f[0] for f in c["fields"]]
        if dnames != cnames:
            found.append(f"{tag}: fields {dnames} in the doc, {cnames} in the code")
        for df, cf in zip(d["fields"], c["fields"]):
            if df != cf:
                found.append(f"{tag}.{cf[0]}: doc {df} != code {cf}")

    rows = _table_rows(_section(text, "Error codes"))
    doc_codes = {_code(r[0]): _code(r[1]) for r in rows if len(r) >= 3 and r[2]}
    code_codes = {c: cls.__name__ for c, cls in errors.ERROR_CODES.items()}
    for c in sorted(set(code_codes) - set(doc_codes)):
        found.append(f"error code {c} is not documented")
    for c in sorted(set(doc_codes) - set(code_codes)):
        found.append(f"error code {c} is documented but does not exist")
    for c in sorted(set(doc_codes) & set(code_codes)):
        if doc_codes[c] != code_codes[c]:
            found.append(f"error code {c}: class {doc_codes[c]} in the doc, {code_codes[c]} in the code")

    ev_rows = _table_rows(_section(text, "Event catalogue"))
    doc_events = {_code(r[0]): _code(r[1]) for r in ev_rows if len(r) >= 2}
    code_events = {t: events.event_kind(c) for t, c in REGISTRY.items() if c.KIND == "event"}
    if doc_events != code_events:
        found.append(f"event catalogue {doc_events} != registry events {code_events}")
    return found


def test_doc_exists_and_parses():
    text = DOC.read_text()
    parsed = parse_messages(text)
    assert len(parsed) == len(REGISTRY) > 40


def test_doc_matches_registry_both_ways():
    assert problems(DOC.read_text()) == []


def test_protocol_version_and_limits_documented():
    text = DOC.read_text()
    assert f"Protocol version: **{envelope.PROTOCOL_VERSION}**" in text
    units = {"MiB": 1024 * 1024, "KiB": 1024}

    def value(cell: str) -> int:
        m = re.fullmatch(r"(\d+)(?: (MiB|KiB))?", cell.split(" (")[0])
        assert m, cell
        return int(m.group(1)) * units.get(m.group(2) or "", 1)

    rows = [r for r in (_cells(l) for l in _section(text, "Codec") if l.strip().startswith("|")) if len(r) == 3]
    limits = {_code(r[2]): value(r[1]) for r in rows if _code(r[2]).startswith("MAX_")}
    assert limits == {
        "MAX_FRAME": codec.MAX_FRAME,
        "MAX_STR": codec.MAX_STR,
        "MAX_BIN": codec.MAX_BIN,
        "MAX_ARRAY": codec.MAX_ARRAY,
        "MAX_MAP": codec.MAX_MAP,
    }
    fd_text = "\n".join(_section(text, "The fd side channel"))
    assert f"`MAX_FDS` ({fdpass.MAX_FDS})" in fd_text
    assert f"`RING_SIZE` ({events.RING_SIZE})" in "\n".join(_section(text, "The event stream"))
    assert f"`PUB_HWM` ({events.PUB_HWM})" in "\n".join(_section(text, "Events"))


# --- the checker itself must catch drift (else test_doc_matches_registry proves nothing)

def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("| `signal` | `int` | yes | signal number |\n| `all` | `bool` | no (default `false`) | signal every process of the container |",
         "| `signal` | `int` | yes | signal number |", "container.kill: fields"),
        ("| `pid` | `int` | yes | the actor's host pid |", "| `pid` | `str` | yes | the actor's host pid |", "pong.pid"),
        ("| `reason` | `str` | no (default `\"\"`) |", "| `reason` | `str` | yes |", "shutdown.reason"),
        ("| `reason` | `str` | no (default `\"\"`) |", "| `reason` | `str` | no (default `\"x\"`) |", "shutdown.reason"),
        ("| `code` | `str` | yes | wire error code", "| `code` | `str` | yes | the error code", "error.code"),
        ("#### `ping` (request, idempotent)", "#### `ping` (request)", "ping: idempotent"),
        ("#### `container.start` (request)", "#### `container.begin` (request)", "container.start is not documented"),
        ("#### `ok` (reply)", "#### `ok` (event)", "ok: kind"),
        ("A request succeeded and has nothing to return.", "A request succeeded.", "ok: doc"),
        ("| `actor_gone` | `ActorGone` |", "| `actor_went` | `ActorGone` |", "error code actor_gone is not documented"),
        ("| `timeout` | `Timeout` |", "| `timeout` | `TimeoutError` |", "error code timeout: class"),
        ("| `event.dropped` | `dropped` |", "| `event.lost` | `dropped` |", "event catalogue"),
    ],
)
def test_checker_catches_drift(old, new, expect):
    found = problems(_mutate(DOC.read_text(), old, new))
    assert any(expect in p for p in found), found


def test_checker_catches_extra_documented_type():
    text = DOC.read_text() + "\n"
    extra = "#### `container.teleport` (request)\n\nMove a container.\n\nNo fields: the body is an empty map.\n"
    text = _mutate(text, "## Event catalogue", extra + "\n## Event catalogue")
    assert "message container.teleport is documented but not registered" in problems(text)


def test_checker_catches_new_registry_field(monkeypatch):
    cls = REGISTRY["container.start"]
    extra = Field("an added field")
    extra.name, extra.type = "extra", "int"
    monkeypatch.setattr(cls, "_FIELDS", fields(cls) + (extra,))
    found = problems(DOC.read_text())
    assert any("container.start: fields" in p for p in found), found
