"""The sentry's native fast path (``sentry/_fast.c``): built, in use, and answering exactly as the Python handlers.

The same static C program runs, pivoted into a small rootfs, under a Sentry
with the C loop and under one without it (the pure-Python loop); every line it
prints (return values, errnos, fd numbers and flags, file contents) must be
identical, and the same as the kernel's own answers without any filter
(uname aside, which is emulated on purpose).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from zentry.sentry import confine, kernel
from functools import partial

from zentry.sentry import harness
from zentry.sentry.kernel import ContainerView, Sentry

# Opens are trapped only in containers created with strace on: these tests run under that filter
# (the open family observed and continued), the one the sentry still serves opens for.
run = partial(harness.run, trace=True)
spawn = partial(harness.spawn, trace=True)


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces, pivot_root and a seccomp listener need root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
    pytest.mark.skipif(not shutil.which("gcc"), reason="the test programs need gcc (static)"),
]

CALLS_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static void show(const char *label, long rc) {
    int e = errno;
    if (rc < 0) { printf("%s -1 %s\n", label, strerrorname_np(e)); return; }
    char buf[64] = ""; int fl = fcntl(rc, F_GETFL), fdf = fcntl(rc, F_GETFD);
    if (!(fl & O_PATH) && (fl & O_ACCMODE) != O_WRONLY) { ssize_t n = pread(rc, buf, sizeof buf - 1, 0); buf[n > 0 ? n : 0] = 0; }
    if (!strcmp(label, "proc")) buf[strcspn(buf, "\n")] = 0;
    for (char *p = buf; *p; p++) if (*p == '\n') *p = '|';
    printf("%s fd=%ld cloexec=%d nonblock=%d acc=%d data=%s\n", label, rc, !!(fdf & FD_CLOEXEC), !!(fl & O_NONBLOCK), fl & O_ACCMODE, buf);
}
#define T(label, call) do { errno = 0; long rc_ = (call); show(label, rc_); if (rc_ >= 0) close(rc_); } while (0)
#define OPEN(...) syscall(SYS_open, __VA_ARGS__)

int main(int argc, char **argv) {
    int with_uname = argc > 1;
    umask(022);
    if (with_uname) {
        struct utsname u;
        printf("uname %d %s %s %s\n", uname(&u), u.sysname, u.nodename, u.version);
        long rc = syscall(SYS_uname, NULL);
        printf("uname(NULL) %ld %s\n", rc, strerrorname_np(errno));
        rc = syscall(SYS_uname, (void *)1);
        printf("uname(1) %ld %s\n", rc, strerrorname_np(errno));
    }
    static char longpath[6000];
    memset(longpath, 'a', sizeof longpath);  /* no NUL within PATH_MAX */
    T("open", OPEN("/ok.txt", O_RDONLY));
    T("open-cloexec", OPEN("/ok.txt", O_RDONLY | O_CLOEXEC));
    T("open-nonblock", OPEN("/ok.txt", O_RDONLY | O_NONBLOCK));
    T("open-junk-flags", OPEN("/ok.txt", O_RDONLY | 0x80000000));
    T("openat-abs", openat(AT_FDCWD, "/ok.txt", O_RDWR));
    T("missing", OPEN("/missing", O_RDONLY));
    T("empty", OPEN("", O_RDONLY));
    T("null", OPEN(NULL, O_RDONLY));
    T("unterminated", OPEN(longpath, O_RDONLY));
    T("notdir", OPEN("/ok.txt/x", O_RDONLY));
    T("dir", OPEN("/deep", O_RDONLY | O_DIRECTORY));
    T("file-as-dir", OPEN("/ok.txt", O_RDONLY | O_DIRECTORY));
    T("opath", OPEN("/ok.txt", O_PATH));
    T("escape-rel-link", OPEN("/tmp/x", O_RDONLY));
    T("escape-abs-link", OPEN("/tmp/abs", O_RDONLY));
    T("escape-dotdot", OPEN("/../../../secret.txt", O_RDONLY));
    T("escape-up-link", OPEN("/tmp/up/secret.txt", O_RDONLY));
    if (chdir("/deep/a") != 0) return 2;
    T("rel", OPEN("b/c/shadow", O_RDONLY));
    T("rel-dotdot", OPEN("../../../../../secret.txt", O_RDONLY));
    int dir = open("/deep", O_RDONLY | O_DIRECTORY);
    T("openat-dirfd", openat(dir, "a/../../ok.txt", O_RDONLY));
    T("openat-dirfd-file", openat(dir + 0, "../ok.txt", O_RDONLY));
    T("openat-badfd", openat(12345, "ok.txt", O_RDONLY));
    T("openat-badfd-abs", openat(12345, "/ok.txt", O_RDONLY));
    int file = open("/ok.txt", O_RDONLY);
    T("openat-notdirfd", openat(file, "x", O_RDONLY));
    close(file);
    close(dir);
    T("creat", syscall(SYS_creat, "/tmp/new", 0640));
    struct stat sb; stat("/tmp/new", &sb); printf("creat-mode %o\n", sb.st_mode & 07777);
    T("excl", OPEN("/tmp/new", O_CREAT | O_EXCL | O_WRONLY, 0600));
    T("trunc", OPEN("/tmp/new", O_WRONLY | O_TRUNC | O_APPEND));
    if (mkfifo("/tmp/fifo", 0600) != 0) return 3;
    T("fifo-rdwr", OPEN("/tmp/fifo", O_RDWR));
    T("fifo-nonblock", OPEN("/tmp/fifo", O_RDONLY | O_NONBLOCK));
    T("dev", OPEN("/dev/null", O_RDONLY));
    T("proc", OPEN("/proc/meminfo", O_RDONLY));  /* data: its first line (MemFree changes from run to run) */
    return 0;
}
"""

CHROOT_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
static void cat(const char *p) {
    char b[64]; int fd = open(p, O_RDONLY); ssize_t n = fd < 0 ? -1 : read(fd, b, sizeof b - 1);
    if (n < 0) { printf("%s: -\n", p); return; } b[n] = 0; printf("%s: %s", p, b); close(fd);
}
int main(void) {
    cat("/ok.txt");
    if (chroot("/deep") != 0) return 2;
    cat("/ok.txt");
    cat("/a/inner.txt");
    if (chdir("/") != 0) return 3;
    cat("a/inner.txt");
    return 0;
}
"""


ASUSER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
static void try(const char *p, int flags) {
    errno = 0;
    int fd = syscall(SYS_open, p, flags, 0640);
    struct stat sb;
    if (fd < 0) { printf("%s %s\n", p, strerrorname_np(errno)); return; }
    fstat(fd, &sb);
    printf("%s ok uid=%u gid=%u mode=%o\n", p, sb.st_uid, sb.st_gid, sb.st_mode & 07777);
    close(fd);
}
int main(void) {
    gid_t groups[] = {2000};
    if (setgroups(1, groups) || setgid(3000) || setuid(1000)) return 2;
    for (int round = 0; round < 2; round++) {  /* the second round uses the sentry's cached groups */
        try("/perm/owner.txt", O_RDONLY);
        try("/perm/group.txt", O_RDONLY);
        try("/perm/group.txt", O_WRONLY);
        try("/perm/root.txt", O_RDONLY);
        try("/perm/shared/new.txt", O_CREAT | O_WRONLY);
        try("/perm/closed/new.txt", O_CREAT | O_WRONLY);
    }
    return 0;
}
"""


DROPCAPS_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
static void try(const char *p, int flags) {
    errno = 0;
    int fd = syscall(SYS_open, p, flags, 0640);
    if (fd < 0) { printf("%s %s\n", p, strerrorname_np(errno)); return; }
    printf("%s ok\n", p);
    close(fd);
}
static int drop(int cap) {  /* from the effective set only: still uid 0 */
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d)) return -1;
    d[cap / 32].effective &= ~(1U << (cap % 32));
    return syscall(SYS_capset, &h, d);
}
int main(void) {
    try("/perm/owner.txt", O_RDONLY);             /* root: DAC_OVERRIDE reads it */
    if (drop(CAP_DAC_OVERRIDE)) return 2;
    try("/perm/owner.txt", O_RDONLY);             /* DAC_READ_SEARCH still reads it */
    try("/perm/owner.txt", O_WRONLY);             /* but cannot write it */
    if (drop(CAP_DAC_READ_SEARCH)) return 3;
    try("/perm/owner.txt", O_RDONLY);             /* runc's default set: neither */
    try("/perm/root.txt", O_RDONLY);              /* its own file still opens */
    try("/perm/private/new.txt", O_CREAT | O_WRONLY);  /* another user's 0700 directory */
    return 0;
}
"""


@pytest.fixture
def rootfs(tmp_path):
    (tmp_path / "secret.txt").write_text("HOST-SECRET\n")
    root = tmp_path / "root"
    for d in ("bin", "tmp", "deep/a/b/c"):
        (root / d).mkdir(parents=True)
    (root / "secret.txt").write_text("DECOY\n")
    (root / "ok.txt").write_text("OK\n")
    (root / "deep/a/inner.txt").write_text("INNER\n")
    (root / "deep/a/b/c/shadow").write_text("INSIDE\n")
    os.symlink("../../../../../../secret.txt", root / "tmp/x")
    os.symlink("/secret.txt", root / "tmp/abs")
    os.symlink("../../../../..", root / "tmp/up")
    os.chmod(root / "tmp", 0o1777)
    perm = root / "perm"
    (perm / "shared").mkdir(parents=True)
    (perm / "closed").mkdir()
    os.chmod(root, 0o755)
    for name, owner, group, mode in (("owner.txt", 1000, 0, 0o600), ("group.txt", 0, 2000, 0o640), ("root.txt", 0, 0, 0o600)):
        (perm / name).write_text(name)
        os.chown(perm / name, owner, group)
        os.chmod(perm / name, mode)
    os.chown(perm / "shared", 0, 2000)
    os.chmod(perm / "shared", 0o2770)  # writable through the supplementary group only
    os.chmod(perm / "closed", 0o755)
    (perm / "private").mkdir()
    os.chown(perm / "private", 1000, 1000)
    os.chmod(perm / "private", 0o700)
    for name, source in (("calls", CALLS_C), ("chroot", CHROOT_C), ("asuser", ASUSER_C), ("dropcaps", DROPCAPS_C)):
        src = tmp_path / f"{name}.c"
        src.write_text(textwrap.dedent(source))
        subprocess.run(["gcc", "-O1", "-static", "-o", str(root / "bin" / name), str(src)], check=True)
    return root


def _reset(root) -> None:
    for name in ("new", "fifo"):
        try:
            os.unlink(root / "tmp" / name)
        except FileNotFoundError:
            pass


@pytest.fixture
def native_sentry():
    s = Sentry(native=True)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def python_sentry():
    s = Sentry(native=False)
    s.start()
    yield s
    s.stop()


def _assert_thread_is_itself(sentry) -> None:
    """The sentry thread's ids and groups are the process's, and its capabilities
    those it confined itself to at start (the process's, cut to ``confine.KEEP_CAPS``)."""
    with open(f"/proc/self/task/{sentry._thread.native_id}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    with open("/proc/self/status") as f:
        ours = dict(line.split(":", 1) for line in f.read().splitlines())
    assert (status["Uid"], status["Gid"], status["Groups"]) == (ours["Uid"], ours["Gid"], ours["Groups"])
    keep = sum(1 << n for n in confine.KEEP_CAPS.values())
    assert int(status["CapEff"], 16) == int(ours["CapEff"], 16) & keep


def test_the_native_fast_path_is_built_and_used_by_default():
    assert kernel.native_available(), "sentry/_fast.c is not built (or stale): run .ci/install"
    s = Sentry()
    try:
        assert s.native
    finally:
        s.stop()
    assert not Sentry(native=False).native


def test_without_the_extension_the_python_loop_serves_everything():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["zentry.sentry._fast"] = None  # as if it had not been built: import fails
        from zentry.sentry import kernel
        from zentry.sentry.harness import run
        s = kernel.Sentry()
        assert not kernel.native_available() and not s.native
        s.start()
        r = run(["/bin/busybox", "sh", "-c", "uname -n; cat /etc/hostname >/dev/null"], sentry=s, view=kernel.ContainerView("c", "no-ext"), trace=True)
        s.stop()
        print(r.stdout.decode().strip(), s.stats()["native"], s.stats()["continued"]["openat"] > 0)
        """
    )
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"no-ext {} True\n"), r.stderr


def test_native_and_python_paths_answer_identically(native_sentry, python_sentry, rootfs):
    results = {}
    for label, sentry in (("native", native_sentry), ("python", python_sentry), ("kernel", None)):
        _reset(rootfs)
        argv = ["/bin/calls"] + (["uname"] if sentry is not None else [])
        r = run(argv, sentry=sentry, root=str(rootfs), view=ContainerView("c", "fast-host") if sentry else None)
        assert r.returncode == 0, (label, r.stderr)
        results[label] = r.stdout.decode()
    assert results["native"] == results["python"]
    uname, rest = results["native"].split("uname(1)", 1)
    assert "fast-host #1 zentry sentry" in uname and "uname(NULL) -1 EFAULT" in uname and rest.startswith(" -1 EFAULT")
    # without a filter the kernel answers; only uname differs
    assert rest.split("\n")[1:] == results["kernel"].split("\n")
    assert "open fd=3 cloexec=0 nonblock=0 acc=0 data=OK|" in rest
    assert "DECOY" in rest and "HOST-SECRET" not in rest
    assert "fifo-rdwr fd=3 cloexec=0 nonblock=0" in rest  # blocking given back for a FIFO
    assert "unterminated -1 ENAMETOOLONG" in rest and "null -1 EFAULT" in rest and "openat-badfd -1 EBADF" in rest
    # the comparison is meaningful: the C loop answered these itself, the Python sentry none
    native = native_sentry.stats()["native"]
    assert native.get("uname", 0) >= 3 and native.get("open", 0) >= 20 and native.get("openat", 0) >= 5 and native.get("creat") == 1
    assert python_sentry.stats()["native"] == {}
    assert native_sentry.stats()["trapped"]["open"] == python_sentry.stats()["trapped"]["open"]
    assert native_sentry.stats()["errors"] == python_sentry.stats()["errors"]
    assert native_sentry.stats()["continued"] == python_sentry.stats()["continued"]


def test_a_non_root_tracee_opens_with_its_own_ids_and_groups(native_sentry, python_sentry, rootfs):
    out = {}
    for label, sentry in (("native", native_sentry), ("python", python_sentry), ("kernel", None)):
        for leftover in rootfs.glob("perm/*/new.txt"):
            leftover.unlink()
        r = run(["/bin/asuser"], sentry=sentry, root=str(rootfs))
        assert r.returncode == 0, (label, r.stderr)
        out[label] = r.stdout.decode()
    assert out["native"] == out["python"] == out["kernel"]
    lines = out["native"].splitlines()
    assert lines[:6] == [
        "/perm/owner.txt ok uid=1000 gid=0 mode=600",
        "/perm/group.txt ok uid=0 gid=2000 mode=640",
        "/perm/group.txt EACCES",
        "/perm/root.txt EACCES",
        "/perm/shared/new.txt ok uid=1000 gid=2000 mode=640",
        "/perm/closed/new.txt EACCES",
    ]
    assert lines[6:] == lines[:6]
    # all continued by the C loop: the kernel opened them as the tracee
    assert native_sentry.stats()["native"]["open"] == 12
    # and the sentry thread is itself again afterwards
    _assert_thread_is_itself(native_sentry)


def test_a_root_tracee_without_dac_capabilities_gets_no_more_than_the_kernel_gives(native_sentry, python_sentry, rootfs):
    """Container root keeps fsuid 0 but may lack CAP_DAC_OVERRIDE/READ_SEARCH (runc's default
    set has neither): the sentry must not open with its own, as the kernel would not."""
    out = {}
    for label, sentry in (("native", native_sentry), ("python", python_sentry), ("kernel", None)):
        for leftover in rootfs.glob("perm/*/new.txt"):
            leftover.unlink()
        r = run(["/bin/dropcaps"], sentry=sentry, root=str(rootfs))
        assert r.returncode == 0, (label, r.returncode, r.stderr)
        out[label] = r.stdout.decode()
    assert out["native"] == out["python"] == out["kernel"], out
    assert out["kernel"].splitlines() == [
        "/perm/owner.txt ok",
        "/perm/owner.txt ok",
        "/perm/owner.txt EACCES",
        "/perm/owner.txt EACCES",
        "/perm/root.txt ok",
        "/perm/private/new.txt EACCES",
    ]
    assert native_sentry.stats()["native"]["open"] >= 5  # answered in C, not handed to Python
    # the sentry thread has its capabilities as they were
    _assert_thread_is_itself(native_sentry)


def test_after_chroot_opens_resolve_from_the_new_root(native_sentry, python_sentry, rootfs):
    out = {}
    for label, sentry in (("native", native_sentry), ("python", python_sentry), ("kernel", None)):
        r = run(["/bin/chroot"], sentry=sentry, root=str(rootfs))
        assert r.returncode == 0, r.stderr
        out[label] = r.stdout
    assert out["native"] == out["python"] == out["kernel"] == b"/ok.txt: OK\n/ok.txt: -\n/a/inner.txt: INNER\na/inner.txt: INNER\n"


def test_each_container_gets_its_own_answers(native_sentry):
    script = "for i in $(seq 200); do /bin/busybox uname -n; done | /bin/busybox uniq"
    ts = [spawn(["/bin/busybox", "sh", "-c", script], sentry=native_sentry, view=ContainerView(f"c{i}", f"host-{i}")) for i in range(3)]
    outs = [t.wait(120) for t in ts]
    for i, r in enumerate(outs):
        assert (r.returncode, r.stdout) == (0, f"host-{i}\n".encode()), r.stderr
    assert native_sentry.stats()["native"]["uname"] >= 600


def test_strace_sees_every_trapped_call_while_on(rootfs):
    events: list[dict] = []
    s = Sentry(on_event=events.append, native=True)
    s.start()
    try:
        run(["/bin/calls", "uname"], sentry=s, root=str(rootfs))
        before = s.stats()
        assert before["native"].get("open", 0) > 0 and not events
        s.set_strace(True)
        _reset(rootfs)
        run(["/bin/calls", "uname"], sentry=s, root=str(rootfs))
        # the sentry answers a call before it publishes its event: the tracee may exit first
        import time

        deadline = time.monotonic() + 5
        while True:
            after = s.stats()
            traced = sum(after["trapped"].values()) - sum(before["trapped"].values())
            if len(events) >= traced or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        s.set_strace(False)
        assert after["native"] == before["native"]  # nothing bypassed Python while tracing
        assert len(events) == traced > 30
        assert sum(e["syscall"] == "uname" for e in events) == 3
        assert any(e["syscall"] == "open" and e["args"][1:2] == ["/tmp/x"] and e["continued"] for e in events)
    finally:
        s.stop()
