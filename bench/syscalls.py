"""Syscall costs under zentry's filter and sentry, against native and a C floor, in one run.

    python bench/syscalls.py [--iterations N] [--cpu N]

Rows (median ns per call of several runs of a C loop compiled here with gcc):
native getpid; getpid allowed in BPF (target <= 1.3x native); getpid under a
one-instruction RET_ALLOW filter (no target: the kernel's fixed cost of having
any seccomp filter, the floor of the row above); uname trapped and emulated by
the sentry vs a C pipe round trip between two processes, the floor of any
user-space answer (target <= 1.5x); open+read+close of /etc/hostname under
zentry's filter, which allows opens in BPF, vs native (target <= 3x); the same
under a one-instruction RET_ALLOW filter (no target: the floor of any filter);
the same trapped and continued, as in a container created with strace on (no
target: the sentry reads the path for the tap and answers CONTINUE); and
open+read+close of a view, the meminfo file of the views' FUSE filesystem
(``sentry/views.py``) bound over a file in a private mount namespace and
served by a thread of this process (no target: rendered in Python at every
open). Tracee and sentry are pinned to one CPU (across CPUs every round trip
costs 4-8x more on this kind of machine).

The runs are interleaved (each run measures every row once, in turn), and a
ratio is the median of the per-run ratios, so that load from other processes
on a shared machine falls on both sides of a ratio. The table says whether the
sentry answered on its native fast path (``sentry/_fast.c``) or in Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

C_LOOP = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1000000000LL + t.tv_nsec; }

int main(int argc, char **argv) {
    const char *mode = argv[1]; long n = atol(argv[2]); const char *path = argc > 3 ? argv[3] : "/etc/hostname";
    char buf[256]; struct utsname u; long long t0, t1;
    if (!strcmp(mode, "getpid-allow1") || !strcmp(mode, "open-allow1")) {  /* the cheapest possible filter: one RET_ALLOW */
        struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
        struct sock_fprog prog = {1, &allow};
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) return 6;
        mode = strcmp(mode, "getpid-allow1") ? "open" : "getpid";
    }
    if (!strcmp(mode, "pipe")) {
        int a[2], b[2]; if (pipe(a) || pipe(b)) return 2;
        pid_t pid = fork();
        if (pid == 0) { char c; close(a[1]); close(b[0]); while (read(a[0], &c, 1) == 1) if (write(b[1], &c, 1) != 1) break; _exit(0); }
        char c = 'x';
        for (int i = 0; i < 1000; i++) { if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 3; }
        t0 = now();
        for (long i = 0; i < n; i++) { if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 3; }
        t1 = now();
        close(a[1]); waitpid(pid, 0, 0);
    } else {
        for (int i = 0; i < 100; i++) { syscall(SYS_getpid); uname(&u); }
        t0 = now();
        for (long i = 0; i < n; i++) {
            if (!strcmp(mode, "getpid")) syscall(SYS_getpid);
            else if (!strcmp(mode, "uname")) { if (uname(&u)) return 4; }
            else { int fd = open(path, O_RDONLY); if (fd < 0 || read(fd, buf, sizeof buf) < 0) return 5; close(fd); }
        }
        t1 = now();
    }
    printf("%lld\n", (t1 - t0) / n);
    return 0;
}
"""


def build(tmp: str) -> str:
    src = os.path.join(tmp, "loop.c")
    exe = os.path.join(tmp, "loop")
    with open(src, "w") as f:
        f.write(C_LOOP)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def measure_once(exe: str, mode: str, n: int, sentry=None, trace: bool = False, view: str = "") -> int:
    from zentry.sentry.harness import run

    argv = [exe, mode, str(n)]
    if mode == "view":
        argv = [exe, "open", str(n), view]
    if sentry is None:
        out = subprocess.run(argv, check=True, capture_output=True).stdout
    else:
        r = run(argv, sentry=sentry, timeout=300, trace=trace)
        if r.returncode != 0:
            raise RuntimeError(f"{mode} under the sentry exited {r.returncode}: {r.stderr!r}")
        out = r.stdout
    return int(out)


def mount_view(tmp: str, view) -> str:
    """The views' meminfo bound over a file in a private mount namespace of this process (made
    while it has one thread: unshare(CLONE_NEWNS) refuses a multi-threaded process); served by a
    thread, as the sandbox serves a container's. Returns the path to open."""
    from zentry.sentry import views
    from zentry.sentry.abi import libc

    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
    target = os.path.join(tmp, "meminfo")
    open(target, "w").close()
    dev = views.open_device()
    views.mount_views(dev, {"meminfo": target}, lambda: views.Server(dev, view).start())
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin tracee and sentry to (-1: no pinning)")
    ap.add_argument("--python", action="store_true", help="serve with the pure-Python sentry loop, not the native fast path")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/syscalls.py needs root (seccomp listener, process_vm_*)", file=sys.stderr)
        return 2
    if not shutil.which("gcc"):
        print("bench/syscalls.py needs gcc", file=sys.stderr)
        return 2
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})  # before the sentry thread exists: it inherits
    from zentry.sentry.abi import libc
    from zentry.sentry.kernel import ContainerView, Sentry

    n, runs = args.iterations, args.runs
    # (row, mode, iterations, under the sentry: None, "zentry" (its filter), "traced" (strace at create))
    plan = [
        ("getpid, native", "getpid", n * 10, None),
        ("getpid, allowed in BPF", "getpid", n * 10, "zentry"),
        ("getpid, 1-insn ALLOW filter", "getpid-allow1", n * 10, None),
        ("C pipe round trip (floor)", "pipe", n, None),
        ("uname, trapped + emulated", "uname", n, "zentry"),
        ("open+read+close, native", "open", n, None),
        ("open+read+close, zentry filter", "open", n, "zentry"),
        ("open+read+close, 1-insn ALLOW", "open-allow1", n, None),
        ("open+read+close, traced+continued", "open", n // 2, "traced"),
        ("open+read+close of a view (FUSE)", "view", n // 20, None),
    ]
    samples: dict[str, list[int]] = {row: [] for row, *_ in plan}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(tmp)
        view = mount_view(tmp, ContainerView("bench", "bench", memory_limit_bytes=256 << 20))  # before any thread
        sentry = Sentry(native=False if args.python else None)
        sentry.start()
        try:
            for _ in range(runs):
                for row, mode, iters, kind in plan:
                    samples[row].append(measure_once(exe, mode, iters, sentry if kind else None, kind == "traced", view))
            native_path = sentry.native and bool(sentry.stats()["native"])
        finally:
            sentry.stop()
            libc.umount2(view, libc.MNT_DETACH)  # the connection ends with it (and the server thread)

    def ratio(row: str, base: str) -> float:
        return statistics.median(a / b for a, b in zip(samples[row], samples[base]))

    rows = [
        ("getpid, native", None, None),
        ("getpid, allowed in BPF", "getpid, native", 1.3),
        ("getpid, 1-insn ALLOW filter", "getpid, native", None),
        ("C pipe round trip (floor)", None, None),
        ("uname, trapped + emulated", "C pipe round trip (floor)", 1.5),
        ("open+read+close, native", None, None),
        ("open+read+close, zentry filter", "open+read+close, native", 3.0),
        ("open+read+close, 1-insn ALLOW", "open+read+close, native", None),
        ("open+read+close, traced+continued", "open+read+close, native", None),
        ("open+read+close of a view (FUSE)", "open+read+close, native", None),
    ]
    print(f"{'path':<34} {'ns/call':>10} {'ratio':>7} {'target':>7}  ok")
    for name, base, target in rows:
        ns = statistics.median(samples[name])
        r = ratio(name, base) if base else None
        rs = f"{r:6.2f}x" if r is not None else ""
        t = f"<={target}x" if target is not None else ""
        ok = ("yes" if r <= target else "NO") if target is not None else ""
        print(f"{name:<34} {ns:>10.0f} {rs:>7} {t:>7}  {ok}")
    print(
        f"(median of {runs} interleaved runs, ratios: median of per-run ratios; iterations: getpid {n * 10}, "
        f"others {n}, traced open {n // 2}, view {n // 20}; cpu {args.cpu}; sentry loop: {'native (C)' if native_path else 'Python'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
