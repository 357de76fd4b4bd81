"""Translates the OCI ``linux.seccomp`` section into a filter Policy, and the seccomp-agent handshake.

The profile becomes its own filter, stacked under zentry's (``filter.install``);
it is compiled by the same compiler (``filter.compile_policy``). Errors are
``ConfigError`` naming the offending field: the runtime MUST fail on an action
that takes no errno but has one, on unknown names, on unsupported arches.

``SCMP_ACT_NOTIFY`` + ``listenerPath``: the runtime hands the listener fd and
the container process state to a seccomp agent (``send_to_agent``). The kernel
allows only one listener in a task's filter chain, so a profile with NOTIFY
cannot be stacked under the sentry's listener (``translate(stacked=True)``
refuses it); it can be loaded alone (``install_alone``) when the sentry is off.
"""

from __future__ import annotations

import errno as E
import json
import socket

from zentry.bus.errors import ConfigError, SystemFailure, Unsupported

from .abi.libseccomp import pyseccomp
from .abi.seccomp import FILTER_FLAGS, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD
from .abi.syscalls import NUMBERS
from .filter import Cond, LoadedProgram, Policy, Rule, compile_policy

#: actions; None = takes an errno (ERRNO/TRACE)
_ACTIONS: dict[str, int | None] = {
    "SCMP_ACT_KILL": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": pyseccomp.TRAP,
    "SCMP_ACT_ERRNO": None,
    "SCMP_ACT_TRACE": None,
    "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
    "SCMP_ACT_LOG": pyseccomp.LOG,
    "SCMP_ACT_NOTIFY": pyseccomp.NOTIFY,
}
_OPERATORS = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}
#: architectures this host's filter can carry; the others are accepted and
#: ignored (a profile lists every arch it was written for, as runc does)
_ARCHES = {"SCMP_ARCH_X86_64": pyseccomp.Arch.X86_64}
_KNOWN_ARCHES = {
    "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32", "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC",
    "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64", "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K",
    "SCMP_ARCH_SH", "SCMP_ARCH_SHEB",
}


def supported() -> dict:
    """The seccomp part of ``zentry features`` (features-linux.md)."""
    return {
        "enabled": True,
        "actions": sorted(_ACTIONS),
        "operators": sorted(_OPERATORS),
        "archs": sorted(_ARCHES),
        "knownFlags": sorted(FILTER_FLAGS),
        "supportedFlags": sorted(FILTER_FLAGS),
    }


def _action(name: object, errno_ret: object, where: str) -> int:
    if name not in _ACTIONS:
        raise ConfigError(f"{where}: unknown seccomp action {name!r}")
    value = _ACTIONS[name]
    if value is None:
        if errno_ret is None:
            errno_ret = E.EPERM
        if not isinstance(errno_ret, int) or isinstance(errno_ret, bool) or not 0 <= errno_ret <= 0xFFFF:
            raise ConfigError(f"{where}: errnoRet {errno_ret!r} is not an errno")
        return pyseccomp.ERRNO(errno_ret) if name == "SCMP_ACT_ERRNO" else pyseccomp.TRACE(errno_ret)
    if errno_ret is not None:
        raise ConfigError(f"{where}: action {name} does not take an errno (errnoRet {errno_ret})")
    return value


def _u64(v: object, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
        raise ConfigError(f"{where}: {v!r} is not a uint64")
    return v


def uses_notify(profile: dict) -> bool:
    """Whether the profile sends anything to a seccomp agent."""
    return profile.get("defaultAction") == "SCMP_ACT_NOTIFY" or any(
        s.get("action") == "SCMP_ACT_NOTIFY" for s in profile.get("syscalls") or [] if isinstance(s, dict)
    )


def translate(profile: dict, *, stacked: bool = True) -> Policy:
    """The Policy of an OCI ``linux.seccomp`` object; ConfigError/Unsupported when it is invalid.

    ``stacked``: the filter goes under the sentry's listener filter, so
    SCMP_ACT_NOTIFY is refused (one listener per filter chain).
    """
    if not isinstance(profile, dict):
        raise ConfigError("linux.seccomp must be an object")
    default = _action(profile.get("defaultAction"), profile.get("defaultErrnoRet"), "linux.seccomp.defaultAction")
    arches = profile.get("architectures") or []
    if not isinstance(arches, list):
        raise ConfigError("linux.seccomp.architectures must be an array")
    for a in arches:
        if a not in _KNOWN_ARCHES:
            raise ConfigError(f"linux.seccomp.architectures: unknown architecture {a!r}")
    if arches and "SCMP_ARCH_X86_64" not in arches:
        raise Unsupported(f"linux.seccomp.architectures {arches} does not include SCMP_ARCH_X86_64, the only ABI zentry runs")
    flags = 0
    for f in profile.get("flags") or []:
        if f not in FILTER_FLAGS:
            raise ConfigError(f"linux.seccomp.flags: unknown flag {f!r}")
        flags |= FILTER_FLAGS[f]
    if profile.get("listenerMetadata") and not profile.get("listenerPath"):
        raise ConfigError("linux.seccomp.listenerMetadata is set without listenerPath")
    notify = uses_notify(profile)
    if notify:
        if stacked:
            raise Unsupported(
                "linux.seccomp uses SCMP_ACT_NOTIFY: the kernel allows one seccomp listener per process "
                "and zentry's sentry holds it (EBUSY); run this container without the sentry"
            )
        if not profile.get("listenerPath"):
            raise ConfigError("linux.seccomp uses SCMP_ACT_NOTIFY without listenerPath")
        flags |= SECCOMP_FILTER_FLAG_NEW_LISTENER
    rules: list[Rule] = []
    for i, entry in enumerate(profile.get("syscalls") or []):
        where = f"linux.seccomp.syscalls[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be an object")
        names = entry.get("names")
        if not isinstance(names, list) or not names:
            raise ConfigError(f"{where}.names must be a non-empty array")
        action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action")
        conds = []
        for j, arg in enumerate(entry.get("args") or []):
            aw = f"{where}.args[{j}]"
            if not isinstance(arg, dict):
                raise ConfigError(f"{aw} must be an object")
            index = arg.get("index")
            if not isinstance(index, int) or not 0 <= index <= 5:
                raise ConfigError(f"{aw}.index {index!r} must be 0..5")
            if arg.get("op") not in _OPERATORS:
                raise ConfigError(f"{aw}.op: unknown operator {arg.get('op')!r}")
            conds.append(Cond(index, _OPERATORS[arg["op"]], _u64(arg.get("value"), f"{aw}.value"), _u64(arg.get("valueTwo", 0), f"{aw}.valueTwo")))
        if action == default:
            continue  # libseccomp refuses rules that repeat the default; they change nothing
        for name in names:
            nr = NUMBERS.get(name)
            if nr is None:
                # runc skips names the host does not know (profiles span kernels)
                continue
            rules.append(Rule(nr, action, tuple(conds)))
    return Policy(default=default, rules=rules, flags=flags)


def compile_profile(profile: dict, *, stacked: bool = True) -> bytes:
    """The BPF program of an OCI profile."""
    return compile_policy(translate(profile, stacked=stacked))


def install_alone(profile: dict, *, no_new_privs: bool) -> int:
    """Load only the OCI filter (no sentry); its listener fd if it uses NOTIFY, else -1."""
    from .abi import libc

    policy = translate(profile, stacked=False)
    prog = LoadedProgram(compile_policy(policy))
    if no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    fd = prog.load(policy.flags)
    return fd if policy.flags & SECCOMP_FILTER_FLAG_NEW_LISTENER else -1


def send_to_agent(listener_path: str, listener_fd: int, state: dict, *, pid: int, metadata: str | None = None, oci_version: str = "1.2.0") -> None:
    """Send the container process state and the seccomp fd to a seccomp agent.

    One connection, one JSON document, the fd in SCM_RIGHTS of the first (only)
    sendmsg, then close — config-linux.md, "The Container Process State".
    """
    doc = {"ociVersion": oci_version, "fds": ["seccompFd"], "pid": pid, "state": state}
    if metadata:
        doc["metadata"] = metadata
    payload = json.dumps(doc).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(listener_path)
            sent = socket.send_fds(s, [payload], [listener_fd])
            if sent < len(payload):
                s.sendall(payload[sent:])
    except OSError as err:
        raise SystemFailure(f"cannot send the seccomp listener to {listener_path!r}: {err}") from err


def receive_from_agent_socket(conn: socket.socket, maxlen: int = 1 << 20) -> tuple[dict, list[int]]:
    """The agent side of ``send_to_agent`` (for tests and tools): (state, fds)."""
    data, fds, _, _ = socket.recv_fds(conn, maxlen, 4)
    chunks = [data]
    while True:
        more = conn.recv(maxlen)
        if not more:
            break
        chunks.append(more)
    return json.loads(b"".join(chunks)), fds

