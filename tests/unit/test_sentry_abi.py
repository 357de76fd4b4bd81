"""The sentry's kernel ABI: struct sizes, ioctl numbers, and the x86_64 syscall table vs libseccomp."""

import ctypes

import pyseccomp
import pytest

from zentry.sentry.abi import seccomp as S
from zentry.sentry.abi.syscalls import MAX_NR, NUMBERS, SYSCALLS, name, number


@pytest.mark.parametrize(
    "cls, fmt, size",
    [
        (S.SeccompData, None, 64),
        (S.SeccompNotif, S.NOTIF, 80),
        (S.SeccompNotifResp, S.RESP, 24),
        (S.SeccompNotifAddfd, S.ADDFD, 24),
        (S.SockFilter, None, 8),
        (S.SockFprog, None, 16),
        (S.OpenHow, S.OPEN_HOW, 24),
        (S.Utsname, S.UTSNAME, 390),
        (S.Sysinfo, S.SYSINFO, 112),
        (S.SeccompNotifSizes, None, 6),
    ],
)
def test_struct_sizes_match_the_kernel(cls, fmt, size):
    assert ctypes.sizeof(cls) == size
    if fmt is not None:
        assert fmt.size == size


def _ioc(direction, nr, size):
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


def test_ioctl_numbers_are_derived_from_the_struct_sizes():
    rw, w = 3, 1
    assert S.SECCOMP_IOCTL_NOTIF_RECV == _ioc(rw, 0, ctypes.sizeof(S.SeccompNotif))
    assert S.SECCOMP_IOCTL_NOTIF_SEND == _ioc(rw, 1, ctypes.sizeof(S.SeccompNotifResp))
    assert S.SECCOMP_IOCTL_NOTIF_ID_VALID == _ioc(w, 2, 8)
    assert S.SECCOMP_IOCTL_NOTIF_ADDFD == _ioc(w, 3, ctypes.sizeof(S.SeccompNotifAddfd))
    assert S.SECCOMP_IOCTL_NOTIF_SET_FLAGS == _ioc(w, 4, 8)


def test_notif_layout_matches_ctypes():
    n = S.SeccompNotif(id=7, pid=42, flags=0)
    n.data.nr = 257
    n.data.arch = S.AUDIT_ARCH_X86_64
    n.data.args[1] = 0xDEADBEEF
    fields = S.NOTIF.unpack(bytes(n))
    assert fields[:5] == (7, 42, 0, 257, S.AUDIT_ARCH_X86_64)
    assert fields[7] == 0xDEADBEEF


def test_flags_values():
    assert S.SECCOMP_FILTER_FLAG_NEW_LISTENER == 8
    assert S.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV == 32
    assert S.SECCOMP_ADDFD_FLAG_SEND == 2
    assert S.AUDIT_ARCH_X86_64 == pyseccomp.Arch.X86_64 | 0  # libseccomp's token is the audit arch


def test_every_name_libseccomp_knows_has_our_number():
    arch = pyseccomp.Arch.X86_64
    checked = 0
    for nr, sname in SYSCALLS.items():
        theirs = pyseccomp.resolve_syscall(arch, sname)
        if theirs < 0:
            continue  # newer than this libseccomp (2.5.4 stops at 450)
        assert theirs == nr, f"{sname}: ours {nr}, libseccomp {theirs}"
        checked += 1
    assert checked >= 360


def test_every_number_libseccomp_knows_is_in_our_table():
    arch = pyseccomp.Arch.X86_64
    for nr in range(0, 451):
        try:
            theirs = pyseccomp.resolve_syscall(arch, nr)
        except ValueError:
            continue
        assert SYSCALLS.get(nr) == theirs.decode(), nr


def test_table_shape():
    assert MAX_NR >= 462
    assert not any(336 <= nr < 424 for nr in SYSCALLS)
    assert len(NUMBERS) == len(SYSCALLS)
    assert number("openat") == 257 and name(257) == "openat" and name(400) == "syscall_400"
    with pytest.raises(KeyError, match="nosuchcall"):
        number("nosuchcall")


def test_pyseccomp_import_skips_ctypes_util():
    # ctypes.util (subprocess, tempfile, locale: ~6 ms) is not imported on the
    # sandbox's path, and ldconfig is never run; pyseccomp still works.
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from zentry.sentry.abi.libseccomp import pyseccomp, find_library\n"
        "f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)\n"
        "f.add_rule(pyseccomp.ERRNO(1), 'getpid')\n"
        "print(sorted(m for m in ('ctypes.util', 'subprocess') if m in sys.modules), find_library('m'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "libm.so.6"]
