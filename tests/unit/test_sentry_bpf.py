"""zentry's compiled filter, run instruction by instruction in a small classic-BPF interpreter.

What it checks is what makes an allowed syscall cheap (bench/syscalls.py,
"getpid, allowed in BPF"): since Linux 5.11 the kernel keeps, per filter, a
bitmap of the syscalls the filter allows whatever their arguments (it finds
them by running the program with only ``nr`` and ``arch`` known) and skips
the program for those. So every unconditionally allowed row must be decided
without loading an argument or the instruction pointer; on older kernels the
binary tree (``CTL_OPTIMIZE=2``) keeps the walk short.
"""

from __future__ import annotations

import errno
import struct

import pytest

from zentry.sentry.abi.seccomp import (
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SECCOMP_RET_USER_NOTIF,
)
from zentry.sentry.filter import zentry_bpf
from zentry.sentry.table import TABLE, Action

#: struct seccomp_data offsets: nr, arch, instruction_pointer, args[6]
OFF_NR, OFF_ARCH = 0, 4


class NeedsMore(Exception):
    """The program loaded a field other than nr/arch: the kernel's cache cannot decide this call."""


def run(prog: list[tuple[int, int, int, int]], nr: int, arch: int = AUDIT_ARCH_X86_64, args: tuple[int, ...] | None = None):
    """(return value, instructions executed). ``args=None``: only nr and arch are known."""
    pc = a = steps = 0
    while True:
        code, jt, jf, k = prog[pc]
        steps += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            if k == OFF_NR:
                a = nr
            elif k == OFF_ARCH:
                a = arch
            elif args is not None and 16 <= k < 64:
                i, hi = divmod(k - 16, 8)
                a = (args[i] >> (32 if hi else 0)) & 0xFFFFFFFF
            else:
                raise NeedsMore(f"load of offset {k} at {pc}")
            pc += 1
        elif code == 0x05:  # BPF_JMP | BPF_JA
            pc += 1 + k
        elif code & 0x07 == 0x05:  # BPF_JMP | op | BPF_K
            taken = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}[code & 0xF0]
            pc += 1 + (jt if taken else jf)
        elif code == 0x06:  # BPF_RET | BPF_K
            return k, steps
        elif code == 0x54:  # BPF_ALU | BPF_AND | BPF_K
            a &= k
            pc += 1
        else:
            raise AssertionError(f"instruction {code:#x} at {pc} is not modelled")


@pytest.fixture(scope="module")
def prog():
    raw = zentry_bpf()
    return [struct.unpack_from("=HBBI", raw, i) for i in range(0, len(raw), 8)]


def test_every_unconditional_row_is_decided_on_the_syscall_number_alone(prog):
    for row in TABLE:
        d = row.disposition
        if d.when:
            continue
        ret, _ = run(prog, row.nr)  # NeedsMore here would make the kernel run the program on every call
        want = {
            Action.ALLOW: SECCOMP_RET_ALLOW,
            Action.TRAP: SECCOMP_RET_USER_NOTIF,
            Action.TRACE: SECCOMP_RET_ALLOW,  # trapped only in the filter of a container created with strace on
            Action.ERRNO: SECCOMP_RET_ERRNO | d.errno,
            Action.KILL: SECCOMP_RET_KILL_PROCESS,
        }[d.action]
        assert ret == want, row


def test_the_open_family_is_trapped_only_in_the_traced_program():
    traced = [struct.unpack_from("=HBBI", raw, i) for raw in [zentry_bpf(trace=True)] for i in range(0, len(raw), 8)]
    for row in TABLE:
        if row.disposition.action is Action.TRACE:
            assert run(traced, row.nr)[0] == SECCOMP_RET_USER_NOTIF, row
    assert {r.name for r in TABLE.by_action(Action.TRACE)} == {"open", "openat", "openat2", "creat"}
    assert run(traced, TABLE["getpid"].nr)[0] == SECCOMP_RET_ALLOW


def test_conditional_rows_look_at_their_arguments(prog):
    clone = TABLE["clone"].nr
    with pytest.raises(NeedsMore):
        run(prog, clone)
    assert run(prog, clone, args=(0x11, 0, 0, 0, 0, 0))[0] == SECCOMP_RET_ALLOW  # fork
    assert run(prog, clone, args=(0x10000000 | 0x11, 0, 0, 0, 0, 0))[0] == SECCOMP_RET_ERRNO | errno.EPERM  # CLONE_NEWUSER


def test_hot_allowed_syscalls_walk_a_short_path(prog):
    """Without the kernel's cache (before 5.11) the program runs: a binary tree, not a list of ~100 rules."""
    for name in ("getpid", "read", "write", "futex", "clock_gettime", "epoll_wait", "mmap", "close"):
        ret, steps = run(prog, TABLE[name].nr)
        assert ret == SECCOMP_RET_ALLOW
        assert steps <= 16, (name, steps)


def test_other_architectures_and_x32_are_killed(prog):
    assert run(prog, TABLE["getpid"].nr, arch=AUDIT_ARCH_I386)[0] == SECCOMP_RET_KILL_PROCESS
    assert run(prog, 0x40000000 | TABLE["getpid"].nr)[0] == SECCOMP_RET_KILL_PROCESS
