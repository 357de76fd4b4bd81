"""Helpers shared by the benches in bench/: timing child processes, summing a
process tree's memory, percentiles, and the busybox bundle (tests/helpers).

Nothing here imports zentry: a bench that measures the CLI must not pay for
(or warm) zentry's imports in its own process.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- statistics ---------------------------------------------------------------
def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def p90(xs: list[float]) -> float:
    """Nearest-rank 90th percentile (with 15 samples: the 14th smallest)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(0.9 * len(s)) - 1)]


# --- running a command --------------------------------------------------------
@dataclass
class Result:
    argv: list[str]
    seconds: float
    rc: int
    maxrss_kib: int  # wait4's ru_maxrss: the largest single process among the child and what it reaped
    out: str = ""
    err: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def why(self) -> str:
        text = (self.err or self.out).strip().splitlines()
        return f"exit {self.rc}: {text[-1] if text else '(no output)'}"


class Runner:
    """Spawns commands with stdio on files (never pipes: a detached container
    or actor holding a pipe would make the caller wait for EOF) and reaps them
    with wait4 for their rusage."""

    def __init__(self, workdir: str) -> None:
        self.out_path = os.path.join(workdir, "out.txt")
        self.err_path = os.path.join(workdir, "err.txt")

    def _spawn(self, argv: list[str], cwd: str | None = None) -> tuple[subprocess.Popen, object, object]:
        out = open(self.out_path, "w+b")
        err = open(self.err_path, "w+b")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd)
        return proc, out, err

    @staticmethod
    def _finish(proc: subprocess.Popen, out, err, t0: float, status: int, ru) -> Result:
        t1 = time.perf_counter()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        res = Result(list(proc.args), t1 - t0, proc.returncode, ru.ru_maxrss,
                     out.read().decode(errors="replace"), err.read().decode(errors="replace"))
        out.close()
        err.close()
        return res

    def run(self, argv: list[str], timeout: float = 60.0, cwd: str | None = None) -> Result:
        """Wall time from fork to reaped, exit code, ru_maxrss, output. A
        blocking wait4 keeps the timing exact; a timer kills a hung child."""
        t0 = time.perf_counter()
        proc, out, err = self._spawn(argv, cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.daemon = True
        timer.start()
        try:
            _pid, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        return self._finish(proc, out, err, t0, status, ru)

    def run_sampled(self, argv: list[str], interval: float = 0.002, timeout: float = 60.0) -> tuple[Result, "TreePeak"]:
        """Run while sampling the child's whole process tree (every `interval`
        seconds): the peak of the summed RSS (and PSS) of all its live
        descendants. Timing from this call is perturbed by the sampling."""
        peak = TreePeak()
        t0 = time.perf_counter()
        proc, out, err = self._spawn(argv)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak.sample(proc.pid)
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(interval)
        return self._finish(proc, out, err, t0, status, ru), peak


# --- process-tree memory ------------------------------------------------------
def _ppids() -> dict[int, int]:
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
            rest = data.rsplit(b")", 1)[1].split()
            if rest[0] == b"Z":  # a zombie holds no memory
                continue
            table[int(name)] = int(rest[1])
        except (OSError, IndexError, ValueError):
            continue
    return table


def tree(root: int) -> list[int]:
    """`root` and its live descendants (scans /proc: this kernel has no
    /proc/PID/task/TID/children)."""
    ppid = _ppids()
    kids: dict[int, list[int]] = {}
    for pid, parent in ppid.items():
        kids.setdefault(parent, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in ppid:
            out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE // 1024
    except (OSError, IndexError, ValueError):
        return 0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


@dataclass
class TreePeak:
    rss_kib: int = 0  # peak over samples of the sum of RSS over the tree
    pss_kib: int = 0  # peak over samples of the sum of PSS (shared pages split)
    procs_at_peak: int = 0
    max_procs: int = 0
    samples: int = 0
    names: set[str] = field(default_factory=set)

    def sample(self, root: int) -> None:
        pids = tree(root)
        if not pids:
            return
        self.samples += 1
        rss = sum(rss_kib(p) for p in pids)
        pss = sum(pss_kib(p) for p in pids)
        if rss > self.rss_kib:
            self.rss_kib, self.procs_at_peak = rss, len(pids)
        self.pss_kib = max(self.pss_kib, pss)
        self.max_procs = max(self.max_procs, len(pids))
        for p in pids:
            try:
                with open(f"/proc/{p}/comm") as f:
                    self.names.add(f.read().strip())
            except OSError:
                pass


# --- bundles and runtimes -----------------------------------------------------
def helpers_bundle():
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from helpers import bundle  # noqa: E402

    return bundle


def zentry_argv() -> list[str] | None:
    """The zentry console script beside this interpreter (no pyenv shim)."""
    return helpers_bundle().zentry_command()


def which(name: str) -> str | None:
    return shutil.which(name)


def children_maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def fmt_ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:.1f}"


def fmt_ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "-"
    return f"{a / b:.1f}x"
