"""Bad input: a generated corpus of malformed config.json files and CLI
argument vectors, each answered at once with one clear line.

Every case must get, within ANSWER_SECONDS: a non-zero exit, exactly one
line on stderr that names no Python exception, a JSON error line as the
last line of `--log` (`--log-format json`), and nothing left behind (the
private --root stays empty per case; the leak guard checks processes,
mounts and cgroups for the whole corpus).

The same config corpus goes through runc in another test: what zentry
accepts and runc refuses must be listed, with the reason, in
ZENTRY_ACCEPTS_RUNC_REFUSES.  The list is empty: every corpus case must be
refused, so such a case is a defect the first test reports as well.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil
import pytest

from helpers.bundle import minimal_config, zentry_command
from helpers.leaks import CGROUP_ROOT, LeakWatch, _walk_cgroups, rmdir_cgroup
from helpers.skips import require_tool

pytestmark = pytest.mark.root

ANSWER_SECONDS = 2.0
RUNC_SECONDS = 10.0  # runc 1.1.5 hangs on some (65537 env entries): no verdict
CASE_ID_PREFIX = f"zbad{os.getpid()}-"  # container ids, also a leak needle
WORKERS = 3  # the cases are short CLI calls: a few at once fill two cores

# A message must be a sentence for a person, not Python's internals.
PYTHON_NAMES = re.compile(
    r"Traceback|\b[A-Z][A-Za-z]*(?:Error|Exception|Exit)\b|\[Errno \d+\]|<class |"
    r"\bNoneType\b|\b(?:dict|list|str|int)\(|object at 0x")

U32 = 2**32
U64 = 2**64


@dataclass
class Case:
    """One bad input.  `config` (a document), `raw` (config.json's bytes) or
    `setup(bundle)` (makes config.json itself) give the bundle; `argv` (with
    "{bundle}" and "{id}" placeholders) the command, `create` by default."""
    name: str
    config: dict | None = None
    raw: bytes | None = None
    setup: Callable[[Path], None] | None = None
    argv: tuple[str, ...] = ("create", "--bundle", "{bundle}", "{id}")
    runc_too: bool = True  # a config case runc can be given the same way


def base_config(rootfs: str) -> dict:
    config = minimal_config(["/bin/true"])
    config["root"]["path"] = rootfs
    return config


# --- the generated part: every field given values of the wrong kind --------

MISSING = object()  # delete the key
NOT_STRING = [None, 1, True, [], {}]
NOT_BOOL = [None, "true", 1, [], {}]
NOT_ARRAY = [None, "x", 1, {}]
NOT_OBJECT = [None, "x", 1, []]
NOT_U32 = [None, "0", 1.5, True, -1, U32, U64, []]
NOT_I64 = [None, "0", 1.5, True, U64, -(2**63) - 1, []]
NOT_U64 = [None, "0", 1.5, True, -1, U64, []]

# (path, wrong values): paths use "." between keys and [n] for array items.
FIELDS: list[tuple[str, list]] = [
    ("ociVersion", NOT_STRING + [MISSING, "", "1", "1.0", "v1.0.0", "2.0.0", "0.9.0", "1.0.0.0"]),
    ("process", NOT_OBJECT),
    ("process.terminal", NOT_BOOL),
    ("process.user", NOT_OBJECT),
    ("process.user.uid", NOT_U32),
    ("process.user.gid", NOT_U32),
    ("process.user.umask", NOT_U32),
    ("process.user.additionalGids", NOT_ARRAY + [[-1], [U32], ["0"], [None]]),
    ("process.args", NOT_ARRAY + [MISSING, [], [1], [None], [[]]]),
    ("process.args[0]", NOT_STRING),
    ("process.env", NOT_ARRAY + [[1], [None]]),
    ("process.env[0]", NOT_STRING + ["=x", "", "NOEQUALS", "A\0B=c", "A=b\0c"]),
    ("process.cwd", NOT_STRING + [MISSING, "", "relative/dir", "/a\0b"]),
    ("process.capabilities", NOT_OBJECT),
    ("process.capabilities.bounding", NOT_ARRAY + [[1], [None]]),
    ("process.capabilities.bounding[0]", NOT_STRING),
    ("process.capabilities.effective", NOT_ARRAY),
    ("process.rlimits", NOT_ARRAY + [[1], [None], [{}]]),
    ("process.rlimits[0]", NOT_OBJECT),
    ("process.rlimits[0].type", NOT_STRING + [MISSING]),
    ("process.rlimits[0].hard", NOT_U64 + [MISSING]),
    ("process.rlimits[0].soft", NOT_U64 + [MISSING]),
    ("process.noNewPrivileges", NOT_BOOL),
    ("process.oomScoreAdj", [None, "0", 1.5, True, U64, []]),
    ("process.apparmorProfile", NOT_STRING),
    ("process.selinuxLabel", NOT_STRING),
    ("process.consoleSize", NOT_OBJECT + [{"height": -1, "width": 1}, {"height": "1", "width": 1}]),
    ("root", NOT_OBJECT + [MISSING]),
    ("root.path", NOT_STRING + [MISSING, "", "/nonexistent-zentry-corpus", "/etc/hostname"]),
    ("root.readonly", NOT_BOOL),
    ("hostname", NOT_STRING),
    ("domainname", NOT_STRING),
    ("mounts", NOT_ARRAY + [[1], [None], ["x"]]),
    ("mounts[0]", NOT_OBJECT),
    ("mounts[0].destination", NOT_STRING + [MISSING, "", "relative", "/a\0b"]),
    ("mounts[0].type", NOT_STRING),
    ("mounts[0].source", NOT_STRING),
    ("mounts[0].options", NOT_ARRAY + [[1], [None]]),
    ("hooks", NOT_OBJECT),
    ("hooks.prestart", NOT_ARRAY + [[{}], [{"path": 1}], [{"path": "relative"}],
                                    [{"path": "/bin/true", "timeout": 0}],
                                    [{"path": "/bin/true", "timeout": -1}],
                                    [{"path": "/bin/true", "args": "x"}],
                                    [{"path": "/bin/true", "env": [1]}]]),
    ("annotations", NOT_OBJECT + [{"a": 1}, {"a": None}, {"a": []}]),
    ("linux", NOT_OBJECT),
    ("linux.namespaces", NOT_ARRAY + [[1], [None], [{}]]),
    ("linux.namespaces[0]", NOT_OBJECT),
    ("linux.namespaces[0].type", NOT_STRING + [MISSING, "", "pidd", "PID"]),
    ("linux.namespaces[0].path", [None, 1, True, [], {}, "relative/ns"]),
    ("linux.resources", NOT_OBJECT),
    ("linux.resources.devices", NOT_ARRAY + [[1], [{"allow": "no"}], [{}]]),
    ("linux.resources.memory", NOT_OBJECT),
    ("linux.resources.memory.limit", NOT_I64),
    ("linux.resources.memory.swappiness", NOT_U64 + [101]),
    ("linux.resources.cpu", NOT_OBJECT),
    ("linux.resources.cpu.shares", NOT_U64),
    ("linux.resources.cpu.quota", NOT_I64),
    ("linux.resources.cpu.period", NOT_U64),
    ("linux.resources.cpu.cpus", NOT_STRING),
    ("linux.resources.pids", NOT_OBJECT + [{}]),
    ("linux.resources.pids.limit", NOT_I64 + [MISSING]),
    ("linux.resources.blockIO", NOT_OBJECT),
    ("linux.resources.blockIO.weight", [None, "1", 1.5, True, -1, 65536, U64]),
    ("linux.resources.hugepageLimits", NOT_ARRAY + [[{}], [{"pageSize": 1, "limit": 1}]]),
    ("linux.maskedPaths", NOT_ARRAY + [[1], [None]]),
    ("linux.readonlyPaths", NOT_ARRAY + [[1], [None]]),
    ("linux.sysctl", NOT_OBJECT + [{"a": 1}, {"a": None}]),
    ("linux.devices", NOT_ARRAY + [[1], [{}], [{"path": "/dev/x"}],
                                   [{"path": "/dev/x", "type": "z", "major": 1, "minor": 1}],
                                   [{"path": "/dev/x", "type": "c", "major": -1, "minor": 1}],
                                   [{"path": "/dev/x", "type": "c", "major": "1", "minor": 1}],
                                   [{"path": "/dev/x", "type": "c", "major": 1, "minor": 1, "fileMode": "0666"}],
                                   [{"path": "/dev/x", "type": "c", "major": 1, "minor": 1, "uid": -1}],
                                   [{"path": "/dev/../../etc/zentry-corpus", "type": "c", "major": 1, "minor": 3}]]),
    ("linux.uidMappings", NOT_ARRAY + [[1], [{}], [{"containerID": 0, "hostID": 0, "size": -1}],
                                       [{"containerID": 0, "hostID": 0, "size": U32}]]),
    ("linux.gidMappings", NOT_ARRAY + [[1], [{}]]),
    ("linux.cgroupsPath", NOT_STRING),
    ("linux.rootfsPropagation", NOT_STRING + ["sideways"]),
    ("linux.seccomp", NOT_OBJECT + [{}, {"defaultAction": "SCMP_ACT_NOPE"},
                                    {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]},
                                    {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_NOPE"]}]),
    ("linux.mountLabel", NOT_STRING),
    ("linux.intelRdt", NOT_OBJECT),
    ("linux.personality", NOT_OBJECT + [{"domain": "LINUX_NOPE"}]),
]


def _parse_path(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for token in path.split("."):
        name, *indexes = token.split("[")
        parts.append(name)
        parts += [int(i.rstrip("]")) for i in indexes]
    return parts


def _set(config: dict, path: str, value) -> dict:
    """A copy of `config` with `path` set to `value` (made if missing)."""
    config = copy.deepcopy(config)
    parts = _parse_path(path)
    node = config
    for part, nxt in zip(parts, parts[1:]):
        if isinstance(part, int):
            while len(node) <= part:
                node.append({} if isinstance(nxt, str) else [])
            node = node[part]
        else:
            if not isinstance(node.get(part), (dict, list)):
                node[part] = [] if isinstance(nxt, int) else {}
            node = node[part]
    last = parts[-1]
    if value is MISSING:
        if isinstance(node, dict):
            node.pop(last, None)
    elif isinstance(last, int):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    else:
        node[last] = value
    return config


def _field_cases(base: dict) -> list[Case]:
    cases = []
    for path, values in FIELDS:
        for value in values:
            shown = "missing" if value is MISSING else json.dumps(value)[:40]
            cases.append(Case(f"{path}={shown}", config=_set(base, path, value)))
    return cases


# --- hand-written semantic cases ------------------------------------------

def _semantic_cases(base: dict) -> list[Case]:
    c = base
    ns = c["linux"]["namespaces"]
    without_ns = lambda kind: [n for n in ns if n["type"] != kind]  # noqa: E731
    cases = [
        Case("namespaces duplicate pid", config=_set(c, "linux.namespaces", ns + [{"type": "pid"}])),
        Case("mount namespace path missing", config=_set(c, "linux.namespaces", without_ns("mount") + [{"type": "mount", "path": "/nonexistent/ns"}])),
        Case("network namespace path missing", config=_set(c, "linux.namespaces", without_ns("network") + [{"type": "network", "path": "/nonexistent/ns"}])),
        Case("namespace path wrong type", config=_set(c, "linux.namespaces", [n for n in ns if n["type"] != "network"] + [{"type": "network", "path": "/proc/self/ns/uts"}])),
        Case("user namespace without mappings", config=_set(c, "linux.namespaces", ns + [{"type": "user"}])),
        Case("hostname without uts namespace", config=_set(c, "linux.namespaces", without_ns("uts"))),
        Case("net sysctl without network namespace",
             config=_set(_set(c, "linux.namespaces", without_ns("network")), "linux.sysctl",
                         {"net.ipv4.ping_group_range": "0 0"})),
        Case("ipc sysctl without ipc namespace",
             config=_set(_set(c, "linux.namespaces", without_ns("ipc")), "linux.sysctl", {"kernel.msgmax": "8192"})),
        Case("unknown sysctl", config=_set(c, "linux.sysctl", {"kernel.no_such_sysctl_zentry": "1"})),
        Case("sysctl with slash path", config=_set(c, "linux.sysctl", {"../../etc/passwd": "x"})),
        Case("time offsets without time namespace", config=_set(c, "linux.timeOffsets", {"monotonic": {"secs": 1, "nanosecs": 0}})),
        Case("rlimit unknown type", config=_set(c, "process.rlimits", [{"type": "RLIMIT_NOPE", "hard": 1, "soft": 1}])),
        Case("rlimit duplicate", config=_set(c, "process.rlimits", [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 1}] * 2)),
        Case("rlimit soft above hard", config=_set(c, "process.rlimits", [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 20}])),
        Case("oomScoreAdj above 1000", config=_set(c, "process.oomScoreAdj", 1001)),
        Case("oomScoreAdj below -1000", config=_set(c, "process.oomScoreAdj", -1001)),
        Case("memory limit below -1", config=_set(c, "linux.resources.memory.limit", -2)),
        Case("swappiness above 100", config=_set(c, "linux.resources.memory.swappiness", 101)),
        Case("cpu period zero with quota", config=_set(_set(c, "linux.resources.cpu.quota", 1000), "linux.resources.cpu.period", 1)),
        Case("cpuset not a cpu list", config=_set(c, "linux.resources.cpu.cpus", "zero-three")),
        Case("cgroupsPath relative with dots", config=_set(c, "linux.cgroupsPath", "../../escape")),
        Case("bind mount of a missing source", config=_set(c, "mounts", c["mounts"] + [
            {"destination": "/mnt", "type": "bind", "source": "/nonexistent-zentry-corpus", "options": ["bind"]}])),
        Case("mount with unknown type", config=_set(c, "mounts", c["mounts"] + [
            {"destination": "/mnt", "type": "nosuchfs", "source": "x"}])),
        Case("hook path missing", config=_set(c, "hooks", {"createRuntime": [{"path": "/nonexistent-zentry-hook"}]})),
        Case("args[0] missing in rootfs", config=_set(c, "process.args", ["/no/such/binary"])),
        Case("args[0] empty string", config=_set(c, "process.args", [""])),
        Case("args with NUL", config=_set(c, "process.args", ["/bin/echo", "a\0b"])),
        Case("env name with NUL", config=_set(c, "process.env", ["A\0=b"])),
        Case("env empty name", config=_set(c, "process.env", ["=x"])),
        Case("env no equals", config=_set(c, "process.env", ["JUSTNAME"])),
        Case("hostname with NUL", config=_set(c, "hostname", "a\0b")),
        Case("hostname too long", config=_set(c, "hostname", "h" * 65)),
        Case("seccomp unknown syscall action", config=_set(c, "linux.seccomp", {
            "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_BOGUS"}]})),
        Case("seccomp errno out of range", config=_set(c, "linux.seccomp", {
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": U64})),
        Case("uid mapping without user namespace size 0", config=_set(_set(c, "linux.namespaces", ns + [{"type": "user"}]), "linux", {
            **c["linux"], "namespaces": ns + [{"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 0}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 0}]})),
        Case("root mapped nowhere", config=_set(c, "linux", {
            **c["linux"], "namespaces": ns + [{"type": "user"}],
            "uidMappings": [{"containerID": 1, "hostID": 100000, "size": 10}],
            "gidMappings": [{"containerID": 1, "hostID": 100000, "size": 10}]})),
        Case("device path with dots", config=_set(c, "linux.devices", [
            {"path": "/dev/../../etc/zentry-corpus", "type": "c", "major": 1, "minor": 3, "fileMode": 438}])),
        Case("personality unknown domain", config=_set(c, "linux.personality", {"domain": "LINUX64"})),
        Case("ociVersion prerelease of 2", config=_set(c, "ociVersion", "2.0.0-rc1")),
        # only the node agent's --pool-spawner sets it (its init would load no seccomp filter)
        Case("the pool spawner's annotation", config=_set(c, "annotations", {"dev.zentry.pool-spawner": "true"})),
    ]
    # Over the bus's limits (bus/codec.py), each just past it.
    cases += [
        Case("65537 args", config=_set(c, "process.args", ["/bin/true"] + ["a"] * 65536)),
        Case("65537 additional gids", config=_set(c, "process.user.additionalGids", list(range(65537)))),
        Case("65537 env entries", config=_set(c, "process.env", [f"V{i}=x" for i in range(65537)])),
        Case("65537 masked paths", config=_set(c, "linux.maskedPaths", [f"/m{i}" for i in range(65537)])),
        Case("string over 1 MiB", config=_set(c, "process.args", ["/bin/echo", "x" * (1024 * 1024 + 1)])),
        Case("hostname over 1 MiB", config=_set(c, "hostname", "h" * (1024 * 1024 + 1))),
        Case("4097 annotations", config=_set(c, "annotations", {f"a{i}": "v" for i in range(4097)})),
        Case("4097 sysctls", config=_set(c, "linux.sysctl", {f"kernel.x{i}": "1" for i in range(4097)})),
        Case("annotation key over 1 MiB", config=_set(c, "annotations", {"k" * (1024 * 1024 + 1): "v"})),
        Case("unknown field nested 100 deep", config=_set(c, "zentryCorpusDeep", json.loads("[" * 100 + "]" * 100))),
    ]
    return cases


# --- whole files that are not a config --------------------------------------

def _raw_cases(base: dict) -> list[Case]:
    good = json.dumps(base)
    raws = {
        "empty file": b"",
        "whitespace only": b"  \n\t ",
        "open brace": b"{",
        "truncated": good[: len(good) // 2].encode(),
        "null": b"null",
        "array": b"[]",
        "number": b"42",
        "string": b'"config"',
        "true": b"true",
        "trailing garbage": (good + "}x").encode(),
        "two documents": (good + good).encode(),
        "comment": ("// config\n" + good).encode(),
        "trailing comma": good[:-1].encode() + b",}",
        "single quotes": good.replace('"', "'").encode(),
        "NaN": good.replace('"ociVersion": "1.0.2"', '"ociVersion": NaN').encode(),
        "Infinity": good.replace('"terminal": false', '"terminal": Infinity').encode(),
        "1e400": good.replace('"uid": 0', '"uid": 1e400').encode(),
        "-1e400": good.replace('"uid": 0', '"uid": -1e400').encode(),
        "integer of 5000 digits": good.replace('"uid": 0', '"uid": ' + "9" * 5000).encode(),
        "negative integer of 30 digits": good.replace('"uid": 0', '"uid": -' + "9" * 30).encode(),
        "float uid": good.replace('"uid": 0', '"uid": 0.0').encode(),
        "nested 1000 deep": ("[" * 1000 + "]" * 1000).encode(),
        "nested 100000 deep": ("[" * 100000 + "]" * 100000).encode(),
        "objects nested 1000 deep": ('{"a":' * 1000 + "1" + "}" * 1000).encode(),
        "nested 1000 deep in a field": good.replace('"hostname": "zentry-test"',
                                                    '"zentryDeep": ' + "[" * 1000 + "]" * 1000).encode(),
        "invalid UTF-8": good.replace("zentry-test", "zentry\udcfftest").encode("utf-8", "surrogateescape"),
        "lone surrogate escape": good.replace("zentry-test", "\\ud800").encode(),
        "UTF-16": good.encode("utf-16"),
        "UTF-8 BOM": b"\xef\xbb\xbf" + good.encode(),
        "NUL byte": good.encode().replace(b"zentry-test", b"zentry\0test"),
        "control character in string": good.encode().replace(b"zentry-test", b"zentry\x01test"),
        "duplicate keys, last invalid": (good[:-1] + ', "ociVersion": 5}').encode(),
        "binary noise": bytes(range(256)) * 4,
        "over 4 MiB of spaces": b" " * (4 * 1024 * 1024 + 10) + good.encode(),
    }
    return [Case(f"raw: {name}", raw=data) for name, data in raws.items()]


def _file_cases() -> list[Case]:
    def link_to(target: str) -> Callable[[Path], None]:
        return lambda bundle: os.symlink(target, bundle / "config.json")

    def directory(bundle: Path) -> None:
        (bundle / "config.json").mkdir()

    def socket_file(bundle: Path) -> None:
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(bundle / "config.json"))
        s.close()

    def loop(bundle: Path) -> None:
        os.symlink("config.json", bundle / "config.json")

    def nothing(bundle: Path) -> None:
        pass

    return [
        Case("config.json is /dev/zero", setup=link_to("/dev/zero")),
        Case("config.json is /dev/urandom", setup=link_to("/dev/urandom")),
        Case("config.json is /dev/null", setup=link_to("/dev/null")),
        Case("config.json is a directory", setup=directory),
        Case("config.json is a socket", setup=socket_file),
        Case("config.json is a symlink loop", setup=loop),
        Case("config.json is a dangling symlink", setup=link_to("/nonexistent-zentry-corpus")),
        Case("config.json is missing", setup=nothing),
    ]


# --- CLI argument vectors ---------------------------------------------------

def _argv_cases() -> list[Case]:
    vectors = [
        ("create",), ("create", "--bundle"), ("create", "{id}"),
        ("create", "--bundle", "/nonexistent-zentry-corpus", "{id}"),
        ("create", "--bundle", "{bundle}", ""),
        ("create", "--bundle", "{bundle}", "."),
        ("create", "--bundle", "{bundle}", ".."),
        ("create", "--bundle", "{bundle}", "a/b"),
        ("create", "--bundle", "{bundle}", "../escape"),
        ("create", "--bundle", "{bundle}", "-dash"),
        ("create", "--bundle", "{bundle}", "nu-ünï"),
        ("create", "--bundle", "{bundle}", "x" * 303),
        ("create", "--bundle", "{bundle}", "x" * 5000),
        ("create", "--bundle", "{bundle}", "a b"),
        ("create", "--bundle", "{bundle}", "a\nb"),
        ("create", "--bundle", "{bundle}", "{id}", "extra"),
        ("create", "--bundle", "{bundle}", "--console-socket", "/nonexistent/sock", "{id}"),
        ("create", "--bundle", "{bundle}", "--preserve-fds", "x", "{id}"),
        ("create", "--bundle", "{bundle}", "--preserve-fds", str(2**70), "{id}"),
        ("create", "--bogus-flag", "--bundle", "{bundle}", "{id}"),
        ("run", "--bundle", "/nonexistent-zentry-corpus", "{id}"),
        ("run", "--bundle", "{bundle}", ""),
        ("run", "--bundle", "{bundle}", "nu-ünï"),
        ("run", "--bundle", "{bundle}", "--bogus", "{id}"),
        ("start",), ("start", "{id}"), ("start", "nu-ünï"), ("start", "x" * 303),
        ("start", "../escape"), ("start", ""),
        ("delete",), ("delete", "{id}"), ("delete", "../escape"), ("delete", "x" * 5000),
        ("state",), ("state", "{id}"), ("state", "a/b"), ("state", "x" * 303),
        ("kill",), ("kill", "{id}"), ("kill", "{id}", "SIGNOPE"), ("kill", "{id}", "99999"),
        ("kill", "{id}", "-1"), ("kill", "{id}", str(2**70)), ("kill", "{id}", "KILL", "extra"),
        ("pause",), ("pause", "{id}"), ("resume",), ("resume", "{id}"),
        ("ps",), ("ps", "{id}"), ("ps", "--format", "xml", "{id}"),
        ("wait",), ("wait", "{id}"),
        ("exec",), ("exec", "{id}"), ("exec", "{id}", "/bin/true"),
        ("exec", "--process", "/nonexistent-zentry-corpus", "{id}"),
        ("exec", "--cwd", "relative", "{id}", "/bin/true"),
        ("exec", "--user", "notanumber:x", "{id}", "/bin/true"),
        ("exec", "--env", "=x", "{id}", "/bin/true"),
        ("update",), ("update", "{id}"), ("update", "--memory", "lots", "{id}"),
        ("update", "--memory", "64m", "{id}"), ("update", "--cpu-shares", "-5", "{id}"),
        ("update", "--pids-limit", "x", "{id}"), ("update", "--resources", "/nonexistent-zentry-corpus", "{id}"),
        ("events", "{id}"), ("events", "--interval", "-1s", "{id}"),
        ("spec", "--bundle", "/nonexistent-zentry-corpus/x"),
        ("no-such-command",), ("--bogus-global", "list"),
        ("--log-format", "xml", "list"),
        ("--root", "/dev/null", "list"),
        ("--root", "/proc/version", "state", "{id}"),
        ("--root", "", "state", "{id}"),
        ("list", "--format", "yaml"),
        ("list", "extra-arg"),
        ("debug", "--strace", "maybe", "{id}"),
        ("tap", "--serve", "tcp://256.0.0.1:1"),
    ]
    return [Case("argv: " + " ".join(v)[:60], argv=v, runc_too=False) for v in vectors]


def build_corpus(rootfs: str) -> list[Case]:
    base = base_config(rootfs)
    corpus = _field_cases(base) + _semantic_cases(base) + _raw_cases(base) + _file_cases() + _argv_cases()
    seen: dict[str, int] = {}
    for case in corpus:  # names identify cases in reports: make them unique
        seen[case.name] = seen.get(case.name, 0) + 1
        if seen[case.name] > 1:
            case.name += f" #{seen[case.name]}"
    return corpus


# --- running one case -------------------------------------------------------

@dataclass
class Answer:
    code: int | None       # None: timed out (killed)
    stderr: str
    seconds: float
    log_tail: str = ""
    leftovers: list[str] = field(default_factory=list)


def prepare_bundle(case: Case, bundle: Path, default_config: dict) -> None:
    """The case's bundle (a good config.json for CLI argument cases)."""
    bundle.mkdir()
    if case.setup is not None:
        case.setup(bundle)
    elif case.raw is not None:
        (bundle / "config.json").write_bytes(case.raw)
    else:
        config = case.config if case.config is not None else default_config
        (bundle / "config.json").write_text(json.dumps(config))


def run_argv(argv: list[str], timeout: float, cwd: Path) -> tuple[int | None, str, float]:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                                start_new_session=True)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:  # runc init makes its own session: find it by descent
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                children = []
            os.killpg(proc.pid, signal.SIGKILL)
            for child in children:
                try:
                    child.kill()
                except psutil.Error:
                    pass
            proc.wait()
            code = None
        seconds = time.monotonic() - start
        err.seek(0)
        return code, err.read().decode(errors="replace"), seconds


def fill(argv: tuple[str, ...], bundle: Path, cid: str) -> list[str]:
    return [a.replace("{bundle}", str(bundle)).replace("{id}", cid) for a in argv]


def root_entries(root: Path) -> list[str]:
    """What a refused call left in --root (empty lock files do not count)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not (name.endswith(".lock") and os.path.getsize(p) == 0):
                found.append(os.path.relpath(p, root))
        if dirpath != str(root) and not dirnames and not filenames:
            found.append(os.path.relpath(dirpath, root) + "/")
    return found


def run_zentry_case(case: Case, workdir: Path, index: int, default_config: dict) -> Answer:
    cid = f"{CASE_ID_PREFIX}{index}"
    here = workdir / f"c{index}"
    here.mkdir()
    bundle = here / "bundle"
    prepare_bundle(case, bundle, default_config)
    root = here / "root"
    root.mkdir(mode=0o700)
    log = here / "log.json"
    argv = [*zentry_command(), "--root", str(root), "--log", str(log), "--log-format", "json",
            *fill(case.argv, bundle, cid)]
    code, stderr, seconds = run_argv(argv, timeout=ANSWER_SECONDS * 5, cwd=here)
    answer = Answer(code, stderr, seconds)
    try:
        lines = log.read_text(errors="replace").splitlines()
        answer.log_tail = lines[-1] if lines else ""
    except OSError:
        pass
    if code == 0 or code is None:  # accepted (or hung): take down what it made, then report it
        listed = subprocess.run([*zentry_command(), "--root", str(root), "list", "--quiet"],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        for made in listed.stdout.split():
            subprocess.run([*zentry_command(), "--root", str(root), "delete", "--force", made],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    answer.leftovers = root_entries(root)
    if os.path.lexists("/etc/zentry-corpus"):
        answer.leftovers.append("host /etc/zentry-corpus")
    return answer


def judge(case: Case, answer: Answer) -> list[str]:
    """What is wrong with zentry's answer to `case` (empty: a good answer)."""
    wrong = []
    if answer.code is None:
        return [f"no answer within {ANSWER_SECONDS * 5:.0f} s"]
    if answer.code == 0:
        wrong.append("accepted (exit 0)")
    if answer.seconds > ANSWER_SECONDS:
        wrong.append(f"took {answer.seconds:.2f} s")
    lines = [line for line in answer.stderr.splitlines() if line.strip()]
    if len(lines) != 1:
        wrong.append(f"{len(lines)} lines on stderr: {answer.stderr[:300]!r}")
    if PYTHON_NAMES.search(answer.stderr):
        wrong.append(f"Python internals in the message: {answer.stderr.strip()[:300]!r}")
    if answer.code != 0 and not _is_json_error(answer.log_tail):
        wrong.append(f"--log's last line is not a JSON error: {answer.log_tail[:200]!r}")
    if answer.leftovers:
        wrong.append(f"left behind: {answer.leftovers[:5]}")
    return wrong


def _is_json_error(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and entry.get("level") == "error" and bool(entry.get("msg"))


@pytest.fixture(scope="module")
def workspace(busybox_rootfs_cache) -> Path:
    """A short private folder (socket paths) with one shared busybox rootfs."""
    path = Path(tempfile.mkdtemp(prefix="zb-", dir="/tmp"))
    busybox_rootfs_cache.copy_to(path / "rootfs")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def corpus(workspace) -> list[Case]:
    return build_corpus(str(workspace / "rootfs"))


@pytest.fixture(scope="module")
def zentry_answers(workspace, corpus) -> dict[str, Answer]:
    """zentry's answer to every case (run once for the module's tests).

    The whole run is leak-checked here, as the per-test guard would not see
    a module fixture: processes, mounts and cgroups naming the workspace or
    a corpus container id."""
    if zentry_command() is None:
        pytest.skip("the zentry CLI cannot run")
    watch = LeakWatch(needles=[str(workspace), CASE_ID_PREFIX])
    before = watch.snapshot()
    default = base_config(str(workspace / "rootfs"))
    work = workspace / "zentry"
    work.mkdir()
    with ThreadPoolExecutor(WORKERS) as pool:
        answers = list(pool.map(lambda ic: run_zentry_case(ic[1], work, ic[0], default), enumerate(corpus)))
    leaks = watch.wait_for_leaks(before)
    if leaks:
        errors = watch.cleanup(leaks)
        pytest.fail("the bad-input corpus left behind:\n" + leaks.report()
                    + ("\ncleanup failed: " + "; ".join(errors) if errors else ""), pytrace=False)
    return {case.name: answer for case, answer in zip(corpus, answers)}


def test_corpus_is_large_enough(corpus):
    assert len(corpus) >= 500, len(corpus)


def test_zentry_refuses_each_bad_input_at_once(corpus, zentry_answers):
    bad = {}
    for case in corpus:
        wrong = judge(case, zentry_answers[case.name])
        if wrong:
            bad[case.name] = wrong
    report = "\n".join(f"  {name}: {'; '.join(w)}" for name, w in bad.items())
    assert not bad, f"{len(bad)} of {len(corpus)} bad inputs were not answered well:\n{report}"


# What zentry accepts and runc refuses, each with the reason (see the module doc).
ZENTRY_ACCEPTS_RUNC_REFUSES: dict[str, str] = {}


def run_runc_case(runc: str, case: Case, workdir: Path, index: int) -> int | None:
    """runc's exit status for `case` (None: no answer in time); a container
    it creates is deleted again."""
    cid = f"{CASE_ID_PREFIX}{index}"
    here = workdir / f"c{index}"
    here.mkdir()
    bundle = here / "bundle"
    prepare_bundle(case, bundle, {})
    root = here / "root"
    argv = [runc, "--root", str(root), *fill(case.argv, bundle, cid)]
    code, _, _ = run_argv(argv, timeout=RUNC_SECONDS, cwd=here)
    if code != 1 and root.is_dir():  # accepted, or hung: take down what it made
        subprocess.run([runc, "--root", str(root), "delete", "--force", cid],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if code is None:  # killed before it saved any state: its cgroups are ours to remove
        for rel in _walk_cgroups():
            if os.path.basename(rel) == cid:
                rmdir_cgroup(str(CGROUP_ROOT / rel))
    return code


def test_what_zentry_accepts_runc_refuses_is_explained(corpus, zentry_answers, workspace, leak_guard):
    runc = require_tool("runc", "the corpus is compared with runc")
    leak_guard.add_needle(CASE_ID_PREFIX)
    work = workspace / "runc"
    work.mkdir()
    cases = [(i, c) for i, c in enumerate(corpus) if c.runc_too]
    with ThreadPoolExecutor(WORKERS) as pool:
        codes = list(pool.map(lambda ic: run_runc_case(runc, ic[1], work, ic[0]), cases))
    accepted_by_zentry_only = {
        case.name for (_, case), code in zip(cases, codes)
        if code != 0 and zentry_answers[case.name].code == 0}
    unexplained = sorted(accepted_by_zentry_only - ZENTRY_ACCEPTS_RUNC_REFUSES.keys())
    stale = sorted(ZENTRY_ACCEPTS_RUNC_REFUSES.keys() - accepted_by_zentry_only)
    assert not unexplained, "zentry accepts, runc refuses, no reason listed:\n  " + "\n  ".join(unexplained)
    assert not stale, "listed as accepted by zentry only, but no longer:\n  " + "\n  ".join(stale)
