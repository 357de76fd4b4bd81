"""The pid engines see is the container's own (design §2), checked against runc in the same test.

`state`'s pid and every --pid-file name a process in all the container's
namespaces and cgroups; after `create` exits that process is a child of the
caller's subreaper (the engine's, as conmon or the shim), which reaps it;
no runtime process keeps the caller's stdio.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from helpers.bundle import zentry_command
from helpers.wait import wait_for

pytestmark = pytest.mark.root

NAMESPACES = ("mnt", "pid", "net", "ipc", "uts", "cgroup", "user")
ALL_NS = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")]


class Runtime:
    """One runtime CLI (zentry or runc) with a private --root."""

    def __init__(self, name: str, argv: list[str], root: str) -> None:
        self.name, self.argv, self.root = name, argv, root
        self.ids: list[str] = []

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, "--root", self.root, *map(str, args)]

    def __call__(self, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("capture_output", True)
        return subprocess.run(self.cmd(*args), text=True, timeout=timeout, **kw)

    def create(self, bundle, cid: str, *extra: str, **kw) -> subprocess.CompletedProcess:
        self.ids.append(cid)
        # files, not pipes: the container keeps create's stdio
        with tempfile.TemporaryFile() as out:
            r = subprocess.run(self.cmd("create", "--bundle", bundle, *extra, cid), stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60, **kw)
            out.seek(0)
            r.stdout = r.stderr = out.read().decode(errors="replace")
        assert r.returncode == 0, f"{self.name}: {r.stdout}"
        return r

    def state(self, cid: str) -> dict:
        return json.loads(self("state", cid).stdout)

    def cleanup(self) -> None:
        for cid in self.ids:
            self("delete", "--force", cid)


@pytest.fixture
def runtimes(zentry, tmp_path):
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    made = [Runtime("zentry", zentry_command(), str(zentry.root)), Runtime("runc", ["runc"], str(tmp_path / "runc-root"))]
    try:
        yield made
    finally:
        for rt in made:
            rt.cleanup()


def ns_of(pid: int) -> dict[str, str]:
    return {name: os.readlink(f"/proc/{pid}/ns/{name}") for name in NAMESPACES}


def cgroups_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return f.read()


def ppid_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def cmdline_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def unique(rt: Runtime, name: str) -> str:
    return f"{name}-{rt.name}-{os.getpid()}"


def test_state_and_pid_files_name_a_process_in_every_container_namespace_and_cgroup(runtimes, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"], linux={"namespaces": ALL_NS})
    for rt in runtimes:
        cid = unique(rt, "ns")
        pid_file = tmp_path / f"{cid}.pid"
        rt.create(bundle, cid, "--pid-file", pid_file)
        pid = rt.state(cid)["pid"]
        assert int(pid_file.read_text()) == pid, rt.name
        assert rt("start", cid).returncode == 0
        assert wait_for(lambda: cmdline_of(pid) == ["sleep", "60"]), rt.name  # the container's init itself, once started
        exec_pid_file = tmp_path / f"{cid}.exec.pid"
        # not a pipe: the exec'd process keeps exec's stdio (as with runc)
        r = rt("exec", "--detach", "--pid-file", exec_pid_file, cid, "sleep", "30", capture_output=False,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert r.returncode == 0, (rt.name, r.stderr)
        exec_pid = int(exec_pid_file.read_text())
        # --detach --pid-file names the exec'd process, not a runtime helper
        assert cmdline_of(exec_pid) == ["sleep", "30"], rt.name
        assert ns_of(pid) == ns_of(exec_pid), rt.name
        assert ns_of(pid)["mnt"] != os.readlink("/proc/self/ns/mnt"), rt.name
        assert ns_of(pid)["pid"] != os.readlink("/proc/self/ns/pid"), rt.name
        assert cgroups_of(pid) == cgroups_of(exec_pid), rt.name
        assert cgroups_of(pid) != cgroups_of(os.getpid()), rt.name


def test_nsenter_on_the_state_pid_sees_the_container_root(runtimes, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    with open(bundle / "rootfs" / "only-in-the-container", "w"):
        pass
    for rt in runtimes:
        cid = unique(rt, "nsenter")
        rt.create(bundle, cid)
        pid = rt.state(cid)["pid"]
        r = subprocess.run(["nsenter", "-t", str(pid), "-m", "ls", "/"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, (rt.name, r.stderr)
        assert "only-in-the-container" in r.stdout.split(), (rt.name, r.stdout)


#: A small engine: a child subreaper that runs `create`, then checks the
#: init's parent and reaps it itself, as conmon and the containerd shim do.
SUBREAPER = textwrap.dedent("""
    import ctypes, json, os, subprocess, sys
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    create, start, pid_file = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    with open(os.devnull, "w") as null:
        rc = subprocess.call(create, stdin=subprocess.DEVNULL, stdout=null, stderr=null)
    pid = int(open(pid_file).read())
    with open(f"/proc/{pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    own_mnt = os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    subprocess.check_call(start, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": rc, "pid": pid, "ppid": ppid, "me": os.getpid(), "own_mnt": own_mnt, "status": os.waitstatus_to_exitcode(status)}))
""")


def test_after_create_the_init_is_a_child_of_the_callers_subreaper(runtimes, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sh", "-c", "exit 7"])
    for rt in runtimes:
        cid = unique(rt, "reap")
        rt.ids.append(cid)
        pid_file = tmp_path / f"{cid}.pid"
        r = subprocess.run([sys.executable, "-c", SUBREAPER, json.dumps(rt.cmd("create", "--bundle", bundle, "--pid-file", pid_file, cid)),
                            json.dumps(rt.cmd("start", cid)), str(pid_file)], capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, (rt.name, r.stderr)
        seen = json.loads(r.stdout)
        assert seen["rc"] == 0, rt.name
        assert seen["ppid"] == seen["me"], (rt.name, seen)  # nothing of the runtime in between
        assert seen["own_mnt"], (rt.name, seen)  # and it is the container's process
        assert seen["status"] == 7, (rt.name, seen)  # the engine reaps it, with its status
        assert wait_for(lambda: rt.state(cid)["status"] == "stopped"), rt.name
    zentry = runtimes[0]
    # the sandbox learnt the status without being the parent
    assert json.loads(zentry("wait", unique(zentry, "reap")).stdout)["exitStatus"] == 7


def test_hooks_get_the_container_pid(runtimes, busybox_bundle, tmp_path):
    kinds = ("prestart", "createRuntime", "poststart")
    for rt in runtimes:
        cid = unique(rt, "hooks")
        hooks = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {tmp_path}/{rt.name}.{kind}.json"]}] for kind in kinds}
        bundle = busybox_bundle(["sleep", "60"], hooks=hooks)
        rt.create(bundle, cid)
        assert rt("start", cid).returncode == 0
        pid = rt.state(cid)["pid"]
        for kind in kinds:
            state = json.loads((tmp_path / f"{rt.name}.{kind}.json").read_text())
            assert state["pid"] == pid, (rt.name, kind, state)


def test_run_detach_through_a_pipe_returns_once_the_container_closed_its_stdio(runtimes, busybox_bundle):
    bundle = busybox_bundle(["sh", "-c", "echo started; exec >/dev/null 2>&1; sleep 60"])
    for rt in runtimes:
        cid = unique(rt, "pipe")
        rt.ids.append(cid)
        t0 = time.monotonic()
        # check_output reads to EOF: any runtime process holding the pipe hangs it
        out = subprocess.check_output(rt.cmd("run", "-d", "--bundle", bundle, cid), stdin=subprocess.DEVNULL, timeout=30)
        assert out == b"started\n", rt.name
        assert time.monotonic() - t0 < 20, rt.name
        assert rt.state(cid)["status"] == "running", rt.name


def test_foreground_exec_pid_file_names_the_execd_process(runtimes, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    for rt in runtimes:
        cid = unique(rt, "execpid")
        rt.create(bundle, cid)
        assert rt("start", cid).returncode == 0
        pid_file = tmp_path / f"{cid}.pid"
        proc = subprocess.Popen(rt.cmd("exec", "--pid-file", pid_file, cid, "sleep", "3"), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_for(pid_file.exists, timeout=20), rt.name
            pid = int(pid_file.read_text())
            assert cmdline_of(pid) == ["sleep", "3"], rt.name
            assert ppid_of(pid) == proc.pid, rt.name  # the exec call's own child
        finally:
            assert proc.wait(timeout=30) == 0, (rt.name, proc.stderr.read())


def test_execd_process_status_reaches_wait_and_exec(zentry, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sh", "-c", "sleep 5; exit 9"])
    assert zentry("run", "-d", "--bundle", bundle, "st1").returncode == 0
    r = zentry("exec", "st1", "sh", "-c", "exit 5")
    assert r.returncode == 5, r.stderr
    assert json.loads(zentry("wait", "st1").stdout)["exitStatus"] == 9
    assert zentry("delete", "st1").returncode == 0


def test_exec_refuses_string_args_and_reports_a_bad_cwd_as_runc(runtimes, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sleep", "60"])
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": "echo hi", "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}}))
    for rt in runtimes:
        cid = unique(rt, "parity")
        rt.create(bundle, cid)
        assert rt("start", cid).returncode == 0
        r = rt("exec", "--process", process, cid)
        assert r.returncode != 0 and r.stdout == "", (rt.name, r)  # never runs "e"
        r = rt("exec", "--cwd", "/nonexistent", cid, "true")
        assert r.returncode == 255, (rt.name, r)
        assert "Errno" not in r.stderr and "/nonexistent" in r.stderr and "no such file or directory" in r.stderr.lower(), (rt.name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (rt.name, r.stderr)
        r = rt("exec", cid, "/nonexistent")
        assert r.returncode == 255, (rt.name, r)


def _under_pty(argv: list[str], script: list[tuple[float, bytes]], settle: float = 2.5, timeout: float = 60) -> tuple[str, int]:
    """Run argv on a fresh pty; after ``settle`` s write each chunk then wait its delay. Output and status."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = b""

    def pump(seconds: float) -> None:
        nonlocal out
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return
                if not data:
                    return
                out += data

    reaped = False
    try:
        pump(settle)
        for delay, chunk in script:
            os.write(fd, chunk)
            pump(delay)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                reaped = True
                pump(0.2)
                return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)
            pump(0.1)
        raise AssertionError(f"{argv} did not end: {out!r}")
    finally:
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


def test_exec_tty_keeps_typed_ahead_input_and_returns_the_status(runtimes, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    for rt in runtimes:
        cid = unique(rt, "exectty")
        rt.create(bundle, cid)
        assert rt("start", cid).returncode == 0
        # typed before exec has put the terminal in raw mode: must not be flushed
        out, status = _under_pty(rt.cmd("exec", "-t", cid, "sh", "-c", "read line; echo got:$line; exit 4"), [(0, b"early\n")], settle=0)
        assert "got:early" in out, (rt.name, out)
        assert status == 4, (rt.name, out)


def test_run_with_a_terminal_gives_the_shell_job_control(runtimes, busybox_bundle):
    # ash opens /dev/tty for job control; no actor may hold a terminal the
    # container's process could reach instead of its own pty
    bundle = busybox_bundle(["sh"], process={"terminal": True})
    for rt in runtimes:
        cid = unique(rt, "jobs")
        rt.ids.append(cid)
        out, status = _under_pty(rt.cmd("run", "--bundle", bundle, cid),
                                 [(0.5, b"sleep 5 &\n"), (0.5, b"jobs\n"), (0.5, b"exit 3\n")])
        assert "job control turned off" not in out, (rt.name, out)
        assert "sleep 5" in out.split("jobs", 1)[1], (rt.name, out)
        assert status == 3, (rt.name, out)


def test_a_created_container_waits_for_start_as_long_as_it_takes(runtimes, busybox_bundle, tmp_path):
    bundle = busybox_bundle(["sh", "-c", "echo started"])
    for rt in runtimes:
        cid = unique(rt, "late")
        out = tmp_path / f"{cid}.out"
        with open(out, "w") as f:
            rt.ids.append(cid)
            assert subprocess.run(rt.cmd("create", "--bundle", bundle, cid), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                  timeout=60).returncode == 0
        time.sleep(8)  # longer than any socket timeout on the init's channel
        assert rt.state(cid)["status"] == "created", rt.name
        r = rt("start", cid)
        assert r.returncode == 0, (rt.name, r.stderr)
        assert wait_for(lambda: out.read_text() == "started\n"), (rt.name, out.read_text())


def test_exec_whose_pid_file_cannot_be_written_leaves_no_process_as_runc(runtimes, busybox_bundle):
    bundle = busybox_bundle(["sleep", "60"])
    for rt in runtimes:
        cid = unique(rt, "execpf")
        rt.create(bundle, cid)
        assert rt("start", cid).returncode == 0
        init = rt.state(cid)["pid"]
        for detach in (["--detach"], []):
            r = rt("exec", *detach, "--pid-file", "/nonexistent/dir/pid", cid, "sleep", "1234", capture_output=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            assert r.returncode != 0, (rt.name, detach)
            # the exec'd process was killed: nothing of it in the container
            left = lambda: [p for p in psutil.pids() if p != init and _cmdline(p) == ["sleep", "1234"] and _same_pidns(p, init)]
            assert wait_for(lambda: not left(), timeout=10), (rt.name, detach, left())


def _cmdline(pid: int) -> list[str]:
    try:
        return cmdline_of(pid)
    except OSError:
        return []


def _same_pidns(pid: int, other: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{other}/ns/pid")
    except OSError:
        return False


def test_run_with_a_terminal_under_script_gives_the_shell_job_control(runtimes, busybox_bundle):
    # as a user drives it from a terminal: util-linux script(1) owns the pty and
    # the session, zentry runs in it (not a pty this test made itself)
    import shlex

    if shutil.which("script") is None:
        pytest.skip("script(1) is not installed")
    bundle = busybox_bundle(["sh", "-i"], process={"terminal": True})
    for rt in runtimes:
        cid = unique(rt, "script")
        rt.ids.append(cid)
        proc = subprocess.Popen(["script", "-eqc", shlex.join(rt.cmd("run", "--bundle", bundle, cid)), "/dev/null"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            for line in (b"sleep 5 &\n", b"jobs\n", b"exit 3\n"):
                time.sleep(1.5)
                proc.stdin.write(line)
                proc.stdin.flush()
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = out.decode(errors="replace")
        assert "job control turned off" not in text and "can't access tty" not in text, (rt.name, text)
        assert "Running" in text.split("jobs", 1)[-1], (rt.name, text)
        assert proc.returncode == 3, (rt.name, text)
