"""The syscall table and its compilation to BPF (no root needed)."""

import errno
import struct

import pyseccomp
import pytest

from zentry.sentry import filter as F
from zentry.sentry.abi.syscalls import SYSCALLS
from zentry.sentry.handlers import HANDLERS
from zentry.sentry.table import TABLE, Action, CLONE_NS_FLAGS

REFUSED_EPERM = """init_module finit_module delete_module kexec_load kexec_file_load bpf perf_event_open
ptrace process_vm_readv process_vm_writev keyctl add_key request_key open_by_handle_at userfaultfd
io_uring_setup io_uring_enter io_uring_register mount umount2 pivot_root move_mount open_tree fsopen
fsconfig fsmount fspick mount_setattr reboot swapon swapoff settimeofday clock_settime adjtimex
clock_adjtime acct syslog iopl ioperm setns unshare""".split()


def test_every_syscall_number_has_a_row_with_a_note():
    assert {r.nr for r in TABLE} == set(SYSCALLS)
    for row in TABLE:
        assert row.name == SYSCALLS[row.nr]
        assert row.disposition.note, row.name


@pytest.mark.parametrize("sname", REFUSED_EPERM)
def test_dangerous_calls_are_refused_with_eperm(sname):
    d = TABLE[sname].disposition
    assert (d.action, d.errno, d.when) == (Action.ERRNO, errno.EPERM, ())


def test_trapped_calls_and_their_handlers():
    assert TABLE.trapped() == {
        2: "fs.open", 257: "fs.openat", 437: "fs.openat2", 85: "fs.creat", 63: "emulate.uname", 99: "emulate.sysinfo",
    }
    for handler in TABLE.trapped().values():
        assert handler in HANDLERS


@pytest.mark.parametrize("sname", "read write mmap futex clock_gettime epoll_wait getpid execve execveat setuid setgid setgroups capset prctl".split())
def test_everyday_and_credential_calls_are_allowed(sname):
    assert TABLE[sname].disposition.action is Action.ALLOW


def test_clone_is_refused_only_with_namespace_flags_and_clone3_is_enosys():
    d = TABLE["clone"].disposition
    assert d.action is Action.ERRNO and d.errno == errno.EPERM
    assert {c.mask for c in d.when} == set(CLONE_NS_FLAGS.values())
    assert TABLE["clone3"].disposition.errno == errno.ENOSYS


def _run_bpf(prog: bytes, nr: int, args=(0,) * 6, arch=0xC000003E) -> int:
    """A tiny classic-BPF interpreter, enough for libseccomp's output: the verdict for one call."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *args)
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    for _ in range(10000):
        code, jt, jf, k = insns[pc]
        cls = code & 0x07
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("=I", data, k)[0]
        elif code == 0x06:  # ret k
            return k
        elif code == 0x54:  # and k
            acc &= k
        elif cls == 0x05:  # jumps
            op = code & 0xF0
            if op == 0x00:
                pc += k
            else:
                cond = {0x10: acc == k, 0x20: acc > k, 0x30: acc >= k, 0x40: bool(acc & k)}[op]
                pc += jt if cond else jf
        elif code == 0x00:  # ld k
            acc = k
        else:
            raise AssertionError(f"opcode {code:#x} not interpreted")
        pc += 1
    raise AssertionError("runaway program")


@pytest.fixture(scope="module")
def prog():
    return F.zentry_bpf()


def test_policy_compiles_to_a_small_program(prog):
    assert len(prog) % 8 == 0 and 10 < len(prog) // 8 < 400


def test_compiled_verdicts(prog):
    notify, allow = pyseccomp.NOTIFY, pyseccomp.ALLOW
    assert _run_bpf(prog, 257) == allow  # openat: the kernel's (trapped only with strace at create)
    assert _run_bpf(F.zentry_bpf(trace=True), 257) == notify
    assert _run_bpf(prog, 63) == notify  # uname
    assert _run_bpf(prog, 39) == allow  # getpid
    assert _run_bpf(prog, 321) == pyseccomp.ERRNO(errno.EPERM)  # bpf
    assert _run_bpf(prog, 435) == pyseccomp.ERRNO(errno.ENOSYS)  # clone3
    assert _run_bpf(prog, 56, (0x01200011, 0, 0, 0, 0, 0)) == allow  # glibc fork
    assert _run_bpf(prog, 56, (0x003D0F00, 0, 0, 0, 0, 0)) == allow  # pthread_create
    for flag in CLONE_NS_FLAGS.values():
        assert _run_bpf(prog, 56, (0x11 | flag, 0, 0, 0, 0, 0)) == pyseccomp.ERRNO(errno.EPERM)
    assert _run_bpf(prog, 16, (1, 0x5412, 0, 0, 0, 0)) == pyseccomp.ERRNO(errno.EPERM)  # TIOCSTI
    assert _run_bpf(prog, 16, (1, 0x5401, 0, 0, 0, 0)) == allow  # TCGETS


def test_personality_and_socket_are_refused_where_dockers_default_profile_refuses_them(prog):
    eperm, allow = pyseccomp.ERRNO(errno.EPERM), pyseccomp.ALLOW
    for ok in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):  # PER_LINUX, PER_LINUX32, UNAME26, both, query
        assert _run_bpf(prog, 135, (ok, 0, 0, 0, 0, 0)) == allow, hex(ok)
    for bad in (0x0400000, 0x0040000, 0x0400008, 0x7FFFFFFF, 0xFFFFFFFE, 0x80000000, 0x1):  # READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE…
        assert _run_bpf(prog, 135, (bad, 0, 0, 0, 0, 0)) == eperm, hex(bad)
    assert _run_bpf(prog, 41, (40, 1, 0, 0, 0, 0)) == eperm  # socket(AF_VSOCK)
    for family in (1, 2, 10, 16, 17):  # unix, inet, inet6, netlink, packet
        assert _run_bpf(prog, 41, (family, 1, 0, 0, 0, 0)) == allow
    for obsolete in (136, 139):  # ustat, sysfs
        assert _run_bpf(prog, obsolete) == eperm


def test_other_architectures_and_x32_are_killed(prog):
    kill = 0x80000000
    assert _run_bpf(prog, 39, arch=0x40000003) == kill  # i386
    assert _run_bpf(prog, 0x40000000 | 39) == kill  # x32 getpid


def test_compile_errors_name_the_rule():
    bad = F.Policy(default=pyseccomp.ALLOW, rules=[F.Rule(39, pyseccomp.ERRNO(1), (F.Cond(7, pyseccomp.EQ, 1),))])
    with pytest.raises(F.FilterError, match="cannot add rule"):
        F.compile_policy(bad)
