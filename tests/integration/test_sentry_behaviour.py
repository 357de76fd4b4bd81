"""The sentry serving real programs: results compared with the same program run on the host.

Each test forks a helper that loads zentry's filter and hands the listener to a
Sentry running in a thread of the test process (``zentry.sentry.harness``, the
container-init sequence), then execs busybox, python3 or a C program compiled
here with gcc.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

from functools import partial

import pytest

from zentry.sentry import harness
from zentry.sentry.kernel import ContainerView, Sentry, native_available

# Opens are trapped only in containers created with strace on: these tests run under that filter
# (the open family observed and continued), the one the sentry still serves opens for.
run = partial(harness.run, trace=True)
spawn = partial(harness.spawn, trace=True)


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="loading a seccomp listener for another process and reading its memory needs root"),
    pytest.mark.skipif(not shutil.which("gcc"), reason="the C test programs need gcc"),
]

BUSYBOX = "/bin/busybox"
PY = sys.executable


def _children() -> set[int]:
    me = os.getpid()
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    out.add(int(d))
            except OSError:
                pass
    return out


@pytest.fixture(params=["native", "python"])
def sentry(request):
    """A Sentry with the C fast path and one with the pure-Python loop: every test runs on both."""
    if request.param == "native" and not native_available():
        pytest.skip("sentry/_fast.c not built (test_sentry_native.py fails for that)")
    before = _children()
    events: list[dict] = []
    fatal: list[tuple[str, BaseException]] = []
    s = Sentry(on_event=events.append, on_fatal=lambda cid, exc: fatal.append((cid, exc)), native=request.param == "native")
    s.events = events
    s.fatal = fatal
    s.start()
    yield s
    s.stop()
    assert not s.alive
    assert _children() - before == set(), "a test left a child process behind"


def cc(tmp_path, name: str, source: str, static: bool = False) -> str:
    src = tmp_path / f"{name}.c"
    src.write_text(textwrap.dedent(source))
    exe = tmp_path / name
    cmd = ["gcc", "-O1", "-pthread", "-o", str(exe), str(src)]
    if static:
        cmd.insert(1, "-static")
    subprocess.run(cmd, check=True)
    return str(exe)


def host(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=60)


def test_uname_names_zentry_and_the_container_hostname(sentry):
    r = run([BUSYBOX, "uname", "-a"], sentry=sentry, view=ContainerView("c1", "web-1"))
    assert r.returncode == 0, r.stderr
    assert b"zentry" in r.stdout and b"web-1" in r.stdout
    for flag in ("-s", "-r", "-m"):  # what stays the host's
        assert run([BUSYBOX, "uname", flag], sentry=sentry).stdout == host([BUSYBOX, "uname", flag]).stdout
    assert run([BUSYBOX, "uname", "-v"], sentry=sentry).stdout == b"#1 zentry sentry\n"
    assert sentry.stats()["trapped"]["uname"] >= 5


@pytest.mark.parametrize(
    "argv",
    [
        [BUSYBOX, "cat", "/etc/passwd", "/etc/hostname"],
        [BUSYBOX, "ls", "-la", "/etc/ssl"],
        [BUSYBOX, "sh", "-c", "cd /etc && cat ./hostname ../etc/passwd | wc -l && echo done"],
        [BUSYBOX, "find", "/usr/lib/python3.11/json", "-name", "*.py"],
        [PY, "-c", "import json, os; print(sorted(os.listdir('/etc'))[:20]); print(json.dumps({'a': 1}))"],
        [PY, "-c", "import sys; print(open('/etc/passwd').read().count(':'), file=sys.stderr)"],
    ],
)
def test_programs_read_the_same_files_as_on_the_host(sentry, argv):
    r = run(argv, sentry=sentry)
    h = host(argv)
    assert (r.returncode, r.stdout, r.stderr) == (h.returncode, h.stdout, h.stderr)
    assert sentry.stats()["continued"]["openat"] > 0  # observed, then opened by the kernel as the tracee


def test_blocking_fifo_opens_wait_for_the_other_end(sentry, tmp_path):
    # a FIFO open waits for its peer, in the kernel (the open is continued)
    script = """
import os, sys, time
base = sys.argv[1]
for name, first in (("w", "writer"), ("r", "reader")):
    path = os.path.join(base, name)
    os.mkfifo(path)
    pid = os.fork()
    if pid == 0:
        time.sleep(0.3)
        if first == "writer":
            print(open(path).read().strip(), flush=True)   # the late reader
        else:
            with open(path, "w") as f:                      # the late writer
                f.write("from-late-writer\\n")
        os._exit(0)
    if first == "writer":
        with open(path, "w") as f:                          # blocks until the reader opens
            f.write("from-early-writer\\n")
    else:
        print(open(path).read().strip(), flush=True)        # blocks until the writer came
    os.waitpid(pid, 0)
print("done")
"""
    for sub in ("sentry", "host"):
        (tmp_path / sub).mkdir()
    r = run([PY, "-c", script, str(tmp_path / "sentry")], sentry=sentry)
    h = host([PY, "-c", script, str(tmp_path / "host")])
    assert (r.returncode, r.stdout, r.stderr) == (h.returncode, h.stdout, h.stderr)
    assert r.stdout == b"from-early-writer\nfrom-late-writer\ndone\n"


def test_a_tracee_blocked_in_a_fifo_open_can_be_killed(sentry, tmp_path):
    fifo_path = tmp_path / "never"
    os.mkfifo(fifo_path)
    t = spawn([BUSYBOX, "cat", str(fifo_path)], sentry=sentry)
    time.sleep(0.3)
    os.kill(t.pid, signal.SIGKILL)
    assert t.wait(20).returncode == -signal.SIGKILL


def test_o_path_opens_and_what_they_are_used_for(sentry, tmp_path):
    # O_PATH opens, openat with an O_PATH dirfd and a reopen through /proc/self/fd: all the kernel's
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("through-o-path")
    script = f"""
import os, stat
d = os.open({str(tmp_path / "d")!r}, os.O_PATH | os.O_DIRECTORY)
f = os.open("f", os.O_PATH, dir_fd=d)
print(stat.S_ISREG(os.fstat(f).st_mode), os.fstat(f).st_size)
try:
    os.read(f, 1)
except OSError as e:
    print("read", e.errno)
print(open(f"/proc/self/fd/{{f}}").read())
g = os.open("f", os.O_RDONLY, dir_fd=d)
print(os.read(g, 7))
"""
    r = run([PY, "-c", script], sentry=sentry)
    h = host([PY, "-c", script])
    assert (r.returncode, r.stdout, r.stderr) == (h.returncode, h.stdout, h.stderr)
    assert r.stdout.decode().split("\n")[:3] == ["True 14", f"read {errno.EBADF}", "through-o-path"]


def test_creating_writing_and_reopening_files(sentry, tmp_path):
    script = f"""
import os
p = {str(tmp_path)!r} + '/f'
with open(p, 'w') as f: f.write('hello')
fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
import fcntl
print(open(p).read(), bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
import ctypes
fd2 = ctypes.CDLL(None).open(p.encode(), os.O_RDONLY)  # os.open would add O_CLOEXEC (PEP 446)
print(bool(fcntl.fcntl(fd2, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
try:
    os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
except FileExistsError:
    print('EEXIST')
try:
    open(p + '/x')
except NotADirectoryError:
    print('ENOTDIR')
os.symlink('f', p + 'link'); print(open(p + 'link').read())
"""
    r = run([PY, "-c", script], sentry=sentry)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello True\nFalse\nEEXIST\nENOTDIR\nhello\n"


def test_a_non_root_tracee_gets_the_kernels_permission_checks(sentry, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    os.chmod(tmp_path, 0o755)
    script = f"import os; os.setgroups([]); os.setgid(65534); os.setuid(65534)\ntry:\n  open({str(secret)!r}).read(); print('READ')\nexcept PermissionError: print('EACCES')\nprint(open('/etc/hostname').read().strip() != '')"
    r = run([PY, "-c", script], sentry=sentry)
    h = host([PY, "-c", script])
    assert r.stdout == h.stdout == b"EACCES\nTrue\n", r.stderr


PROC_C = r"""
#include <stdio.h>
#include <sys/sysinfo.h>
int main(void) {
    struct sysinfo si;
    if (sysinfo(&si)) return 1;
    printf("%llu\n", (unsigned long long)si.totalram * si.mem_unit);
    return 0;
}
"""


def test_sysinfo_follows_the_memory_limit_and_procfs_is_the_kernels(sentry, tmp_path):
    # (the /proc views are a FUSE filesystem bound in a container's mount namespace: test_views.py)
    view = ContainerView("c2", "db", memory_limit_bytes=256 << 20, cpu_quota_us=50000, cpu_period_us=100000, cpuset="0-1")
    exe = cc(tmp_path, "si", PROC_C)
    r = run([exe], sentry=sentry, view=view)
    assert r.stdout == b"%d\n" % (256 << 20)
    r = run([BUSYBOX, "grep", "MemTotal", "/proc/meminfo"], sentry=sentry, view=view)
    assert r.stdout == host([BUSYBOX, "grep", "MemTotal", "/proc/meminfo"]).stdout
    # other /proc files are the real ones, and /proc/self is the tracee
    r = run([BUSYBOX, "sh", "-c", "head -1 /proc/self/status; readlink /proc/self/exe"], sentry=sentry)
    assert r.stdout.startswith(b"Name:\tbusybox\n") or r.stdout.startswith(b"Name:\thead\n"), r.stdout


REFUSED_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        long nr = atol(argv[i]);
        errno = 0;
        long r = syscall(nr, 0L, 0L, 0L, 0L, 0L, 0L);
        printf("%ld %ld %d\n", nr, r, r < 0 ? errno : 0);
    }
    /* clone with a namespace flag is refused, plain fork is not */
    errno = 0;
    long r = syscall(SYS_clone, (long)(CLONE_NEWUSER | 17), 0L, 0L, 0L, 0L);
    printf("clone-newuser %ld %d\n", r, r < 0 ? errno : 0);
    pid_t p = fork();
    if (p == 0) _exit(0);
    printf("fork %d\n", p > 0);
    return 0;
}
"""


def test_refused_syscalls_fail_with_the_tables_errno(sentry, tmp_path):
    from zentry.sentry.table import TABLE, Action

    refused = [r for r in TABLE.by_action(Action.ERRNO) if not r.disposition.when]
    exe = cc(tmp_path, "refused", REFUSED_C)
    r = run([exe, *[str(row.nr) for row in refused]], sentry=sentry)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    got = {int(nr): (int(ret), int(err)) for nr, ret, err in (l.split() for l in lines[: len(refused)])}
    for row in refused:
        assert got[row.nr] == (-1, row.disposition.errno), row.name
    assert lines[-2] == f"clone-newuser -1 {errno.EPERM}"
    assert lines[-1] == "fork 1"


STORM_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
static volatile int done, urgs;
static void on_urg(int s) { (void)s; urgs++; }
static pthread_t main_thread;
static void *storm(void *a) { (void)a; while (!done) { pthread_kill(main_thread, SIGURG); usleep(20); } return 0; }
int main(void) {
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_urg; sa.sa_flags = SA_RESTART;  /* as the Go runtime does */
    sigaction(SIGURG, &sa, 0);
    main_thread = pthread_self();
    pthread_t t; pthread_create(&t, 0, storm, 0);
    int eintr = 0, other = 0; char buf[64]; struct utsname u;
    for (int i = 0; i < 3000; i++) {
        int fd = open("/etc/hostname", O_RDONLY);
        if (fd < 0) { if (errno == EINTR) eintr++; else other++; continue; }
        if (read(fd, buf, sizeof buf) <= 0) other++;
        close(fd);
        if (uname(&u)) { if (errno == EINTR) eintr++; else other++; }
    }
    done = 1; pthread_join(t, 0);
    printf("eintr=%d other=%d urgs>0=%d\n", eintr, other, urgs > 0);
    return 0;
}
"""


def test_a_sigurg_storm_causes_no_eintr_and_no_livelock(sentry, tmp_path):
    exe = cc(tmp_path, "storm", STORM_C)
    t0 = time.monotonic()
    r = run([exe], sentry=sentry, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"eintr=0 other=0 urgs>0=1\n"
    assert time.monotonic() - t0 < 120


THREADS_C = r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
static const char *path;
static char expect[4096]; static int expect_len;
static void *worker(void *a) {
    long bad = 0; char buf[4096]; struct utsname u;
    for (int i = 0; i < 300; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { bad++; continue; }
        int n = read(fd, buf, sizeof buf);
        if (n != expect_len || memcmp(buf, expect, n)) bad++;
        close(fd);
        if (uname(&u) || strcmp(u.version, "#1 zentry sentry")) bad++;
    }
    return (void *)bad;
}
int main(int argc, char **argv) {
    path = argv[1];
    int fd = open(path, O_RDONLY); expect_len = read(fd, expect, sizeof expect); close(fd);
    pthread_t t[8]; long bad = 0;
    for (int i = 0; i < 8; i++) pthread_create(&t[i], 0, worker, 0);
    for (int i = 0; i < 8; i++) { void *r; pthread_join(t[i], &r); bad += (long)r; }
    printf("bad=%ld\n", bad);
    return 0;
}
"""


def test_a_multithreaded_program_with_many_pending_notifications(sentry, tmp_path):
    exe = cc(tmp_path, "threads", THREADS_C)
    r = run([exe, "/etc/passwd"], sentry=sentry, timeout=120)
    assert (r.returncode, r.stdout) == (0, b"bad=0\n"), r.stderr
    assert sentry.stats()["trapped"]["openat"] >= 8 * 300


def test_strace_events_only_when_switched_on_with_the_right_result(sentry):
    run([BUSYBOX, "cat", "/etc/hostname"], sentry=sentry)
    assert sentry.events == []
    sentry.set_strace(True)
    r = run([BUSYBOX, "cat", "/etc/hostname", "/proc/loadavg", "/nonexistent"], sentry=sentry, view=ContainerView("traced", "h"))
    assert b"No such file" in r.stderr and r.stdout.count(b"\n") == 2
    # an event is published after the call is answered: the tracee may have exited first
    deadline = time.monotonic() + 5
    while not any(e["syscall"] == "openat" and e["args"][1] == "/nonexistent" for e in sentry.events):
        assert time.monotonic() < deadline, sentry.events
        time.sleep(0.01)
    sentry.set_strace(False)
    opens = [e for e in sentry.events if e["syscall"] == "openat"]
    ok = next(e for e in opens if e["args"][1] == "/etc/hostname")
    proc = next(e for e in opens if e["args"][1] == "/proc/loadavg")
    missing = next(e for e in opens if e["args"][1] == "/nonexistent")
    # opens the kernel ran as the tracee: continued, their result is not the sentry's to report
    for e in (ok, proc, missing):
        assert e["continued"] is True and "result" not in e and "errno" not in e, e
    assert ok["container"] == "traced" and ok["duration_ns"] > 0 and ok["pid"] == ok["tid"]
    n = len(sentry.events)
    run([BUSYBOX, "cat", "/etc/hostname"], sentry=sentry)
    assert len(sentry.events) == n


def test_oci_profile_is_stacked_and_the_strictest_verdict_wins(sentry):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES}]}
    code = "import os\ntry:\n  os.getcwd(); print('cwd')\nexcept PermissionError as e: print(e.errno)\nprint(open('/etc/hostname').read() != '')"
    r = run([PY, "-c", code], sentry=sentry, oci=profile)
    assert r.stdout == b"%d\nTrue\n" % errno.EACCES, r.stderr


def test_a_second_listener_is_refused_by_the_kernel(sentry):
    """Why an OCI profile with SCMP_ACT_NOTIFY cannot be stacked under the sentry."""
    code = textwrap.dedent(
        """
        from zentry.sentry import filter as F
        import pyseccomp
        prog = F.LoadedProgram(F.compile_policy(F.Policy(default=pyseccomp.ALLOW, rules=[F.Rule(39, pyseccomp.NOTIFY)])))
        try:
            prog.load(F.ZENTRY_FILTER_FLAGS)
        except OSError as e:
            print(e.errno)
        """
    )
    r = run([PY, "-c", code], sentry=sentry)
    assert r.stdout == b"%d\n" % errno.EBUSY, r.stderr


# --- fail closed -----------------------------------------------------------------------
def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def test_a_failed_listener_kills_the_container_and_reports(sentry):
    t = spawn([BUSYBOX, "sh", "-c", "while true; do cat /etc/hostname >/dev/null; done"], sentry=sentry, view=ContainerView("doomed", "h"))
    time.sleep(0.5)
    fd = next(iter(sentry._listeners))
    os.close(fd)  # the listener breaks under the sentry's feet
    r = t.wait(20)
    assert r.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5  # the sentry kills first, then reports
    while not sentry.fatal and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [cid for cid, _ in sentry.fatal] == ["doomed"]


def test_stopping_the_sentry_kills_the_containers_it_serves():
    s = Sentry()
    s.start()
    t = spawn([BUSYBOX, "sleep", "100"], sentry=s)
    time.sleep(0.2)
    s.stop()
    assert t.wait(20).returncode == -signal.SIGKILL


def test_the_container_dies_with_the_process_hosting_the_sentry(tmp_path):
    pidfile = tmp_path / "pid"
    code = textwrap.dedent(
        f"""
        import time
        from zentry.sentry.harness import spawn
        from zentry.sentry.kernel import Sentry
        s = Sentry(); s.start()
        t = spawn([{BUSYBOX!r}, "sleep", "100"], sentry=s)
        open({str(pidfile)!r}, "w").write(str(t.pid))
        time.sleep(100)
        """
    )
    host_proc = subprocess.Popen([PY, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text())
        assert not _wait_dead(pid, 0.3)
        host_proc.kill()  # SIGKILL: no cleanup code runs in the sentry's process
        host_proc.wait(10)
        assert _wait_dead(pid), "the tracee outlived its sentry (PR_SET_PDEATHSIG)"
    finally:
        if host_proc.poll() is None:
            host_proc.kill()
            host_proc.wait()


def test_personality_flags_docker_refuses_are_refused(sentry):
    # READ_IMPLIES_EXEC makes every readable mapping executable; ADDR_NO_RANDOMIZE turns ASLR off
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "for v in (0xffffffff, 0x0400000, 0x0040000, 0x8, 0x0):\n"
            "    r = libc.personality(ctypes.c_ulong(v)); print(hex(v), r >= 0, 0 if r >= 0 else ctypes.get_errno())")
    r = run([PY, "-c", code], sentry=sentry)
    assert r.stdout.decode().splitlines() == [
        "0xffffffff True 0", "0x400000 False 1", "0x40000 False 1", "0x8 True 0", "0x0 True 0",
    ], r.stderr
