"""Reading a bundle's config.json: schema validation plus the checks runc makes.

``load_bundle`` is the one entry point: it reads ``<bundle>/config.json``,
validates it against the OCI runtime schema (our own interpreter,
``validate.py``), applies the semantic rules the schema cannot express, and
returns the document with ``root.path`` made absolute. Every failure is a
``ConfigError`` whose message is one line that says where and what:
``invalid config.json: process.args: must be a non-empty array``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat

from zentry.bus.errors import ConfigError
from zentry.bus.log import warn_user

from .limits import MAX_CONFIG_BYTES, MAX_INT_DIGITS, bus_limit_error, device_error, env_error, range_error
from .schema import first_config_error


#: the ociVersion range zentry accepts (see features.py)
OCI_VERSION_MIN = (1, 0, 0)
OCI_VERSION_MAX = (1, 2, 0)

#: Annotations the CLI sets for the actors (its flags travel inside the config):
#: ``--strace`` publishes every trapped syscall from the init's first call;
#: ``--preserve-fds N`` passes fds 3 .. 3+N-1 to the container.
STRACE_ANNOTATION = "dev.zentry.strace"
PRESERVE_FDS_ANNOTATION = "dev.zentry.preserve-fds"
#: ``--pool-spawner``: the init loads no seccomp filter (a pool's template,
#: whose init makes sandboxes and gives each its filters: actors/pool/).
#: Only the command line sets it: create refuses it in a config.json.
SPAWNER_ANNOTATION = "dev.zentry.pool-spawner"

NAMESPACE_TYPES = ("mount", "pid", "network", "uts", "ipc", "user", "cgroup", "time")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")

_READ_ERRORS = {
    errno.ENOENT: "no such file",
    errno.ENOTDIR: "no such file",
    errno.EACCES: "permission denied",
    errno.EISDIR: "is a directory",
}


def load_bundle(bundle_dir: str, *, require_process: bool = True) -> dict:
    """The validated config of the bundle at ``bundle_dir``.

    ``require_process`` is true for ``create``/``run`` (the container needs
    something to run). ``root.path`` comes back absolute (symlinks resolved),
    relative paths being relative to the bundle. Raises ``ConfigError``.
    """
    bundle = os.path.abspath(bundle_dir)
    config = parse_config(read_config_file(bundle))
    for warning in check_config(config, bundle, require_process=require_process):
        warn_user(f"config.json: {warning}")
    config["root"]["path"] = resolve_root(config, bundle)
    # a bind's relative source is relative to the bundle (the actors never see it)
    for mount in config.get("mounts") or []:
        source = mount.get("source")
        binds = mount.get("type") == "bind" or any(o in ("bind", "rbind") for o in mount.get("options") or [])
        if binds and isinstance(source, str) and source and not os.path.isabs(source):
            mount["source"] = os.path.join(bundle, source)
    # a user namespace joined by path: its mappings, for the gofer and the sandbox
    from .userns import complete_mappings

    complete_mappings(config)
    return config


def read_config_file(bundle: str) -> bytes:
    """The bytes of ``<bundle>/config.json``: a regular file (or a FIFO, read
    as runc reads one) of at most ``MAX_CONFIG_BYTES``; anything else (a
    device such as /dev/zero, a directory, a socket) is refused unread."""
    path = os.path.join(bundle, "config.json")
    try:
        _check_kind(os.stat(path).st_mode, bundle)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            _check_kind(os.fstat(fd).st_mode, bundle)  # replaced since the stat?
            chunks, size = [], 0
            while size <= MAX_CONFIG_BYTES:
                chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except OSError as err:
        why = _READ_ERRORS.get(err.errno, os.strerror(err.errno or 0).lower())
        raise ConfigError(f'cannot read config.json in bundle "{bundle}": {why}') from err
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f'config.json in bundle "{bundle}" is larger than the limit of {MAX_CONFIG_BYTES} bytes')
    return b"".join(chunks)


_FILE_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def _check_kind(mode: int, bundle: str) -> None:
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a file")
        raise ConfigError(f'config.json in bundle "{bundle}" is {kind}, not a regular file')


def parse_config(raw: bytes | str) -> dict:
    """The schema-valid config document in ``raw`` JSON text, or ``ConfigError``."""
    if isinstance(raw, bytes):
        raw = _utf8_text(raw)
    try:
        config = json.loads(raw, parse_constant=_no_constant, parse_int=_bounded_int,
                            parse_float=_finite_float)
    except _OutOfRange as err:
        raise ConfigError(f"invalid config.json: {err}") from None
    except (ValueError, UnicodeDecodeError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else str(err)
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise ConfigError(f"invalid config.json: not valid JSON: {reason}{where}") from err
    except RecursionError:
        raise ConfigError("invalid config.json: not valid JSON: nested too deeply") from None
    error = bus_limit_error(config) or first_config_error(_as_the_schema_spells_it(config))
    if error is not None:
        raise ConfigError(f"invalid config.json: {error}")
    return config


def _utf8_text(raw: bytes) -> str:
    """JSON text is UTF-8 without a byte order mark (RFC 8259; runc's reader
    agrees); json.loads alone would guess UTF-16 and UTF-32 as well."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ConfigError("invalid config.json: not valid JSON: starts with a byte order mark")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"invalid config.json: not valid JSON: not UTF-8 text (byte {err.start})") from None


#: linux.rootfsPropagation values runc and crun accept beside the spec's four
#: (the propagation is applied recursively either way)
RECURSIVE_PROPAGATION = {"rprivate": "private", "rshared": "shared", "rslave": "slave", "runbindable": "unbindable"}


def _as_the_schema_spells_it(config: object) -> object:
    """``config`` with what runc accepts beyond the schema spelled the schema's way
    (for the schema check only: the document itself is kept as written)."""
    linux = config.get("linux") if isinstance(config, dict) else None
    if isinstance(linux, dict) and isinstance(linux.get("rootfsPropagation"), str) and linux["rootfsPropagation"] in RECURSIVE_PROPAGATION:
        linux = dict(linux, rootfsPropagation=RECURSIVE_PROPAGATION[linux["rootfsPropagation"]])
        return dict(config, linux=linux)
    return config


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


class _OutOfRange(ValueError):
    """A JSON number zentry cannot hold (valid JSON, so not a syntax error)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _OutOfRange(f"integer {text[:24]}... is out of range (more than {MAX_INT_DIGITS} digits)")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _OutOfRange(f"number {text[:24]} is out of range")
    return value


def resolve_root(config: dict, bundle: str) -> str:
    """``root.path`` as an absolute path with symlinks resolved."""
    return os.path.realpath(os.path.join(bundle, config["root"]["path"]))


def _fail(where: str, what: str) -> ConfigError:
    return ConfigError(f"invalid config.json: {where}: {what}")


def check_config(config: dict, bundle: str, *, require_process: bool = True) -> list[str]:
    """The semantic rules; raises ``ConfigError`` on the first broken one.

    ``config`` must already be schema-valid. Returns warnings for settings
    that are ignored or suspicious but allowed (``load_bundle`` shows them).
    """
    warnings: list[str] = []
    _check_version(config["ociVersion"])
    _check_root(config, bundle)
    _check_process(config, require_process, warnings)
    bad_value = env_error(config) or device_error(config) or range_error(config)
    if bad_value:
        raise ConfigError(f"invalid config.json: {bad_value}")
    _check_namespaces(config, warnings)
    _check_sysctls(config)
    for i, mount in enumerate(config.get("mounts", [])):
        dest = mount["destination"]
        if not os.path.isabs(dest):
            raise _fail(f"mounts[{i}].destination", f'"{dest}" must be an absolute path')
    for kind in HOOK_KINDS:
        for i, hook in enumerate(config.get("hooks", {}).get(kind, [])):
            if not os.path.isabs(hook["path"]):
                raise _fail(f"hooks.{kind}[{i}].path", f'"{hook["path"]}" must be an absolute path')
    return warnings


def _check_version(version: str) -> None:
    match = _SEMVER.match(version)
    if not match:
        raise _fail("ociVersion", f'"{version}" is not a valid version (MAJOR.MINOR.PATCH)')
    if int(match.group(1)) != OCI_VERSION_MIN[0]:
        lo = ".".join(map(str, OCI_VERSION_MIN))
        hi = ".".join(map(str, OCI_VERSION_MAX))
        raise _fail("ociVersion", f'"{version}" is not supported (zentry supports {lo} to {hi})')


def _check_root(config: dict, bundle: str) -> None:
    if "root" not in config:
        raise _fail("root", "missing (required on Linux)")
    root = resolve_root(config, bundle)
    if not os.path.exists(root):
        raise _fail("root.path", f'"{root}" does not exist')
    if not os.path.isdir(root):
        raise _fail("root.path", f'"{root}" is not a directory')


def _check_process(config: dict, require_process: bool, warnings: list[str]) -> None:
    process = config.get("process")
    if process is None:
        if require_process:
            raise _fail("process", "missing (required to create a container)")
        return
    if not process.get("args"):
        raise _fail("process.args", "must be a non-empty array")
    if not os.path.isabs(process["cwd"]):
        raise _fail("process.cwd", f'"{process["cwd"]}" must be an absolute path')
    if process.get("capabilities"):
        from zentry.actors.sandbox import caps

        ignored = caps.unknown(process["capabilities"])
        if ignored:
            warnings.append(f"process.capabilities: ignoring unknown or unavailable capabilities: {', '.join(ignored)}")
    seen: set[str] = set()
    for i, rlimit in enumerate(process.get("rlimits", [])):
        if rlimit["type"] in seen:
            raise _fail(f"process.rlimits[{i}]", f'duplicate rlimit "{rlimit["type"]}"')
        seen.add(rlimit["type"])


def _check_namespaces(config: dict, warnings: list[str]) -> None:
    linux = config.get("linux", {})
    new: set[str] = set()  # namespaces created, not joined
    seen: set[str] = set()
    for i, ns in enumerate(linux.get("namespaces", [])):
        kind = ns["type"]
        if kind not in NAMESPACE_TYPES:
            raise _fail(f"linux.namespaces[{i}].type", f'unknown namespace type "{kind}"')
        if kind in seen:
            raise _fail(f"linux.namespaces[{i}]", f'duplicate namespace type "{kind}"')
        seen.add(kind)
        path = ns.get("path")
        if path:
            if not os.path.isabs(path):
                raise _fail(f"linux.namespaces[{i}].path", f'"{path}" must be an absolute path')
            _check_namespace_file(f"linux.namespaces[{i}].path", kind, path)
        else:
            new.add(kind)

    if "mount" in seen and "mount" not in new and "user" in seen:
        raise _fail("linux.namespaces", "a mount namespace joined by path together with a user namespace is not supported by zentry")
    has_uid, has_gid = bool(linux.get("uidMappings")), bool(linux.get("gidMappings"))
    if "user" in new and not (has_uid and has_gid):
        raise _fail("linux", "a new user namespace needs both uidMappings and gidMappings")
    if "user" in new:
        for kind in ("uid", "gid"):
            if not any(m["containerID"] <= 0 < m["containerID"] + m["size"] for m in linux[f"{kind}Mappings"]):
                raise _fail(f"linux.{kind}Mappings", f"{kind} 0 (the container's root) is not mapped")
    if "user" not in seen and (has_uid or has_gid):
        warnings.append("linux.uidMappings/gidMappings are ignored without a user namespace")
    # A joined uts namespace counts: its owner chose to share it (as runc does).
    if config.get("hostname") and "uts" not in seen:
        raise _fail("hostname", "setting a hostname needs a private uts namespace")
    if config.get("domainname") and "uts" not in seen:
        raise _fail("domainname", "setting a domainname needs a private uts namespace")
    if linux.get("timeOffsets") and "time" not in new:
        raise _fail("linux.timeOffsets", "time offsets need a new time namespace")


#: IPC sysctls that are not under fs.mqueue. (namespaced with the ipc namespace)
IPC_SYSCTLS = frozenset({
    "kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem",
    "kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced",
})


def sysctl_name(key: str) -> str:
    """``key`` in dotted form: ``net/ipv4/conf/eth0.100/rp_filter`` (sysctl.d's
    slash form, first separator "/") becomes ``net.ipv4.conf.eth0/100.rp_filter``."""
    first = min((i for i in (key.find("."), key.find("/")) if i >= 0), default=-1)
    if first < 0 or key[first] == ".":
        return key
    return key.translate(str.maketrans("./", "/."))


def sysctl_path(key: str) -> str:
    """The file under /proc/sys of a sysctl given in either form."""
    return "/proc/sys/" + sysctl_name(key).translate(str.maketrans("./", "/."))


def _same_namespace(path: str, kind: str) -> bool:
    """Whether the namespace at ``path`` is this process's own ``kind`` namespace."""
    try:
        there, here = os.stat(path), os.stat(f"/proc/self/ns/{kind}")
    except OSError:
        return False  # a bad path is reported when the container joins it
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


#: <linux/nsfs.h>: _IO(0xb7, 0x3), the CLONE_NEW* type of a namespace file
NS_GET_NSTYPE = 0xB703


def _check_namespace_file(where: str, kind: str, path: str) -> None:
    """``path`` must be a namespace of type ``kind`` (the spec: anything else is an error)."""
    import fcntl

    from zentry.sentry.abi.libc import NAMESPACES

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise _fail(where, f'cannot open "{path}": {os.strerror(err.errno or 0).lower()}') from err
    try:
        actual = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as err:
        raise _fail(where, f'"{path}" is not a namespace') from err
    finally:
        os.close(fd)
    if actual != NAMESPACES[kind][0]:
        found = next((name for name, (flag, _) in NAMESPACES.items() if flag == actual), hex(actual))
        raise _fail(where, f'"{path}" is not a {kind} namespace (it is {found})')


def _check_sysctls(config: dict) -> None:
    """linux.sysctl may only name sysctls of namespaces the container does not share
    with the host (as runc's validator): anything else would change the host's value."""
    linux = config.get("linux", {})
    sysctls = linux.get("sysctl") or {}
    if not sysctls:
        return
    namespaces = {ns["type"]: ns.get("path") or "" for ns in linux.get("namespaces", [])}
    for key in sysctls:
        name = sysctl_name(key)
        where, what = "linux.sysctl", f'"{key}"'
        if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
            if "ipc" not in namespaces:
                raise _fail(where, f"{what} needs a private ipc namespace (it would change the host's)")
        elif name.startswith("net."):
            if "network" not in namespaces:
                raise _fail(where, f"{what} needs a private network namespace (it would change the host's)")
            if namespaces["network"] and _same_namespace(namespaces["network"], "net"):
                raise _fail(where, f"{what} is not allowed in the host's network namespace (linux.namespaces joins it)")
        elif name == "kernel.domainname" and "uts" in namespaces:
            pass
        elif name == "kernel.hostname" and "uts" in namespaces:
            raise _fail(where, f'{what} conflicts with the "hostname" field: set that instead')
        elif name in ("kernel.hostname", "kernel.domainname"):
            raise _fail(where, f"{what} needs a private uts namespace (it would change the host's)")
        else:
            raise _fail(where, f"{what} is not in a namespace of the container (it would change the host's)")
