"""Containers end to end through the CLI: every command, state rule, stdio and exit status.

Real namespaces, cgroups and processes (root). The leak guard (tests/conftest.py)
checks after each test that no process, mount, cgroup or state file is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.root


def state(zentry, cid: str) -> dict:
    r = zentry("state", cid)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_status(zentry, cid: str, want: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = zentry("state", cid)  # may not exist yet while being created
        st = json.loads(r.stdout) if r.returncode == 0 else {"status": None}
        if st["status"] == want or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_run_prints_and_returns_exit_status(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "echo out; echo err >&2; exit 7"])
    r = zentry("run", "--bundle", bundle, "r1")
    assert r.returncode == 7
    assert r.stdout == "out\n"
    assert "err" in r.stderr
    assert zentry("list", "--quiet").stdout.strip() == ""


def test_run_reports_signal_death_as_128_plus_n(zentry, busybox_bundle):
    # PID 1 ignores signals it has no handler for, even SIGKILL from inside its
    # namespace; from outside (zentry kill) SIGKILL ends it.
    bundle = busybox_bundle(["sleep", "60"])
    argv = [*zentry_prefix(zentry), "run", "--bundle", str(bundle), "sig1"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_status(zentry, "sig1", "running")["status"] == "running"
        assert zentry("kill", "sig1", "KILL").returncode == 0
        assert proc.wait(30) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def zentry_prefix(zentry) -> list[str]:
    from helpers.bundle import zentry_command

    return [*zentry_command(), "--root", str(zentry.root)]


def test_foreground_run_forwards_signals(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "trap 'echo got-usr1; exit 11' USR1; echo ready; while true; do sleep 0.1; done"])
    argv = [*zentry_prefix(zentry), "run", "--bundle", str(bundle), "fwd1"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        out, _err = proc.communicate(timeout=30)
        assert proc.returncode == 11
        assert "got-usr1" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_container_sees_its_own_namespaces(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "echo pid=$$; hostname; ls /proc/1/ns >/dev/null && cat /proc/1/comm"], hostname="box1")
    r = zentry("run", "--bundle", bundle, "ns1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "pid=1"
    assert lines[1] == "box1"


def test_create_start_state_delete(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    pid_file = tmp_path / "pid"
    r = zentry("create", "--bundle", bundle, "--pid-file", pid_file, "c1")
    assert r.returncode == 0, r.stderr
    st = state(zentry, "c1")
    assert st["status"] == "created"
    assert st["id"] == "c1" and st["bundle"] == str(bundle)
    assert int(pid_file.read_text()) == st["pid"]
    assert os.path.exists(f"/proc/{st['pid']}")
    # start needs created; a second start is a state error
    assert zentry("start", "c1").returncode == 0
    assert state(zentry, "c1")["status"] == "running"
    r = zentry("start", "c1")
    assert r.returncode != 0 and "cannot start container 'c1' in state running" in r.stderr
    # delete without --force refuses a running container
    r = zentry("delete", "c1")
    assert r.returncode != 0 and "in state running" in r.stderr
    assert zentry("delete", "--force", "c1").returncode == 0
    assert not os.path.exists(f"/proc/{st['pid']}") or _is_zombie(st["pid"])
    r = zentry("state", "c1")
    assert r.returncode != 0 and "does not exist" in r.stderr
    # delete --force is idempotent
    assert zentry("delete", "--force", "c1").returncode == 0


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_delete_of_created_container(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("create", "--bundle", bundle, "c2").returncode == 0
    assert zentry("delete", "c2").returncode == 0
    assert zentry("list", "-q").stdout.strip() == ""


TRAP_LOOP = "trap 'exit 143' TERM; trap 'exit 138' USR1; while true; do sleep 0.1; done"


def test_kill_term_then_wait_and_stopped_state(zentry, busybox_bundle):
    # PID 1 only dies of signals it handles (or of SIGKILL from outside).
    bundle = busybox_bundle(["sh", "-c", TRAP_LOOP])
    assert zentry("create", "--bundle", bundle, "k1").returncode == 0
    assert zentry("start", "k1").returncode == 0
    assert zentry("kill", "k1", "TERM").returncode == 0
    r = zentry("wait", "k1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"id": "k1", "exitStatus": 128 + signal.SIGTERM}
    st = state(zentry, "k1")
    assert st["status"] == "stopped" and st["exitStatus"] == 143
    # kill of a stopped container is an error, unless --all
    assert zentry("kill", "k1", "9").returncode != 0
    assert zentry("kill", "--all", "k1", "9").returncode == 0
    assert zentry("delete", "k1").returncode == 0


def test_kill_all_reaches_every_process(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "trap '' TERM; sleep 60 & sleep 60 & wait"])
    assert zentry("run", "-d", "--bundle", bundle, "k2").returncode == 0
    ps = zentry("ps", "--format", "json", "k2")
    assert ps.returncode == 0, ps.stderr
    pids = json.loads(ps.stdout)
    assert len(pids) == 3
    assert zentry("kill", "--all", "k2", "KILL").returncode == 0
    assert wait_status(zentry, "k2", "stopped")["status"] == "stopped"
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert zentry("delete", "k2").returncode == 0


def test_signal_names_and_numbers(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", TRAP_LOOP])
    assert zentry("run", "-d", "--bundle", bundle, "k3").returncode == 0
    assert zentry("kill", "k3", "NOTASIG").returncode != 0
    assert zentry("kill", "k3", "SIGUSR1").returncode == 0
    assert wait_status(zentry, "k3", "stopped")["exitStatus"] == 128 + signal.SIGUSR1
    assert zentry("delete", "k3").returncode == 0


def test_pause_resume_freezes_processes(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/c.new; mv /dev/shm/c.new /dev/shm/count; done"])
    assert zentry("run", "-d", "--bundle", bundle, "p1").returncode == 0
    assert zentry("pause", "p1").returncode == 0
    assert state(zentry, "p1")["status"] == "paused"
    r1 = zentry("exec", "p1", "cat", "/dev/shm/count")
    assert r1.returncode != 0 and "in state paused" in r1.stderr
    assert zentry("pause", "p1").returncode != 0  # already paused
    assert zentry("resume", "p1").returncode == 0
    assert state(zentry, "p1")["status"] == "running"
    a = int(zentry("exec", "p1", "cat", "/dev/shm/count").stdout)
    time.sleep(0.3)
    b = int(zentry("exec", "p1", "cat", "/dev/shm/count").stdout)
    assert b > a
    assert zentry("resume", "p1").returncode != 0  # not paused
    assert zentry("delete", "-f", "p1").returncode == 0


def test_pause_really_stops_progress(zentry, busybox_bundle, zentry_root):
    bundle = busybox_bundle(["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/c.new; mv /dev/shm/c.new /dev/shm/count; done"])
    assert zentry("run", "-d", "--bundle", bundle, "p2").returncode == 0
    time.sleep(0.2)
    assert zentry("pause", "p2").returncode == 0
    pid = state(zentry, "p2")["pid"]
    with open(f"/proc/{pid}/status") as f:
        assert f.read()  # the sandbox is alive
    procs = subprocess.run(["cat", f"/sys/fs/cgroup/freezer/zentry/p2/freezer.state"], capture_output=True, text=True)
    if procs.returncode == 0:
        assert procs.stdout.strip() == "FROZEN"
    assert zentry("resume", "p2").returncode == 0
    assert zentry("delete", "-f", "p2").returncode == 0


def test_exec_into_running_container(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"], hostname="exechost")
    assert zentry("run", "-d", "--bundle", bundle, "e1").returncode == 0
    r = zentry("exec", "e1", "sh", "-c", "hostname; echo $$; cat /proc/1/cmdline | tr '\\0' ' '; exit 5")
    assert r.returncode == 5, r.stderr
    host, pid, cmd = r.stdout.splitlines()
    assert host == "exechost"
    assert int(pid) > 1  # inside the container's pid namespace
    assert cmd.strip() == "sleep 60"
    r = zentry("exec", "--env", "FOO=bar", "--cwd", "/tmp", "e1", "sh", "-c", "echo $FOO $(pwd)")
    assert r.stdout.strip() == "bar /tmp"
    r = zentry("exec", "e1", "nonexistent-cmd")
    assert r.returncode != 0 and "executable file not found" in r.stderr
    assert zentry("delete", "-f", "e1").returncode == 0


def test_exec_detach_pid_file_is_a_real_waitable_process(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "e2").returncode == 0
    pid_file = tmp_path / "exec.pid"
    r = zentry("exec", "-d", "--pid-file", pid_file, "e2", "sh", "-c", "sleep 0.3; exit 9")
    assert r.returncode == 0, r.stderr
    pid = int(pid_file.read_text())
    assert os.path.exists(f"/proc/{pid}")
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)
    assert zentry("delete", "-f", "e2").returncode == 0


def test_exec_process_file(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "e3").returncode == 0
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({"args": ["sh", "-c", "id -u; echo $X"], "env": ["X=fromfile", "PATH=/bin"], "cwd": "/", "user": {"uid": 1000, "gid": 1000}}))
    r = zentry("exec", "--process", proc, "e3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000", "fromfile"]
    assert zentry("delete", "-f", "e3").returncode == 0


def test_list_formats_and_prefix_ids(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("create", "--bundle", bundle, "alpha-1").returncode == 0
    assert zentry("create", "--bundle", bundle, "alpha-2").returncode == 0
    listed = json.loads(zentry("list", "--format", "json").stdout)
    assert sorted(c["id"] for c in listed) == ["alpha-1", "alpha-2"]
    assert all(c["status"] == "created" for c in listed)
    table = zentry("list").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"]
    r = zentry("state", "alpha")
    assert r.returncode != 0 and "ambiguous" in r.stderr and "alpha-1" in r.stderr
    assert state(zentry, "alpha-2")["id"] == "alpha-2"
    assert json.loads(zentry("state", "alpha-1").stdout)["id"] == "alpha-1"
    assert zentry("delete", "alpha-1").returncode == 0
    assert state(zentry, "alpha")["id"] == "alpha-2"  # now a unique prefix
    assert zentry("delete", "alpha").returncode == 0


def test_update_memory_limit(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "u1").returncode == 0
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 64 * 1024 * 1024}, "pids": {"limit": 50}}))
    r = zentry("update", "--resources", res, "u1")
    assert r.returncode == 0, r.stderr
    stats = json.loads(zentry("events", "--stats", "u1").stdout)
    assert stats["type"] == "stats" and stats["id"] == "u1"
    assert stats["data"]["memory"]["usage"]["limit"] == 64 * 1024 * 1024
    assert stats["data"]["pids"]["limit"] == 50
    assert zentry("delete", "-f", "u1").returncode == 0


def test_events_interval_accepts_units(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "ev1").returncode == 0
    for spec in ("5", "5s", "500ms"):
        r = zentry("events", "--stats", "--interval", spec, "ev1")
        assert r.returncode == 0, r.stderr
    assert zentry("events", "--interval", "fast", "ev1").returncode != 0
    assert zentry("delete", "-f", "ev1").returncode == 0


def test_spec_and_features(zentry, tmp_path):
    r = zentry("spec", "--bundle", tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["process"]["args"] == ["sh"] and cfg["root"]["path"] == "rootfs"
    assert zentry("spec", "--bundle", tmp_path).returncode != 0  # refuses to overwrite
    feats = json.loads(zentry("features").stdout)
    assert feats["ociVersionMin"].startswith("1.")
    assert "pid" in feats["linux"]["namespaces"]


def test_do_runs_host_command_sandboxed(zentry):
    r = zentry("do", "--", "/bin/sh", "-c", "echo hi; echo pid=$$; touch /etc/zentry-do-probe 2>/dev/null || echo ro")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hi", "pid=1", "ro"]
    assert not os.path.exists("/etc/zentry-do-probe")


def test_wait_on_running_container_returns_when_it_exits(zentry, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "sleep 0.5; exit 4"])
    assert zentry("run", "-d", "--bundle", bundle, "w1").returncode == 0
    r = zentry("wait", "w1")
    assert json.loads(r.stdout)["exitStatus"] == 4
    assert zentry("delete", "w1").returncode == 0


def test_rlimits_user_and_capabilities_applied(zentry, busybox_bundle):
    bundle = busybox_bundle(
        ["sh", "-c", "ulimit -n; id -u; id -g; grep CapBnd /proc/self/status"],
        process={"user": {"uid": 1000, "gid": 1001}, "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}],
                 "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}},
    )
    r = zentry("run", "--bundle", bundle, "lim1")
    assert r.returncode == 0, r.stderr
    nofile, uid, gid, capbnd = r.stdout.splitlines()
    assert (nofile, uid, gid) == ("123", "1000", "1001")
    # (a non-root user keeps no effective capability across execve without
    # ambient ones, as with runc; the bounding set shows what was dropped)
    assert int(capbnd.split()[1], 16) == 1 << 5  # CAP_KILL only


def test_container_hooks_run_in_the_container(zentry, busybox_bundle, tmp_path):
    seen = tmp_path / "create-container.json"
    bundle = busybox_bundle(
        ["sh", "-c", "cat /dev/shm/started"],
        hooks={
            # createContainer: path in the runtime's mount namespace, state on stdin
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {seen}"]}],
            # startContainer: path resolved inside the container, before the process
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo from-start-hook > /dev/shm/started"]}],
        },
    )
    r = zentry("run", "--bundle", bundle, "hk1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "from-start-hook"
    state = json.loads(seen.read_text())
    assert state["id"] == "hk1" and state["bundle"] == str(bundle) and state["pid"] > 0


def test_failing_start_container_hook_fails_start(zentry, busybox_bundle):
    bundle = busybox_bundle(["true"], hooks={"startContainer": [{"path": "/bin/false"}]})
    assert zentry("create", "--bundle", bundle, "hk2").returncode == 0
    r = zentry("start", "hk2")
    assert r.returncode != 0 and "startContainer hook" in r.stderr
    assert zentry("delete", "--force", "hk2").returncode == 0


def test_runtime_hooks_and_their_failure_rules(zentry, busybox_bundle, tmp_path):
    log = tmp_path / "hooks.log"
    def hook(name: str) -> dict:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {name} >> {log}"]}
    bundle = busybox_bundle(["sleep", "60"], hooks={
        "prestart": [hook("prestart")], "createRuntime": [hook("createRuntime")],
        "poststart": [hook("poststart"), {"path": "/bin/false"}],  # a failing poststart is only a warning
        "poststop": [hook("poststop")],
    })
    assert zentry("create", "--bundle", bundle, "hk3").returncode == 0
    assert log.read_text().split() == ["prestart", "createRuntime"]
    assert zentry("start", "hk3").returncode == 0
    assert log.read_text().split()[-1] == "poststart"
    assert zentry("delete", "--force", "hk3").returncode == 0
    assert log.read_text().split()[-1] == "poststop"
    # a failing createRuntime hook fails create and leaves nothing behind
    bad = busybox_bundle(["true"], hooks={"createRuntime": [{"path": "/bin/false"}]})
    r = zentry("create", "--bundle", bad, "hk4")
    assert r.returncode != 0 and "createRuntime hook" in r.stderr
    assert zentry("list", "-q").stdout.strip() == ""


def _with_inherited_fd(zentry, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """`zentry *args` started with fd 3 open (not close-on-exec) on a file holding "inherited"."""
    from helpers.bundle import zentry_command

    secret = tmp_path / "inherited"
    secret.write_text("inherited\n")
    # the shell opens fd 3 in the child only (this process's low fds are pytest's)
    argv = ["sh", "-c", 'exec 3<"$0"; exec "$@"', str(secret), *zentry_command(), "--root", str(zentry.root), *args]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


def test_only_stdio_and_preserved_fds_reach_the_container(zentry, busybox_bundle, tmp_path):
    # runc closes what its caller left open at execve; --preserve-fds N keeps 3 .. 3+N-1
    listing = "for f in /proc/self/fd/*; do echo ${f##*/}; done | sort -n | tr '\\n' ' '; echo; (cat <&3) 2>/dev/null || echo no-fd-3"
    bundle = busybox_bundle(["sh", "-c", listing])
    r = _with_inherited_fd(zentry, tmp_path, "run", "--bundle", str(bundle), "fd1")
    assert r.returncode == 0, r.stderr
    fds, fd3 = r.stdout.splitlines()
    assert fds.split() == ["0", "1", "2", "3"]  # 3: the glob's own directory, not the inherited file
    assert fd3 == "no-fd-3"
    r = _with_inherited_fd(zentry, tmp_path, "run", "--preserve-fds", "1", "--bundle", str(bundle), "fd2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == "inherited"


def test_exec_gets_only_stdio_and_preserved_fds(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "fd3").returncode == 0
    try:
        r = _with_inherited_fd(zentry, tmp_path, "exec", "fd3", "sh", "-c", "(cat <&3) 2>/dev/null || echo no-fd-3")
        assert (r.returncode, r.stdout) == (0, "no-fd-3\n"), r.stderr
        r = _with_inherited_fd(zentry, tmp_path, "exec", "--preserve-fds", "1", "fd3", "sh", "-c", "cat <&3")
        assert (r.returncode, r.stdout) == (0, "inherited\n"), r.stderr
    finally:
        zentry("delete", "--force", "fd3")


def test_a_new_network_namespace_has_loopback_up(zentry, busybox_bundle):
    # as runc: localhost works in a container without networking
    script = "ip -o link show lo | grep -o '<[^>]*>'; ip -o addr show lo | grep -o 'inet [0-9./]*'; ip -o link | wc -l"
    bundle = busybox_bundle(["sh", "-c", script])
    r = zentry("run", "--bundle", bundle, "lo1")
    assert r.returncode == 0, r.stderr
    flags, inet, links = r.stdout.split("\n")[:3]
    assert "UP" in flags.strip("<>").split(",")
    assert inet == "inet 127.0.0.1/8"
    assert links.strip() == "1"  # its own namespace: nothing of the host's


def test_a_preserved_fd_is_held_by_the_container_alone_as_runc(zentry, busybox_bundle, tmp_path):
    """`run -d --preserve-fds 1` with fd 3 a pipe: once the container closes its
    copy, the reader sees end of file (no actor of zentry keeps the caller's fds)."""
    import select
    import shutil
    import sys
    import tempfile

    from helpers.bundle import zentry_command
    from helpers.runc_cli import Runc

    bundle = busybox_bundle(["sh", "-c", "exec 3>&-; sleep 30"])

    def reader_sees_eof(command: list[str]) -> bool:
        r, w = os.pipe()
        try:
            with tempfile.TemporaryFile() as out:
                as_fd3 = "import os, sys; w = int(sys.argv[1]); os.dup2(w, 3); os.close(w); os.execvp(sys.argv[2], sys.argv[2:])"
                code = subprocess.run([sys.executable, "-c", as_fd3, str(w), *command], pass_fds=(w,),
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60).returncode
                out.seek(0)
                assert code == 0, out.read()
            os.close(w)
            w = -1
            ready, _, _ = select.select([r], [], [], 10)
            return bool(ready) and os.read(r, 1) == b""
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    runc = Runc()
    try:
        assert reader_sees_eof([shutil.which("runc"), "--root", runc.root, "run", "-d", "--preserve-fds", "1", "--bundle", str(bundle), "pf-runc"])
    finally:
        runc.close()
    try:
        assert reader_sees_eof([*zentry_command(), "--root", str(zentry.root), "run", "-d", "--preserve-fds", "1", "--bundle", str(bundle), "pf1"])
    finally:
        zentry("delete", "--force", "pf1")
