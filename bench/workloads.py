"""Open-heavy shell workloads in a zentry and a runc container, interleaved.

    python bench/workloads.py [--runs N] [--files N] [--designs]

One busybox bundle (tests/helpers/bundle.py, config from `zentry spec`, a
tmpfs on /tmp) whose rootfs holds a tree of ``--files`` small files (default
20000, in 100 directories) and 2000 more small files in /data/small. Each
workload runs as ``sh -c 'echo S; WORKLOAD >/dev/null; echo E'`` under
`<runtime> run`; the time is taken on the host between the two marker lines
on the container's stdout, so container creation and teardown are left out
and only the workload's own syscalls (and the sentry's answers to them) are
compared. Workloads:

  find        ``find /data/tree -type f`` (an openat + getdents per directory, an lstat per file)
  ls -lR      ``ls -lR /data/tree``
  sha256sum   ``sha256sum /data/small/*`` (2000 opens and reads)
  tar c|tar x ``tar c /data/small | tar x -C /tmp/x`` then ``rm -rf /tmp/x``

For run in range(N), for workload, for runtime in (zentry, runc): one
measurement. The table prints medians and the zentry/runc ratio (the median
of per-run ratios). Target: <= 1.3x runc each.

``--compare NAME=PATH`` (repeatable) adds another zentry launcher to the
interleaving (e.g. a checkout of an earlier version), reported against runc
like zentry.

``--designs`` measures zentry's two filters on the same workloads without a
container: busybox pivoted into the same rootfs by ``zentry.sentry.harness``
(a mount namespace, zentry's filter and a Sentry thread in this process, the
C loop), interleaved:

  native      no filter
  zentry      zentry's filter: opens allowed in BPF (the views are a FUSE
              filesystem bound over /proc, no open reaches the sentry)
  traced      the filter of a container created with strace on: opens
              trapped, read for the tap and continued
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import helpers_bundle, zentry_argv  # noqa: E402

WORKLOADS = [
    ("find", "find /data/tree -type f"),
    ("ls -lR", "ls -lR /data/tree"),
    ("sha256sum", "sha256sum /data/small/*"),
    ("tar c|tar x", "mkdir /tmp/x && tar c /data/small | tar x -C /tmp/x && rm -rf /tmp/x"),
]
TARGET = 1.3


def build(bundle: str, files: int) -> None:
    helpers_bundle().make_bundle(bundle, ["/bin/true"])
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["ociVersion"] = "1.0.2"
    config["mounts"] = [m for m in config.get("mounts", []) if m.get("destination") != "/tmp"]
    config["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]})
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    data = os.path.join(bundle, "rootfs", "data")
    per_dir = max(1, files // 100)
    for d in range(100):
        sub = os.path.join(data, "tree", f"d{d:03}")
        os.makedirs(sub)
        for i in range(per_dir):
            with open(os.path.join(sub, f"f{i:04}"), "w") as f:
                f.write(f"{d} {i}\n")
    small = os.path.join(data, "small")
    os.makedirs(small)
    for i in range(2000):
        with open(os.path.join(small, f"f{i:04}"), "w") as f:
            f.write(f"small file {i}\n" * 8)


def set_args(bundle: str, script: str) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["process"]["args"] = ["/bin/sh", "-c", f"echo S; {script} >/dev/null; echo E"]
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def measure(argv: list[str], cid: str, bundle: str, root: str) -> float:
    """Seconds between the container's S and E lines (its workload alone)."""
    proc = subprocess.Popen([*argv, "--root", root, "run", "--bundle", bundle, cid], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=bundle)
    start = end = None
    for line in proc.stdout:
        if line == b"S\n":
            start = time.perf_counter()
        elif line == b"E\n":
            end = time.perf_counter()
    err = proc.stderr.read()
    rc = proc.wait(300)
    if rc != 0 or start is None or end is None:
        raise RuntimeError(f"{' '.join(argv)} run {cid} exited {rc}: {err.decode(errors='replace').strip()[-300:]}")
    return end - start


def designs(bundle: str, runs: int) -> None:
    """The workloads under the harness: no filter, zentry's filter, and its filter under strace."""
    from zentry.sentry.harness import run as hrun
    from zentry.sentry.kernel import Sentry

    rootfs = os.path.join(bundle, "rootfs")
    sentry = Sentry()
    sentry.start()
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for run in range(runs + 1):
            for name, script in WORKLOADS:
                argv = ["/bin/sh", "-c", script.replace("/tmp/x", "/tmp/x$$") + " >/dev/null"]
                for design in ("native", "zentry", "traced"):
                    t0 = time.perf_counter()
                    r = hrun(argv, sentry=sentry if design != "native" else None, root=rootfs, timeout=300, trace=design == "traced")
                    secs = time.perf_counter() - t0
                    if r.returncode != 0:
                        raise RuntimeError(f"{name} ({design}) exited {r.returncode}: {r.stderr[-300:]!r}")
                    if run:
                        samples.setdefault((name, design), []).append(secs)
    finally:
        sentry.stop()
    print(f"{'workload':<14} {'native ms':>10} {'zentry ms':>10} {'traced ms':>10} {'zentry/native':>14} {'traced/native':>14}")
    for name, _ in WORKLOADS:
        n, z, t = (samples[(name, d)] for d in ("native", "zentry", "traced"))
        rz = statistics.median(x / y for x, y in zip(z, n))
        rt = statistics.median(x / y for x, y in zip(t, n))
        print(f"{name:<14} {statistics.median(n) * 1000:>10.1f} {statistics.median(z) * 1000:>10.1f} {statistics.median(t) * 1000:>10.1f} "
              f"{rz:>13.2f}x {rt:>13.2f}x")
    print(f"(harness, no container: fork+pivot+exec included in every row; median of {runs} interleaved runs after one warm-up)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--designs", action="store_true", help="compare zentry's filter with its filter under strace (harness, no container)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH", help="another zentry launcher to interleave")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/workloads.py needs root", file=sys.stderr)
        return 2
    za, runc = zentry_argv(), shutil.which("runc")
    if not za or not runc:
        print("bench/workloads.py needs the zentry CLI and runc", file=sys.stderr)
        return 2
    runtimes = {"zentry": za, "runc": [runc]}
    for spec in args.compare:
        name, _, path = spec.partition("=")
        runtimes[name] = [path]
    samples: dict[tuple[str, str], list[float]] = {}
    work = tempfile.mkdtemp(prefix="zentry-bench-workloads-")
    try:
        bundle = os.path.join(work, "bundle")
        build(bundle, args.files)
        if args.designs:
            designs(bundle, args.runs)
            return 0
        roots = {rt: os.path.join(work, f"root-{rt}") for rt in runtimes}
        n = 0
        for run in range(args.runs + 1):  # run 0 warms the page cache and both runtimes: not counted
            for name, script in WORKLOADS:
                set_args(bundle, script)
                for rt, rargv in runtimes.items():
                    n += 1
                    secs = measure(rargv, f"wl{n}", bundle, roots[rt])
                    if run:
                        samples.setdefault((name, rt), []).append(secs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{'workload':<14} {'runtime':<16} {'ms':>9} {'runc ms':>9} {'ratio':>7} {'target':>7}  ok")
    for name, _ in WORKLOADS:
        r = samples[(name, "runc")]
        for rt in runtimes:
            if rt == "runc":
                continue
            z = samples[(name, rt)]
            ratio = statistics.median(a / b for a, b in zip(z, r))
            print(f"{name:<14} {rt:<16} {statistics.median(z) * 1000:>9.1f} {statistics.median(r) * 1000:>9.1f} {ratio:>6.2f}x "
                  f"{'<=' + str(TARGET) + 'x':>7}  {'yes' if ratio <= TARGET else 'NO'}")
    print(f"(median of {args.runs} interleaved runs after one warm-up; ratio: median of per-run ratios; "
          f"{args.files} files in /data/tree, 2000 in /data/small; time between the container's marker lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
