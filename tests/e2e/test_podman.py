"""podman drives the runtime under test: run, exit codes, terminal, detached
containers with exec/stop/rm, pause/unpause, pods.  The everyday flows (run,
run -t, exec, stop, pods) are checked for runc and the runtime under test in
the same test."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.root]


def run_rootfs(podman, rootfs, *cmd, opts=(), timeout=120):
    return podman("run", "--rm", "--network", "none", *opts, "--rootfs", str(rootfs), *cmd,
                  timeout=timeout)


def state_of(podman, name: str) -> str:
    res = podman("inspect", "--format", "{{.State.Status}}", name)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_run_echo(podmen):
    for label, podman, rootfs in podmen:
        res = run_rootfs(podman, rootfs, "/bin/echo", "hi")
        assert (res.returncode, res.stdout) == (0, "hi\n"), f"{label}: {res.stderr}"


def test_exit_code_propagated(podman, rootfs):
    res = run_rootfs(podman, rootfs, "/bin/sh", "-c", "exit 3")
    assert res.returncode == 3, res.stderr


def test_missing_command_is_127(podman, rootfs):
    res = run_rootfs(podman, rootfs, "/bin/no-such-command")
    assert res.returncode == 127, (res.stdout, res.stderr)


def test_run_with_terminal(podmen):
    # conmon makes the pty (console socket) even though our stdin is /dev/null.
    for label, podman, rootfs in podmen:
        res = run_rootfs(podman, rootfs, "/bin/sh", "-c", "tty; echo ok; exit 4", opts=("-t",))
        assert res.returncode == 4, f"{label}: {res.stderr}"
        lines = res.stdout.replace("\r", "").split("\n")
        assert lines[0].startswith("/dev/pts/"), f"{label}: {res.stdout}"
        assert "ok" in lines, f"{label}: {res.stdout}"


def test_stdout_and_stderr_are_separate(podman, rootfs):
    res = run_rootfs(podman, rootfs, "/bin/sh", "-c", "echo out; echo err >&2")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "out\n"
    assert "err" in res.stderr


LOOP = "trap 'exit 0' TERM; while :; do sleep 0.2; done"


def test_detached_exec_stop_rm(podmen):
    for label, podman, rootfs in podmen:
        res = podman("run", "-d", "--name", "c1", "--network", "none", "--rootfs", str(rootfs),
                     "/bin/sh", "-c", LOOP)
        assert res.returncode == 0, f"{label}: {res.stderr}"
        assert state_of(podman, "c1") == "running", label

        res = podman("exec", "c1", "/bin/sh", "-c", "echo from-exec; exit 5")
        assert (res.returncode, res.stdout) == (5, "from-exec\n"), f"{label}: {res.stderr}"
        res = podman("exec", "-t", "c1", "/bin/sh", "-c", "tty")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        assert res.stdout.startswith("/dev/pts/"), f"{label}: {res.stdout}"

        res = podman("stop", "--time", "10", "c1")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        assert state_of(podman, "c1") == "exited", label
        res = podman("inspect", "--format", "{{.State.ExitCode}}", "c1")
        assert res.stdout.strip() == "0", label  # the TERM trap ran: graceful stop

        res = podman("rm", "c1")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        assert podman("ps", "-aq").stdout.strip() == "", label


def test_kill(podman, rootfs):
    res = podman("run", "-d", "--name", "k1", "--network", "none", "--rootfs", str(rootfs),
                 "/bin/sleep", "1000")
    assert res.returncode == 0, res.stderr
    assert podman("kill", "k1").returncode == 0
    assert podman("wait", "k1").stdout.strip() == "137"
    assert podman("rm", "k1").returncode == 0


def test_pause_unpause(podman, rootfs):
    res = podman("run", "-d", "--name", "p1", "--network", "none", "--rootfs", str(rootfs),
                 "/bin/sh", "-c", LOOP)
    assert res.returncode == 0, res.stderr
    res = podman("pause", "p1")
    assert res.returncode == 0, res.stderr
    assert state_of(podman, "p1") == "paused"
    res = podman("unpause", "p1")
    assert res.returncode == 0, res.stderr
    assert state_of(podman, "p1") == "running"
    res = podman("exec", "p1", "/bin/echo", "alive")
    assert (res.returncode, res.stdout) == (0, "alive\n"), res.stderr
    res = podman("rm", "--force", "--time", "0", "p1")
    assert res.returncode == 0, res.stderr


def test_pod_members_share_namespaces(podmen):
    # The infra container is built locally from catatonit (no registry here)
    # and also runs with the runtime under test.
    for label, podman, rootfs in podmen:
        res = podman("pod", "create", "--name", "pod1", "--network", "none", "--hostname", "podhost")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        res = podman("run", "-d", "--pod", "pod1", "--name", "m1", "--rootfs", str(rootfs),
                     "/bin/sh", "-c", LOOP)
        assert res.returncode == 0, f"{label}: {res.stderr}"
        res = podman("run", "--rm", "--pod", "pod1", "--rootfs", str(rootfs),
                     "/bin/sh", "-c", "hostname; readlink /proc/self/ns/uts")
        assert res.returncode == 0, f"{label}: {res.stderr}"
        hostname, uts = res.stdout.split()
        assert hostname == "podhost", label
        res = podman("exec", "m1", "readlink", "/proc/self/ns/uts")
        assert res.stdout.strip() == uts, label  # joined the infra's namespace by path
        res = podman("pod", "rm", "--force", "pod1")
        assert res.returncode == 0, f"{label}: {res.stderr}"
