"""containerd (ctr + containerd-shim-runc-v2) drives the runtime under test:
run, exit status, exec, kill, pause/resume, terminal."""
from __future__ import annotations

import time

import pytest

from helpers.engines import CONTAINER_PATH_ENV, run_in_pty

pytestmark = [pytest.mark.e2e, pytest.mark.root]

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.2; done"


def start_detached(ctr, rootfs, cid, *cmd):
    res = ctr.ctr("run", "--detach", "--rootfs", "--env", CONTAINER_PATH_ENV,
                  "--runtime", "io.containerd.runc.v2", "--runc-binary", ctr.runtime,
                  str(rootfs), cid, *cmd)
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
