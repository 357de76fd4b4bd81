"""The node agent's configuration file (JSON or TOML), checked once at start.

    node = "n1"                          # default: the host name
    listen = ["tcp://0.0.0.0:7711"]      # besides the ipc socket under --root; tcp needs the two keys below
    server_secret_file = "/etc/zentry/pool/server.key"
    authorized_keys = "/etc/zentry/pool/clients"
    metrics_listen = "127.0.0.1:9464"    # Prometheus /metrics (optional)
    max_sandboxes = 200                  # every pool, every state (0: no limit)
    memory_budget = "16g"                # sum of the pools' memory limits (0: no budget)
    parallel_starts = 2                  # sandboxes started at once

    [pools.python]
    bundle = "/srv/bundles/python"       # or: rootfs = "/srv/rootfs/python" (config: zentry spec's)
    warm = 4                             # kept ready
    max = 32                             # warm + claimed + starting
    ttl = "10m"                          # a claim's lifetime (0: none)
    idle = "2m"                          # destroyed after this long unused (0: never)
    memory = "256m"                      # linux.resources.memory.limit (reserved from memory_budget)
    cpus = 1.0                           # CFS quota
    overlay = "64m"                      # the in-memory root's size ("": tmpfs default)
    [pools.python.overrides]             # deep-merged into config.json
    hostname = "py"

Every error names the file and the key.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

from zentry.bus.errors import ConfigError

_SIZE = re.compile(r"^([0-9]+)([kmgt]?)(i?b)?$", re.I)
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,30}$")


def parse_size(value: Any, where: str) -> int:
    """Bytes from an int or "64m", "1g", "512k"."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a size")
    if isinstance(value, int) and value >= 0:
        return value
    m = _SIZE.match(str(value).strip())
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a size (bytes, or 64m, 1g)")
    return int(m.group(1)) * 1024 ** " kmgt".index((m.group(2) or " ").lower())


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number or "500ms", "30s", "10m", "1h"."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a duration")
    if isinstance(value, (int, float)) and value >= 0:
        return float(value)
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ConfigError(f"{where}: {value!r} is not a duration (seconds, or 500ms, 30s, 10m, 1h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


@dataclass
class PoolConfig:
    name: str
    config: dict  # the template's config.json, overrides applied, root.path absolute
    warm: int = 1
    max: int = 8
    ttl: float = 0.0
    idle: float = 0.0
    memory: int = 0
    cpus: float = 0.0
    overlay: str = ""


@dataclass
class AgentConfig:
    node: str
    pools: dict[str, PoolConfig]
    listen: list[str] = field(default_factory=list)
    server_secret_file: str = ""
    authorized_keys: str = ""
    metrics_listen: str = ""
    max_sandboxes: int = 0
    memory_budget: int = 0
    parallel_starts: int = 2
    zentry: str = ""


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read the pool config {path!r}: {err.strerror}") from err
    try:
        if path.endswith(".toml"):
            import tomllib

            doc = tomllib.loads(data.decode())
        else:
            doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a table/object")
    return doc


def _template(path: str, name: str, spec: dict) -> dict:
    where = f"{path}: pools.{name}"
    bundle, rootfs = spec.get("bundle"), spec.get("rootfs")
    if bool(bundle) == bool(rootfs):
        raise ConfigError(f"{where}: give exactly one of bundle or rootfs")
    base_dir = os.path.dirname(os.path.abspath(path))
    if bundle:
        bundle = os.path.join(base_dir, bundle)
        try:
            with open(os.path.join(bundle, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{where}.bundle: cannot read {bundle}/config.json: {err}") from err
        root = (config.get("root") or {}).get("path") or "rootfs"
        config.setdefault("root", {})["path"] = os.path.join(bundle, root)
    else:
        from zentry.actors.oci import default_spec

        config = default_spec()
        config["root"] = {"path": os.path.join(base_dir, rootfs), "readonly": False}
    overrides = spec.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}.overrides: must be a table/object")
    config = deep_merge(config, overrides)
    if not os.path.isdir(config["root"]["path"]):
        raise ConfigError(f"{where}: the root filesystem {config['root']['path']} is not a directory")
    return config


def load(path: str) -> AgentConfig:
    doc = _read(path)
    known = {"node", "pools", "listen", "server_secret_file", "authorized_keys", "metrics_listen", "max_sandboxes",
             "memory_budget", "parallel_starts", "zentry"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}")
    pools_doc = doc.get("pools") or {}
    if not isinstance(pools_doc, dict) or not pools_doc:
        raise ConfigError(f"{path}: no pools (a [pools.NAME] table each)")
    pools = {}
    pool_keys = {"bundle", "rootfs", "warm", "max", "ttl", "idle", "memory", "cpus", "overlay", "overrides"}
    for name, spec in pools_doc.items():
        where = f"{path}: pools.{name}"
        if not _NAME.match(name):
            raise ConfigError(f"{where}: a pool name is 1-31 of a-z 0-9 _ . - (starting with a letter or digit)")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: must be a table/object")
        unknown = sorted(set(spec) - pool_keys)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
        warm, most = spec.get("warm", 1), spec.get("max", max(8, spec.get("warm", 1)))
        if not (isinstance(warm, int) and isinstance(most, int) and 0 <= warm <= most and most >= 1):
            raise ConfigError(f"{where}: need integers 0 <= warm <= max, max >= 1 (got warm={warm!r}, max={most!r})")
        overlay = spec.get("overlay", "")
        if overlay and not re.fullmatch(r"[1-9][0-9]*[kmg]?", str(overlay)):
            raise ConfigError(f"{where}.overlay: {overlay!r} is not a tmpfs size (64m, 1g)")
        cpus = spec.get("cpus", 0)
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus < 0:
            raise ConfigError(f"{where}.cpus: {cpus!r} is not a number of CPUs")
        pools[name] = PoolConfig(
            name=name,
            config=_template(path, name, spec),
            warm=warm,
            max=most,
            ttl=parse_duration(spec.get("ttl", 0), f"{where}.ttl"),
            idle=parse_duration(spec.get("idle", 0), f"{where}.idle"),
            memory=parse_size(spec.get("memory", 0), f"{where}.memory"),
            cpus=float(cpus),
            overlay=str(overlay),
        )
    listen = doc.get("listen") or []
    if isinstance(listen, str):
        listen = [listen]
    for ep in listen:
        if not isinstance(ep, str) or not ep.startswith("tcp://"):
            raise ConfigError(f"{path}: listen: {ep!r} is not a tcp:// endpoint (the ipc socket is always under --root)")
    if listen and not (doc.get("server_secret_file") and doc.get("authorized_keys")):
        raise ConfigError(f"{path}: listen on tcp needs CURVE: server_secret_file and authorized_keys")
    parallel = doc.get("parallel_starts", 2)
    if not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"{path}: parallel_starts must be an integer >= 1")
    max_sandboxes = doc.get("max_sandboxes", 0)
    if not isinstance(max_sandboxes, int) or max_sandboxes < 0:
        raise ConfigError(f"{path}: max_sandboxes must be an integer >= 0")
    budget = parse_size(doc.get("memory_budget", 0), f"{path}: memory_budget")
    if budget:
        for pool in pools.values():
            if not pool.memory:
                raise ConfigError(f"{path}: pools.{pool.name}: a memory_budget needs every pool's memory limit")
    return AgentConfig(
        node=str(doc.get("node") or socket.gethostname()),
        pools=pools,
        listen=list(listen),
        server_secret_file=str(doc.get("server_secret_file") or ""),
        authorized_keys=str(doc.get("authorized_keys") or ""),
        metrics_listen=str(doc.get("metrics_listen") or ""),
        max_sandboxes=max_sandboxes,
        memory_budget=budget,
        parallel_starts=parallel,
        zentry=str(doc.get("zentry") or ""),
    )
