"""zentry update: change a container's resources (runc's flags, or OCI linux.resources JSON).

As ``runc update``: ``--resources FILE`` (``-`` for stdin) replaces every
other flag; sizes take runc's syntax (``64m``, ``1.5g``, ``512k``, plain
bytes, ``-1`` for unlimited); a zero (or an empty cpuset) leaves that limit
as it is.
"""

from __future__ import annotations

import json
import re
import sys

HELP = "update a container's resource limits"

#: the most a --resources document may hold (runc's own limits are the bus's)
MAX_RESOURCES_BYTES = 1 << 20

#: size suffixes, powers of 1024 as docker/go-units' RAMInBytes (which runc uses)
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

#: flag -> (section, key, parser); a value of zero leaves the limit unchanged (as runc)
_UNSIGNED = ("cpu-period", "cpu-rt-period", "cpu-share", "cpu-burst")
_SIGNED = ("cpu-quota", "cpu-rt-runtime", "cpu-idle")
_SIZES = ("memory", "memory-swap", "memory-reservation")
_FIELDS = {
    "cpu-period": ("cpu", "period"),
    "cpu-rt-period": ("cpu", "realtimePeriod"),
    "cpu-share": ("cpu", "shares"),
    "cpu-burst": ("cpu", "burst"),
    "cpu-quota": ("cpu", "quota"),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime"),
    "cpu-idle": ("cpu", "idle"),
    "memory": ("memory", "limit"),
    "memory-swap": ("memory", "swap"),
    "memory-reservation": ("memory", "reservation"),
    "cpuset-cpus": ("cpu", "cpus"),
    "cpuset-mems": ("cpu", "mems"),
}
#: (section, key) whose zero means "unchanged" in runc's update, in JSON too
_ZERO_UNCHANGED = {
    ("memory", "limit"), ("memory", "swap"), ("memory", "reservation"),
    ("cpu", "shares"), ("cpu", "quota"), ("cpu", "period"),
    ("cpu", "realtimePeriod"), ("cpu", "realtimeRuntime"),
    ("blockIO", "weight"), ("pids", "limit"),
}


#: what `update` changes, as runc's: the rest of a --resources document (device
#: rules, hugepages, network classes, block IO throttles, swappiness...) is
#: ignored, as runc ignores it (podman sends its whole resources object)
UPDATABLE = {
    "memory": {"limit", "reservation", "swap"},
    "cpu": {"shares", "quota", "burst", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems", "idle"},
    "blockIO": {"weight"},
    "pids": {"limit"},
    "unified": None,  # every key (cgroup v2 files)
}


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--resources", "-r", default=None, metavar="FILE",
                   help="file with linux.resources JSON, or - for stdin (then every other flag is ignored, as runc)")
    p.add_argument("--blkio-weight", default=None, help="block IO weight, 10 to 1000")
    p.add_argument("--cpu-period", default=None, help="CPU CFS period (microseconds)")
    p.add_argument("--cpu-quota", default=None, help="CPU CFS quota (microseconds per period, -1: none)")
    p.add_argument("--cpu-burst", default=None, help="CPU CFS burst (microseconds)")
    p.add_argument("--cpu-share", "--cpu-shares", dest="cpu_share", default=None, help="CPU shares (relative weight)")
    p.add_argument("--cpu-rt-period", default=None, help="CPU realtime period (microseconds)")
    p.add_argument("--cpu-rt-runtime", default=None, help="CPU realtime runtime (microseconds per period)")
    p.add_argument("--cpu-idle", default=None, help="1: SCHED_IDLE for the cgroup, 0: normal")
    p.add_argument("--cpuset-cpus", default=None, help="CPUs to run on (0-3,5)")
    p.add_argument("--cpuset-mems", default=None, help="memory nodes to use (0-1)")
    p.add_argument("--memory", default=None, help="memory limit (bytes, or 64m, 1g; -1: none)")
    p.add_argument("--memory-reservation", default=None, help="memory soft limit (bytes, or 64m; -1: none)")
    p.add_argument("--memory-swap", default=None, help="memory+swap limit (bytes, or 128m; -1: unlimited swap)")
    p.add_argument("--pids-limit", default=None, help="most processes in the container (-1: none)")
    p.add_argument("--kernel-memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--kernel-memory-tcp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--l3-cache-schema", default=None, help="Intel RDT/CAT L3 cache schema (not supported)")
    p.add_argument("--mem-bw-schema", default=None, help="Intel RDT/MBA memory bandwidth schema (not supported)")
    p.add_argument("container_id", metavar="ID")


def parse_size(flag: str, text: str) -> int:
    """runc's memory sizes: ``-1``, bytes, or a number with a k/m/g/t/p suffix (1024s)."""
    from zentry.bus.errors import InvalidArgument

    if text.strip() == "-1":
        return -1
    m = _SIZE.fullmatch(text.strip())
    try:
        value = int(float(m.group(1)) * _UNITS[m.group(2) and m.group(2).lower()]) if m else -1
    except OverflowError:  # more digits than a float holds
        value = -1
    if value < 0 or value > INT64_MAX:
        raise InvalidArgument(f"invalid value for --{flag}: {text!r} (bytes, or a size such as 64m, 1g; -1 for none)")
    return value


def parse_int(flag: str, text: str, *, signed: bool) -> int:
    from zentry.bus.errors import InvalidArgument

    low, high = (-(1 << 63), INT64_MAX) if signed else (0, UINT64_MAX)
    try:
        value = int(text.strip(), 10)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        kind = "an integer" if signed else "a non-negative integer"
        raise InvalidArgument(f"invalid value for --{flag}: {text!r} (must be {kind})")
    return value


def read_resources(source: str) -> dict:
    """The linux.resources object in ``source`` (a file, or ``-``: stdin), checked against the OCI schema."""
    from zentry.bus.errors import InvalidArgument

    try:
        if source == "-":
            text = sys.stdin.buffer.read(MAX_RESOURCES_BYTES + 1)
        else:
            import os
            import stat

            with open(source, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                    raise InvalidArgument(f"cannot read resources from {source}: not a regular file")
                text = f.read(MAX_RESOURCES_BYTES + 1)
    except OSError as err:
        raise InvalidArgument(f"cannot read resources from {source}: {err.strerror}") from err
    if len(text) > MAX_RESOURCES_BYTES:
        raise InvalidArgument(f"cannot read resources from {source}: larger than {MAX_RESOURCES_BYTES} bytes")
    try:
        res = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise InvalidArgument(f"cannot read resources from {source}: not JSON ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(res, dict):
        raise InvalidArgument(f"resources in {source} must be a JSON object (linux.resources)")
    check_resources(res, source)
    return updatable(res)


def updatable(res: dict) -> dict:
    """The part of a linux.resources object that `update` applies (UPDATABLE); the rest is logged and ignored."""
    from zentry.bus.log import get_logger

    out: dict = {}
    ignored = []
    for section, value in res.items():
        keys = UPDATABLE.get(section, set())
        if keys is None:
            out[section] = value
            continue
        if not isinstance(value, dict) or not keys:
            ignored.append(section)
            continue
        kept = {k: v for k, v in value.items() if k in keys}
        ignored.extend(f"{section}.{k}" for k in value if k not in keys)
        if kept:
            out[section] = kept
    if ignored:
        get_logger("zentry.cli").info("update ignores %s (as runc)", ", ".join(sorted(ignored)))
    return out


def check_resources(res: dict, source: str) -> None:
    """Refuse what the OCI schema refuses for linux.resources (runc: a JSON type error)."""
    from zentry.actors.oci.schema import load_schema
    from zentry.actors.oci.validate import Validator
    from zentry.bus.errors import InvalidArgument

    name = "linux.resources"
    validator = Validator(lambda doc: {"$ref": "config-linux.json#/linux/properties/resources"} if doc == name else load_schema(doc))
    error = validator.first_error(res, name)
    if error is not None:
        where = ".".join(str(p) for p in error.path) or "(the object)"
        raise InvalidArgument(f"invalid resources in {source}: {where}: {error.message}")


def resources_from(args) -> dict:
    """The linux.resources to apply: from --resources, or from the flags (runc's rules)."""
    from zentry.bus.errors import InvalidArgument, Unsupported
    from zentry.bus.log import get_logger

    if args.l3_cache_schema or args.mem_bw_schema:
        raise Unsupported("Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported by zentry")
    if args.resources:
        res = read_resources(args.resources)
    else:
        res = {}
        for flag, (section, key) in _FIELDS.items():
            text = getattr(args, flag.replace("-", "_"))
            if text is None or text == "":
                continue
            if flag in _SIZES:
                value: object = parse_size(flag, text)
            elif flag in _UNSIGNED or flag in _SIGNED:
                value = parse_int(flag, text, signed=flag in _SIGNED)
            else:
                value = text
            res.setdefault(section, {})[key] = value
        if args.blkio_weight is not None:
            weight = parse_int("blkio-weight", args.blkio_weight, signed=False)
            if weight and not 10 <= weight <= 1000:
                raise InvalidArgument(f"invalid value for --blkio-weight: {weight} (10 to 1000)")
            res.setdefault("blockIO", {})["weight"] = weight
        if args.pids_limit is not None:
            res.setdefault("pids", {})["limit"] = parse_int("pids-limit", args.pids_limit, signed=True)
        for flag in ("kernel_memory", "kernel_memory_tcp"):
            if getattr(args, flag):
                get_logger("zentry.cli").warning("setting --%s is ignored (obsolete, as in runc)", flag.replace("_", "-"))
    return unchanged_removed(res)


def unchanged_removed(res: dict) -> dict:
    """runc's update semantics: zero limits and empty cpusets mean "leave as is";
    ``memory.limit: -1`` without a swap value lifts the swap limit too."""
    out: dict = {}
    for section, value in res.items():
        if not isinstance(value, dict):
            out[section] = value
            continue
        kept = {k: v for k, v in value.items()
                if not ((section, k) in _ZERO_UNCHANGED and v == 0) and not (section == "cpu" and k in ("cpus", "mems") and v == "")}
        if kept:
            out[section] = kept
    memory = out.get("memory") or {}
    if memory.get("limit") == -1 and "swap" not in memory:
        memory["swap"] = -1
    return out


def run(args, ctx) -> int:
    from zentry.bus.messages import Update
    from zentry.cmd.common import ask, load

    res = resources_from(args)
    rec = load(ctx.store(), args.container_id)
    rec.require_status("update", "created", "running", "paused")
    if res:
        ask(rec, Update(container_id=rec.id, resources=res))
    return 0
