"""Compiles seccomp policies to BPF (one compiler: libseccomp via pyseccomp) and loads them.

Two filters are stacked on a container process:

1. the OCI profile (``linux.seccomp`` of config.json), translated by
   ``oci.translate`` to a ``Policy`` and loaded first, without a listener;
2. zentry's own filter, from the syscall table (``table.TABLE``), loaded last
   with ``SECCOMP_FILTER_FLAG_NEW_LISTENER | WAIT_KILLABLE_RECV``: its
   listener fd goes to the sentry.

The kernel runs every filter and keeps the strictest verdict (KILL > TRAP >
ERRNO > USER_NOTIF > TRACE > LOG > ALLOW), so an OCI ERRNO beats a zentry
TRAP and a zentry TRAP beats an OCI ALLOW.

Both filters reject any architecture but x86_64, and libseccomp's x86_64
prologue also sends x32 numbers (``nr >= 0x40000000``) to the bad-arch action
(KILL_PROCESS): a 32-bit or x32 syscall would read another table.
"""

from __future__ import annotations

import ctypes
import os

from zentry.bus.value import Value

from .abi import libc
from .abi.libseccomp import pyseccomp
from .abi.seccomp import (
    SECCOMP_FILTER_FLAG_NEW_LISTENER,
    SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_SET_MODE_FILTER,
    SockFilter,
    SockFprog,
)
from .table import TABLE, Action, SyscallTable

#: flags zentry's own filter is loaded with
ZENTRY_FILTER_FLAGS = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV


class Cond(Value):
    """One libseccomp argument comparison (``op`` is a ``pyseccomp`` operator)."""

    __slots__ = ("index", "op", "value", "value_two")

    def __init__(self, index: int, op: int, value: int, value_two: int = 0) -> None:
        self.index = index
        self.op = op
        self.value = value
        self.value_two = value_two


class Rule(Value):
    """``action`` (a SECCOMP_RET_* value) for ``nr`` when all ``conds`` hold."""

    __slots__ = ("nr", "action", "conds")

    def __init__(self, nr: int, action: int, conds: tuple[Cond, ...] = ()) -> None:
        self.nr = nr
        self.action = action
        self.conds = conds


class Policy(Value):
    """What a filter should do, before compilation: default action, rules, arches.

    ``extra_arches``: AUDIT_ARCH-style libseccomp arch tokens besides the
    native x86_64; ``flags``: seccomp(2) flags to load with.
    """

    __slots__ = ("default", "rules", "extra_arches", "flags")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, default: int, rules: list[Rule] | None = None, extra_arches: tuple[int, ...] = (), flags: int = 0) -> None:
        self.default = default
        self.rules = [] if rules is None else rules
        self.extra_arches = extra_arches
        self.flags = flags


def policy_from_table(table: SyscallTable = TABLE, *, trace: bool = False) -> Policy:
    """zentry's policy: default ALLOW, every non-ALLOW row becomes rules; TRACE rows
    (the open family) are trapped only with ``trace`` (a container created with strace on)."""
    rules: list[Rule] = []
    for row in table:
        d = row.disposition
        if d.action is Action.ALLOW or (d.action is Action.TRACE and not trace):
            continue
        if d.action in (Action.TRAP, Action.TRACE):
            action = pyseccomp.NOTIFY
        elif d.action is Action.ERRNO:
            action = pyseccomp.ERRNO(d.errno)
        else:
            action = SECCOMP_RET_KILL_PROCESS
        if d.when:
            # one rule per condition: libseccomp ORs the rules of a syscall
            for c in d.when:
                rules.append(Rule(row.nr, action, (Cond(c.index, pyseccomp.MASKED_EQ, c.mask, c.value),)))
        else:
            rules.append(Rule(row.nr, action))
    return Policy(default=pyseccomp.ALLOW, rules=rules, flags=ZENTRY_FILTER_FLAGS)


class FilterError(Exception):
    """A policy libseccomp refuses (the message names the rule)."""


def compile_policy(policy: Policy) -> bytes:
    """The BPF program (a sequence of 8-byte sock_filter) for a policy."""
    flt = pyseccomp.SyscallFilter(policy.default)
    try:
        flt.set_attr(pyseccomp.Attr.ACT_BADARCH, SECCOMP_RET_KILL_PROCESS)
        # a binary tree of syscall numbers: an allowed call walks ~log2(rules) jumps, not every rule
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
        for arch in policy.extra_arches:
            if not flt.exist_arch(arch):
                flt.add_arch(arch)
        for rule in policy.rules:
            args = [pyseccomp.Arg(c.index, c.op, c.value, c.value_two) for c in rule.conds]
            try:
                flt.add_rule(rule.action, rule.nr, *args)
            except OSError as err:
                raise FilterError(f"cannot add rule {rule}: {err}") from err
        fd = os.memfd_create("zentry-bpf", os.MFD_CLOEXEC)
        try:
            with open(fd, "w+b", closefd=False) as f:
                flt.export_bpf(f)
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        del flt


class LoadedProgram:
    """A BPF program held in ctypes memory, ready for seccomp(2).

    Built before the filter is loaded, so that loading does no allocation
    that could need a trapped syscall (pitfall 7).
    """

    def __init__(self, bpf: bytes) -> None:
        if len(bpf) % 8 or not bpf:
            raise FilterError(f"BPF program of {len(bpf)} bytes is not a list of sock_filter")
        n = len(bpf) // 8
        self._insns = (SockFilter * n).from_buffer_copy(bpf)
        self.fprog = SockFprog(n, ctypes.cast(self._insns, ctypes.POINTER(SockFilter)))

    def load(self, flags: int) -> int:
        """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog); the listener fd with NEW_LISTENER, else 0."""
        res = libc.libc().syscall(
            ctypes.c_long(libc.SYS_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(flags), ctypes.byref(self.fprog)
        )
        if res < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"seccomp(SET_MODE_FILTER, {flags:#x}): {os.strerror(err)}")
        return res


_zentry_bpf: bytes | None = None
_traced_bpf: bytes | None = None


def zentry_bpf(*, trace: bool = False) -> bytes:
    """zentry's compiled filter (cached: the table is static); ``trace``: the one that traps opens too."""
    global _zentry_bpf, _traced_bpf
    if trace:
        if _traced_bpf is None:
            _traced_bpf = compile_policy(policy_from_table(TABLE, trace=True))
        return _traced_bpf
    if _zentry_bpf is None:
        _zentry_bpf = compile_policy(policy_from_table(TABLE))
    return _zentry_bpf


def install(oci_seccomp: dict | None, *, no_new_privs: bool, trace: bool = False) -> int:
    """Load the OCI profile's filter (if any), then zentry's; return zentry's listener fd.

    Called in the container init: single-threaded, forked, still root, after
    namespaces and pivot_root, before dropping privileges and ``execve``.
    Order:

    1. compile both programs (libseccomp allocates and may open files: before
       any filter is loaded);
    2. ``prctl(PR_SET_NO_NEW_PRIVS)`` if asked (the OCI ``noNewPrivileges``;
       as root with CAP_SYS_ADMIN the filters load without it);
    3. load the OCI filter (its own flags, no listener; see ``oci.translate``);
    4. load zentry's filter with NEW_LISTENER|WAIT_KILLABLE_RECV — from here
       on ``open``/``uname``/… block until the sentry answers, so the caller
       must make no trapped call before the listener fd has been sent
       (``socket.send_fds`` uses only sendmsg, which is allowed) and closed.

    ``trace``: the container was created with strace on: its opens are trapped
    (observed and continued), which a filter loaded without it cannot start
    doing later (a loaded filter never changes).

    An OCI profile that uses SCMP_ACT_NOTIFY is refused by ``oci.translate``
    when stacked under the sentry: the kernel allows one listener per filter
    chain (a second NEW_LISTENER fails with EBUSY).
    """
    oci_prog = None
    oci_flags = 0
    if oci_seccomp:
        translated = oci.translate(oci_seccomp, stacked=True)
        oci_prog = LoadedProgram(compile_policy(translated))
        oci_flags = translated.flags
    ours = LoadedProgram(zentry_bpf(trace=trace))
    if no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    if oci_prog is not None:
        oci_prog.load(oci_flags)
    return ours.load(ZENTRY_FILTER_FLAGS)


# At the bottom: oci builds on the names above. Imported here, not inside
# install(), because install() runs after pivot_root, where zentry's files
# are no longer reachable.
from . import oci  # noqa: E402
