"""containerd (ctr + containerd-shim-runc-v2) drives the runtime under test:
run, exit status, exec, kill, pause/resume, terminal."""
from __future__ import annotations

import json
import time

import pytest

from helpers.engines import run_in_pty

pytestmark = [pytest.mark.e2e, pytest.mark.root]

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.2; done"


def start_detached(ctr, rootfs, cid, *cmd, runtime=None):
    """`ctr run --detach` with `runtime` (default: the runtime under test)."""
    res = ctr.ctr(*ctr.run_argv(str(rootfs), cid, *cmd, opts=("--detach",), runtime=runtime)[5:])
    assert res.returncode == 0, res.stderr
    assert task_status(ctr, cid) == "RUNNING"


def task_status(ctr, cid) -> str:
    for line in ctr.ctr("task", "ls").stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == cid:
            return fields[-1]
    return "ABSENT"


def wait_status(ctr, cid, want, timeout=10.0) -> str:
    deadline = time.monotonic() + timeout
    while (status := task_status(ctr, cid)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def remove(ctr, cid):
    assert ctr.ctr("task", "delete", cid).returncode == 0
    assert ctr.ctr("container", "delete", cid).returncode == 0


def test_run_echo(ctr, rootfs):
    res = ctr.ctr(*ctr.run_argv(str(rootfs), "echo1", "/bin/echo", "hi")[5:])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hi\n"


def test_exit_code_propagated(ctr, rootfs):
    res = ctr.ctr(*ctr.run_argv(str(rootfs), "exit3", "/bin/sh", "-c", "exit 3")[5:])
    assert res.returncode == 3, res.stderr


def test_task_exec(ctr, rootfs):
    start_detached(ctr, rootfs, "exec1", "/bin/sh", "-c", LOOP)
    res = ctr.ctr("task", "exec", "--exec-id", "e1", "exec1", "/bin/sh", "-c", "echo in-exec; exit 5")
    assert res.returncode == 5, res.stderr
    assert res.stdout == "in-exec\n"
    res = ctr.ctr("task", "ps", "exec1")
    assert res.returncode == 0, res.stderr
    ctr.ctr("task", "kill", "exec1")
    assert wait_status(ctr, "exec1", "STOPPED") == "STOPPED"
    remove(ctr, "exec1")


def test_task_kill(ctr, rootfs):
    start_detached(ctr, rootfs, "kill1", "/bin/sleep", "1000")
    res = ctr.ctr("task", "kill", "--signal", "SIGKILL", "kill1")
    assert res.returncode == 0, res.stderr
    assert wait_status(ctr, "kill1", "STOPPED") == "STOPPED"
    remove(ctr, "kill1")


def test_task_kill_term_is_graceful(ctr, rootfs):
    start_detached(ctr, rootfs, "term1", "/bin/sh", "-c", LOOP)
    res = ctr.ctr("task", "kill", "term1")  # SIGTERM
    assert res.returncode == 0, res.stderr
    assert wait_status(ctr, "term1", "STOPPED") == "STOPPED"
    remove(ctr, "term1")


def test_task_pause_resume(ctr, rootfs):
    start_detached(ctr, rootfs, "pause1", "/bin/sh", "-c", LOOP)
    res = ctr.ctr("task", "pause", "pause1")
    assert res.returncode == 0, res.stderr
    assert task_status(ctr, "pause1") == "PAUSED"
    res = ctr.ctr("task", "resume", "pause1")
    assert res.returncode == 0, res.stderr
    assert task_status(ctr, "pause1") == "RUNNING"
    res = ctr.ctr("task", "exec", "--exec-id", "e1", "pause1", "/bin/echo", "alive")
    assert (res.returncode, res.stdout) == (0, "alive\n"), res.stderr
    ctr.ctr("task", "kill", "--signal", "SIGKILL", "pause1")
    assert wait_status(ctr, "pause1", "STOPPED") == "STOPPED"
    remove(ctr, "pause1")


def test_run_with_tty(ctr, rootfs):
    # ctr --tty wants a console on its own stdio: give it a pty.
    argv = ctr.run_argv(str(rootfs), "tty1", "/bin/sh", "-c", "tty; echo ok; exit 4", opts=("--tty",))
    res = run_in_pty(argv, timeout=60)
    assert res.returncode == 4, res.output
    lines = res.output.replace("\r", "").split("\n")
    assert lines[0].startswith("/dev/pts/"), res.output
    assert "ok" in lines


# A sleeping busybox in its own cgroup (runc: ~0.5 MB, ~15 ms of CPU); the
# whole machine, or a host-side supervisor, is far above both.
SMALL_MEMORY = 5 * 1024 * 1024
SMALL_CPU_NS = 1_000_000_000


def metric(metrics: dict, *path: str):
    for key in path:
        metrics = metrics.get(key) if isinstance(metrics, dict) else None
    return metrics


def test_task_metrics_are_the_containers_own(ctr, runtimes, busybox_rootfs):
    # The shim finds the cgroup from the pid the runtime wrote (init.pid):
    # kubelet's stats, HPA and OOM events come from these numbers.
    for i, (label, runtime) in enumerate(runtimes):
        cid = f"metrics{i}"
        start_detached(ctr, busybox_rootfs(f"rootfs{i}"), cid, "/bin/sleep", "1000", runtime=runtime)
        res = ctr.ctr("task", "metrics", "--format", "json", cid)
        assert res.returncode == 0, f"{label}: {res.stderr}"
        metrics = json.loads(res.stdout)
        # protobuf's JSON omits zero and absent values: those read as None.
        pids, memory, cpu = (metric(metrics, *path) for path in
                             (("pids", "current"), ("memory", "usage", "usage"), ("cpu", "usage", "total")))
        summary = f"{label}: pids {pids}, memory {memory} B, CPU {cpu} ns"
        assert pids in (1, 2), summary
        assert memory is not None and memory < SMALL_MEMORY, summary
        assert cpu is not None and cpu < SMALL_CPU_NS, summary
        ctr.ctr("task", "kill", "--signal", "SIGKILL", cid)
        assert wait_status(ctr, cid, "STOPPED") == "STOPPED", label
        remove(ctr, cid)
