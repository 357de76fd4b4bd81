"""The kernel opens files as the tracee: each program's answers equal the kernel's own without any filter.

Every test runs the same program under a Sentry (the C fast path and the
Python loop, ``sentry`` fixture of test_sentry_behaviour) and on the host, and
compares. Each of these failed while the sentry re-did opens with its own
identity (umask ignored, magic links refused, O_TMPFILE files not linkable,
openat2's resolve flags replaced, /dev/tty writes waiting for ever).
"""

from __future__ import annotations

import os
import sys

from functools import partial

import pytest

from zentry.sentry import harness
from zentry.sentry.kernel import ContainerView

from test_sentry_behaviour import host, sentry  # noqa: F401  (the fixture: both loops)

# Opens are trapped only in containers created with strace on: these tests run under that filter
# (the open family observed and continued), the one the sentry still serves opens for.
run = partial(harness.run, trace=True)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading a seccomp listener for another process and reading its memory needs root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
]

PY = sys.executable


def same_as_host(sentry, argv, **kw):  # noqa: F811
    r = run(argv, sentry=sentry, **kw)
    h = host(argv)
    assert (r.returncode, r.stdout, r.stderr) == (h.returncode, h.stdout, h.stderr)
    return r


def test_new_files_get_the_tracees_umask(sentry, tmp_path):  # noqa: F811
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    script = "cd $1 && umask 077 && echo > private && umask 002 && echo > shared && stat -c %a private shared"
    r = run(["/bin/busybox", "sh", "-c", script, "sh", str(tmp_path / "a")], sentry=sentry)
    h = host(["/bin/busybox", "sh", "-c", script, "sh", str(tmp_path / "b")])
    assert r.stdout == h.stdout == b"600\n664\n", r.stderr


def test_writing_to_own_fds_through_procfs_and_a_dev_stdout_symlink(sentry, tmp_path):  # noqa: F811
    link = tmp_path / "log"
    os.symlink("/dev/stdout", link)
    r = same_as_host(sentry, ["/bin/busybox", "sh", "-c", f'echo a > /proc/$$/fd/1; echo b > /proc/self/fd/1; echo c > {link}; echo d > /dev/stderr'])
    assert (r.stdout, r.stderr) == (b"a\nb\nc\n", b"d\n")


def test_an_o_tmpfile_is_linked_into_place_with_linkat_empty_path(sentry, tmp_path):  # noqa: F811
    code = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
d = {str(tmp_path)!r} + "/" + os.environ["SUB"]
os.mkdir(d)
fd = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o640)
os.write(fd, b"tmp-data")
r = libc.linkat(fd, b"", -100, (d + "/named").encode(), 0x1000)  # AT_EMPTY_PATH
print(r, ctypes.get_errno() if r else 0, open(d + "/named").read(), oct(os.stat(d + "/named").st_mode & 0o777))
"""
    r = run([PY, "-c", code], sentry=sentry, env={**os.environ, "SUB": "s"})
    h = host([PY, "-c", code.replace('os.environ["SUB"]', '"h"')])
    assert r.stdout == h.stdout == b"0 0 tmp-data 0o640\n", r.stderr


OPENAT2 = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
base = sys.argv[1]
os.makedirs(base + "/root/etc", exist_ok=True)
open(base + "/root/etc/inside", "w").write("INSIDE")
open(base + "/outside", "w").write("OUTSIDE")
for name, target in (("up", "../outside"), ("abs", "/etc/inside")):
    if not os.path.lexists(base + "/root/" + name):
        os.symlink(target, base + "/root/" + name)
d = os.open(base + "/root", os.O_PATH | os.O_DIRECTORY)
for resolve, path in ((0x08, "etc/inside"), (0x08, "up"), (0x08, "../outside"), (0x08, "abs"),
                      (0x10, "abs"), (0x10, "up"), (0x10, "/etc/inside"), (0x10, "etc/../../outside")):
    how = struct.pack("=QQQ", os.O_RDONLY | os.O_CLOEXEC, 0, resolve)
    fd = libc.syscall(437, d, path.encode(), how, len(how))
    e = ctypes.get_errno()
    print(resolve, path, os.read(fd, 20).decode() if fd >= 0 else os.strerror(e))
"""


def test_openat2_resolve_beneath_and_in_root_with_a_dirfd(sentry, tmp_path):  # noqa: F811
    for sub in ("s", "h"):
        (tmp_path / sub).mkdir()
    r = run([PY, "-c", OPENAT2, str(tmp_path / "s")], sentry=sentry)
    h = host([PY, "-c", OPENAT2, str(tmp_path / "h")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == h.stdout
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "8 etc/inside INSIDE" and lines[4] == "16 abs INSIDE"
    assert "OUTSIDE" not in r.stdout.decode()


def test_writing_to_dev_tty_without_a_terminal_fails_at_once(sentry):  # noqa: F811
    code = "import os, time\nos.setsid()\nt = time.monotonic()\ntry:\n  os.open('/dev/tty', os.O_WRONLY)\nexcept OSError as e:\n  print(e.errno, time.monotonic() - t < 2)"
    r = run([PY, "-c", code], sentry=sentry, timeout=20)
    h = host([PY, "-c", code])
    assert r.stdout == h.stdout == b"%d True\n" % 6, r.stderr  # ENXIO


def test_procfs_files_are_the_kernels(sentry, tmp_path):  # noqa: F811
    same_as_host(sentry, ["/bin/busybox", "sh", "-c", "echo 1 > /proc/meminfo; echo $?; cat /proc/self/stat | cut -d' ' -f2; cat /proc/version | cut -c1-5"])

