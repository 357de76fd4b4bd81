"""What a schema-valid config.json must also respect before anything is launched.

The schema says what each field is; it cannot say that the whole document
must travel the bus (``container.create`` carries it to the actors), nor
what the kernel will refuse later. Each rule here turns a failure that came
at ``start`` (or a 120 s wait for a reply the bus dropped) into one line at
``create``:

* the bus's own decode limits (``bus/codec.py``): at most ``MAX_ARRAY``
  items in an array, ``MAX_MAP`` keys in an object, ``MAX_STR`` bytes in a
  string, ``MAX_DEPTH`` levels of nesting, integers that fit 64 bits, text
  that UTF-8 can encode (no unpaired surrogate from a ``\ud800`` escape);
* no NUL character in any string: every string becomes a C string (a path,
  an argument, an environment entry), where a NUL silently cuts it;
* ``process.env`` entries are ``NAME=value`` with a non-empty NAME, as the
  exec'd program's environment needs (runc refuses the same, at create);
* ``linux.devices`` paths have no ``..`` component (the node is made where
  the path says, never somewhere else in the root filesystem), and their
  numbers and owners are ones the kernel can hold;
* values the kernel refuses later: ``process.oomScoreAdj`` outside
  -1000..1000, a ``hostname`` or ``domainname`` over 64 bytes.

``MAX_CONFIG_BYTES`` bounds what ``load_bundle`` reads at all.
"""

from __future__ import annotations

from zentry.bus.codec import MAX_ARRAY, MAX_FRAME, MAX_MAP, MAX_STR

#: config.json larger than this is refused unread: it would not fit the
#: ``container.create`` frame (``MAX_FRAME``) beside the rest of the message
MAX_CONFIG_BYTES = MAX_FRAME // 2
#: deepest nesting of arrays and objects (OCI configs nest about 6 deep;
#: the bus's msgpack encoder stops far below Python's recursion limit)
MAX_DEPTH = 64
#: most digits an integer in config.json may have (2**64 has 20)
MAX_INT_DIGITS = 20

_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1
_U32_MAX = 2**32 - 1


def _where(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return (out if len(out) <= 80 else out[:77] + "...") or "(root)"


def bus_limit_error(config: object) -> str | None:
    """``"where: what"`` for the first value over a bus limit, or None."""
    problem = _scalar_problem(config)
    if problem:
        return f"(root): {problem}"
    stack: list[tuple[dict | list, tuple, int]] = [(config, (), 1)] if isinstance(config, (dict, list)) else []
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"{_where(path)}: nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            if len(value) > MAX_MAP:
                return f"{_where(path)}: {len(value)} entries, more than the limit of {MAX_MAP}"
            for key, item in value.items():
                problem = _string_problem(key)
                if problem:
                    return f"{_where(path)}: a key {problem}"
                if isinstance(item, (dict, list)):
                    stack.append((item, path + (key,), depth + 1))
                else:
                    problem = _scalar_problem(item)
                    if problem:
                        return f"{_where(path + (key,))}: {problem}"
        else:
            if len(value) > MAX_ARRAY:
                return f"{_where(path)}: {len(value)} items, more than the limit of {MAX_ARRAY}"
            for i, item in enumerate(value):
                if isinstance(item, (dict, list)):
                    stack.append((item, path + (i,), depth + 1))
                else:
                    problem = _scalar_problem(item)
                    if problem:
                        return f"{_where(path + (i,))}: {problem}"
    return None


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, str):
        return _string_problem(value)
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _UINT_MAX:
        return f"{value} is out of range (64-bit integers only)"
    return None


def _string_problem(text: str) -> str | None:
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return "contains an unpaired surrogate escape (\\ud800-\\udfff), which is not text"
    if size > MAX_STR:
        return f"longer than the limit of {MAX_STR} bytes"
    if "\0" in text:
        return "contains a NUL character"
    return None


def env_error(config: dict) -> str | None:
    """``"where: what"`` for the first malformed ``process.env`` entry, or None."""
    process = config.get("process")
    env = process.get("env", []) if isinstance(process, dict) else []
    for i, entry in enumerate(env if isinstance(env, list) else []):
        if not isinstance(entry, str):
            continue  # the schema's verdict
        name, sep, _ = entry.partition("=")
        if not sep:
            return f'process.env[{i}]: "{_short(entry)}" is not NAME=value'
        if not name:
            return f'process.env[{i}]: "{_short(entry)}" has an empty variable name'
    return None


def device_error(config: dict) -> str | None:
    """``"where: what"`` for the first ``linux.devices`` entry whose path
    climbs with ``..`` or whose numbers or owner the kernel cannot hold."""
    linux = config.get("linux")
    devices = linux.get("devices", []) if isinstance(linux, dict) else []
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        if not isinstance(dev, dict):
            continue  # the schema's verdict
        path = dev.get("path")
        if isinstance(path, str) and ".." in path.split("/"):
            return f'linux.devices[{i}].path: "{_short(path)}": a path with ".." components is not allowed'
        for key in ("major", "minor", "uid", "gid", "fileMode"):
            value = dev.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= _U32_MAX:
                return f"linux.devices[{i}].{key}: {value} is out of range (0 to {_U32_MAX})"
    return None


#: HOST_NAME_MAX: sethostname and setdomainname refuse longer names
MAX_HOSTNAME_BYTES = 64


def range_error(config: dict) -> str | None:
    """``"where: what"`` for the first value the kernel would refuse at
    start (``oomScoreAdj``, host and domain name lengths), or None."""
    process = config.get("process")
    adj = process.get("oomScoreAdj") if isinstance(process, dict) else None
    if isinstance(adj, int) and not isinstance(adj, bool) and not -1000 <= adj <= 1000:
        return f"process.oomScoreAdj: {adj} is out of range (-1000 to 1000)"
    for key in ("hostname", "domainname"):
        name = config.get(key)
        if isinstance(name, str) and len(name.encode("utf-8", "surrogatepass")) > MAX_HOSTNAME_BYTES:
            return f"{key}: longer than {MAX_HOSTNAME_BYTES} bytes"
    return None


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."
