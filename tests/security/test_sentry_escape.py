"""No path trick gets an open out of the container's root: the kernel resolves it, as the tracee.

The tracee runs in its own mount namespace, pivoted into a small rootfs
(busybox-static and static C programs); a file ``secret.txt`` with
``HOST-SECRET`` lies next to the rootfs on the host, and a decoy of the same
name inside it. Every trick must land on the decoy, exactly as the kernel
resolves it for a program running without the sentry (the sentry reads the
path and answers CONTINUE; a thread racing that read changes nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from functools import partial

import pytest

from zentry.sentry import harness
from zentry.sentry.kernel import Sentry, native_available

# Opens reach the sentry only in containers created with strace on: these run under that filter.
run = partial(harness.run, trace=True)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces, pivot_root and a seccomp listener need root"),
    pytest.mark.skipif(not os.path.exists("/bin/busybox"), reason="needs busybox-static"),
    pytest.mark.skipif(not shutil.which("gcc"), reason="the race program needs gcc (static)"),
]


@pytest.fixture(params=["native", "python"])
def sentry(request):
    """With the C fast path and with the pure-Python loop: both must hold the line."""
    if request.param == "native" and not native_available():
        pytest.skip("sentry/_fast.c not built (test_sentry_native.py fails for that)")
    s = Sentry(native=request.param == "native")
    s.start()
    yield s
    s.stop()


@pytest.fixture
def rootfs(tmp_path):
    (tmp_path / "secret.txt").write_text("HOST-SECRET\n")
    root = tmp_path / "root"
    for d in ("bin", "tmp", "etc", "deep/a/b/c"):
        (root / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    (root / "secret.txt").write_text("DECOY\n")
    (root / "ok.txt").write_text("OK\n")
    (root / "etc/shadow").write_text("INSIDE\n")
    os.symlink("../../../../../../secret.txt", root / "tmp/x")
    os.symlink("/secret.txt", root / "tmp/abs")
    os.symlink("../../../../..", root / "tmp/up")
    os.symlink("../../../../etc/shadow", root / "deep/a/b/c/shadow")
    return root


TRICKS = [
    "cat /tmp/x",
    "cat /tmp/abs",
    "cat /tmp/up/secret.txt",
    "cat /../../../secret.txt",
    "cd /tmp && cat ../../../../secret.txt",
    "cd /deep/a/b && cat ../../../../../../secret.txt",
    "cd /deep/a/b/c && cat shadow",
    "cd /tmp && cat x",
    "cat /deep/a/b/c/shadow",
]


@pytest.mark.parametrize("trick", TRICKS)
def test_symlink_and_dotdot_tricks_stay_in_the_root(sentry, rootfs, trick):
    argv = ["/bin/busybox", "sh", "-c", trick.replace("cat ", "/bin/busybox cat ")]
    traced = run(argv, sentry=sentry, root=str(rootfs))
    native = run(argv, sentry=None, root=str(rootfs))
    assert b"HOST-SECRET" not in traced.stdout
    assert (traced.returncode, traced.stdout) == (native.returncode, native.stdout)
    assert traced.stdout in (b"DECOY\n", b"INSIDE\n")
    assert sentry.stats()["continued"]["openat"] >= 1  # the kernel resolved it, in the tracee's root


RACE_C = r"""
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static char path[256] = "/ok.txt";
static volatile int done;
static const char *evil[] = {"/../../secret.txt", "/tmp/x", "/tmp/up/secret.txt", "../../../../secret.txt"};
static void *flip(void *a) {
    (void)a; unsigned i = 0;
    while (!done) {
        const char *p = (i & 1) ? "/ok.txt" : evil[(i >> 1) % 4];
        size_t n = strlen(p);
        for (size_t k = 0; k <= n; k++) path[k] = p[k];  /* torn writes on purpose */
        i++;
    }
    return 0;
}
int main(int argc, char **argv) {
    int tries = atoi(argv[1]);
    pthread_t t; pthread_create(&t, 0, flip, 0);
    int escapes = 0, opened = 0, decoys = 0; char buf[64];
    for (int i = 0; i < tries; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        opened++;
        int n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        if (strstr(buf, "HOST-SECRET")) escapes++;
        if (strstr(buf, "DECOY")) decoys++;
    }
    done = 1; pthread_join(t, 0);
    printf("escapes=%d opened>0=%d decoys>0=%d\n", escapes, opened > 0, decoys > 0);
    return 0;
}
""".replace("#include <unistd.h>", "#include <stdlib.h>\n#include <unistd.h>", 1)


def test_a_racing_thread_flipping_the_path_never_escapes(sentry, rootfs, tmp_path):
    src = tmp_path / "race.c"
    src.write_text(RACE_C)
    subprocess.run(["gcc", "-O1", "-static", "-pthread", "-o", str(rootfs / "bin/race"), str(src)], check=True)
    r = run(["/bin/race", "10000"], sentry=sentry, root=str(rootfs), cwd="/deep/a", timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"escapes=0 opened>0=1 decoys>0=1\n"
    assert sentry.stats()["trapped"]["openat"] >= 10000


def test_magic_links_are_not_followed_out_of_the_root(sentry, rootfs):
    """A link to a host directory fd must not become a way out: /proc is not even mounted here,
    and a tracee-held fd on a host directory is used only as an anchor, never crossed upwards."""
    os.symlink("/proc/self/root/../../secret.txt", rootfs / "tmp/magic")
    r = run(["/bin/busybox", "cat", "/tmp/magic"], sentry=sentry, root=str(rootfs))
    assert b"HOST-SECRET" not in r.stdout and r.returncode != 0
