"""Parallel lifecycle load: N clients each run create/start/wait/delete cycles
on one --root, every step checked. Shared by bench/load.py (the long run)
and tests/fault/test_load.py (a short one in CI).

A cycle fails when a command exits non-zero, hangs past its timeout, or
`wait` does not report the container's exit status (0: the process is
/bin/true). Failures are collected, never raised, so one bad cycle does
not hide the others.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    cycles: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cycle_seconds: list[float] = field(default_factory=list)


def _run(argv: list[str], timeout: float) -> tuple[int, str, str]:
    # files, not pipes: the container keeps create's stdio (as with runc)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        except OSError as error:  # a failure of this cycle, not the end of its client
            return -1, "", f"cannot run {argv[0]}: {error}"
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -1, "", f"timed out after {timeout}s"
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def cycle(zentry: list[str], root: str, bundle: str, cid: str, timeout: float = 60.0) -> str | None:
    """One create/start/wait/delete; None if every step did as told, else what went wrong."""
    base = [*zentry, "--root", root]
    for step in (["create", "--bundle", bundle, cid], ["start", cid], ["wait", cid], ["delete", cid]):
        rc, out, err = _run(base + step, timeout)
        if rc != 0:
            if step[0] != "create":
                _run(base + ["delete", "--force", cid], timeout)
            return f"{cid}: {step[0]} exit {rc}: {err.strip()[-300:]}"
        if step[0] == "wait":
            try:
                status = json.loads(out)["exitStatus"]
            except (ValueError, KeyError, TypeError):
                status = out.strip()
            if status != 0:
                _run(base + ["delete", "--force", cid], timeout)
                return f"{cid}: wait said {status!r}, the container's process exits 0"
    return None


def run_load(zentry: list[str], root: str, bundle: str, *, clients: int, cycles: int, prefix: str = "ld") -> LoadResult:
    """``clients`` threads, ``cycles`` cycles each, all at once."""
    result = LoadResult()
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(cycles):
            t0 = time.perf_counter()
            failure = cycle(zentry, root, bundle, f"{prefix}{n}-{i}")
            with lock:
                result.cycles += 1
                result.cycle_seconds.append(time.perf_counter() - t0)
                if failure:
                    result.failures.append(failure)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t0
    return result
