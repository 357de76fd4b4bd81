"""Nobody but root reaches a sandbox: sockets, state, the tap, metrics; planted state is refused.

The unprivileged side runs as ``nobody`` (``setpriv --reuid 65534 --regid
65534 --clear-groups``) with the system's ``/usr/bin/python3`` (root's
interpreter lives under ``/root``, which nobody cannot enter). Everything
zentry makes here is made under umask 000: modes must not depend on it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers.bundle import zentry_command

pytestmark = [pytest.mark.root, pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv is not installed")]

NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
SYSTEM_PYTHON = "/usr/bin/python3"

#: run as nobody: try every path given; print one JSON object {path: "ok" | errno name}
PROBE = r"""
import errno, json, os, socket, stat, sys
out = {}
for path in sys.argv[1:]:
    try:
        st = os.stat(path)
        if stat.S_ISSOCK(st.st_mode):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError as err:
                if err.errno != errno.EPROTOTYPE:
                    raise
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(path)
            s.close()
        elif stat.S_ISDIR(st.st_mode):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        out[path] = "ok"
    except OSError as err:
        out[path] = errno.errorcode.get(err.errno, str(err.errno))
print(json.dumps(out))
"""


def as_nobody(*paths: str) -> dict[str, str]:
    r = subprocess.run([*NOBODY, SYSTEM_PYTHON, "-c", PROBE, *paths], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(autouse=True)
def _nobody_works():
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip("no /usr/bin/python3 for the unprivileged side")


@pytest.fixture
def open_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def _everything_under(*tops: str) -> list[str]:
    found = []
    for top in tops:
        for where, dirs, files in os.walk(top):
            found.append(where)
            found.extend(os.path.join(where, f) for f in files)
    return found


def test_nobody_reaches_no_socket_and_no_state_of_a_running_sandbox(zentry, busybox_bundle, open_umask):
    os.chmod(zentry.root, 0o711)  # as /run/zentry: others may pass through, nothing more
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "acc1").returncode == 0
    try:
        state = json.loads(Path(zentry.root, "acc1", "state.json").read_text())
        paths = _everything_under(str(zentry.root), state["bus_dir"])
        sockets = [p for p in paths if stat.S_ISSOCK(os.lstat(p).st_mode)]
        assert any(p.endswith("events.sock") for p in sockets) and any(p.endswith("controller.sock") for p in sockets)
        for sock in sockets:  # whatever the umask: 0600 in a 0700 directory
            assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600, sock
            assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700, sock
        assert stat.S_IMODE(os.stat(zentry.root).st_mode) & 0o022 == 0
        seen = as_nobody(*paths)
        reached = {p: r for p, r in seen.items() if r == "ok" and p != str(zentry.root) and not os.path.isdir(p)}
        assert reached == {}, reached
        assert seen[str(zentry.root / "acc1" / "state.json")] == "EACCES"
        assert all(seen[s] == "EACCES" for s in sockets), seen
    finally:
        zentry("delete", "--force", "acc1")


def test_a_root_others_can_write_is_refused_and_planted_state_is_never_acted_on(zentry, tmp_path, busybox_bundle):
    """The planted-root attack: nobody writes <root>/evil/state.json naming a victim
    process and directory; root's `delete --force` must touch neither."""
    victim = subprocess.Popen(["sleep", "120"])
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    (victim_dir / "precious").write_text("x")
    root = Path(tempfile.mkdtemp(prefix="zr-open-", dir="/tmp"))
    try:
        os.chmod(root, 0o777)
        planted = {"id": "evil", "sandbox_id": "evil", "bundle": "/", "bus_dir": str(victim_dir), "status": "running",
                   "controller_pid": 999999, "sandbox_pid": victim.pid, "gofer_pid": victim.pid, "pid": victim.pid,
                   "config": {"linux": {"cgroupsPath": "/zentry-planted-nothing"}}}
        plant = ("import json, os, sys; os.mkdir(sys.argv[1] + '/evil'); "
                 "open(sys.argv[1] + '/evil/state.json', 'w').write(sys.argv[2])")
        r = subprocess.run([*NOBODY, SYSTEM_PYTHON, "-c", plant, str(root), json.dumps(planted)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr  # the root is open: the plant succeeds
        cli = [*zentry_command(), "--root", str(root)]
        for argv in (["delete", "--force", "evil"], ["state", "evil"], ["kill", "evil", "KILL"], ["list"]):
            r = subprocess.run([*cli, *argv], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
            assert r.returncode == 1, (argv, r.stdout)
            assert re.fullmatch(r"zentry: refusing state root \S+: writable by group or others \(mode 0777\).*\n", r.stderr), r.stderr
        # the root fixed, the planted entry (nobody's) is still refused
        os.chmod(root, 0o711)
        r = subprocess.run([*cli, "delete", "--force", "evil"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "refusing container directory" in r.stderr and "owned by uid 65534" in r.stderr, r.stderr
        assert subprocess.run([*cli, "list", "-q"], capture_output=True, text=True).stdout == ""
        assert victim.poll() is None and (victim_dir / "precious").exists()
        # root-owned, private, but naming a directory outside the root: refused
        shutil.rmtree(root / "evil")
        os.mkdir(root / "evil", 0o711)
        (root / "evil" / "state.json").write_text(json.dumps(planted))
        os.chmod(root / "evil" / "state.json", 0o600)
        r = subprocess.run([*cli, "delete", "--force", "evil"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "bus directory" in r.stderr, r.stderr
        assert victim.poll() is None and (victim_dir / "precious").exists()
        # its own directory, but pids whose start time it never recorded (reused or planted): not signalled
        planted["bus_dir"] = str(root / "evil")
        (root / "evil" / "state.json").write_text(json.dumps(planted))
        r = subprocess.run([*cli, "delete", "--force", "evil"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        assert not (root / "evil").exists()
        time.sleep(0.2)
        assert victim.poll() is None and (victim_dir / "precious").exists()
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_a_recorded_start_time_proves_the_process(tmp_path):
    from zentry.actors.state import Record, process_start

    proc = subprocess.Popen(["sleep", "60"])
    try:
        rec = Record(id="p", bundle="/", sandbox_id="p", bus_dir="/x", sandbox_pid=proc.pid)
        rec.note_pid_starts()
        assert rec.pid_starts == {str(proc.pid): process_start(proc.pid)}
        fd = rec.own_process(proc.pid)
        assert fd is not None
        os.close(fd)
        assert rec.own_process(os.getpid()) is None  # not a pid of the record
        rec.pid_starts[str(proc.pid)] += 1  # as if the pid had been reused since
        assert rec.own_process(proc.pid) is None and not rec.signal_own(proc.pid, signal.SIGKILL)
        assert proc.poll() is None
        rec.note_pid_starts()  # a known pid keeps its recorded start
        assert not rec.signal_own(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_nobody_cannot_follow_a_served_tap_and_serving_needs_a_private_directory(zentry, busybox_bundle, tmp_path, open_umask):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    r = zentry("tap", "--serve", f"ipc://{shared}/tap.sock", "--timeout", "1")
    assert r.returncode == 1 and "refusing to serve" in r.stderr and "0755" in r.stderr, r.stderr
    assert not (shared / "tap.sock").exists()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)  # nobody may reach the directory's door, not its content
    tap = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "tap", "--serve", f"ipc://{private}/tap.sock",
                            "--timeout", "30"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while not (private / "tap.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        sock = private / "tap.sock"
        assert sock.exists()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_IMODE(os.stat(private).st_mode) == 0o700
        assert as_nobody(str(sock))[str(sock)] == "EACCES"
    finally:
        tap.send_signal(signal.SIGTERM)
        tap.communicate(timeout=30)


def test_metrics_are_served_on_an_owner_only_socket_unless_tcp_is_asked_for(zentry, open_umask):
    r = zentry("metrics-server", "--listen", "unix:/tmp/zentry-metrics-test.sock", "--timeout", "1")
    assert r.returncode == 1 and "refusing to serve metrics" in r.stderr and "1777" in r.stderr, r.stderr
    assert not os.path.exists("/tmp/zentry-metrics-test.sock")
    server = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "metrics-server", "--timeout", "60"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        line = server.stderr.readline().decode()
        m = re.search(r"serving unix:(\S+) \(mode 0600\)", line)
        assert m, line
        path = m.group(1)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        import socket

        with socket.socket(socket.AF_UNIX) as s:  # root reads it
            s.connect(path)
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        assert b" 200 " in body.split(b"\r\n", 1)[0] and b"zentry_containers" in body
        assert as_nobody(path)[path] == "EACCES"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert not os.path.exists(path)


def test_nobody_cannot_use_the_cli_on_roots_state(zentry, busybox_bundle):
    """The root's directory is 0711: nobody can neither list it nor read a state file in it."""
    os.chmod(zentry.root, 0o711)
    bundle = busybox_bundle(["sleep", "60"])
    assert zentry("run", "-d", "--bundle", bundle, "acc2").returncode == 0
    try:
        seen = as_nobody(str(zentry.root), str(zentry.root / "acc2"), str(zentry.root / "acc2" / "state.json"))
        assert set(seen.values()) == {"EACCES"}, seen
        r = subprocess.run([*NOBODY, *zentry_command(), "--root", str(zentry.root), "state", "acc2"], capture_output=True, text=True)
        assert r.returncode != 0
    finally:
        zentry("delete", "--force", "acc2")
