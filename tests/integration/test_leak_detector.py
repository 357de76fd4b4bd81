"""The leak detector of tests/helpers/leaks.py finds and removes a leaked
mount, process, cgroup and runtime state (needs root)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from helpers.leaks import CGROUP_ROOT, LeakWatch, mounts_under
from helpers.skips import requires_root

pytestmark = [requires_root, pytest.mark.root]


@pytest.fixture
def watch_dir():
    d = tempfile.mkdtemp(prefix="zleak-", dir="/tmp")
    yield Path(d)
    subprocess.run(["umount", "-l", d], capture_output=True)
    subprocess.run(["rm", "-rf", d])


def test_detects_and_removes_leaked_tmpfs_mount(watch_dir):
    watch = LeakWatch(needles=[str(watch_dir)])
    before = watch.snapshot()
    target = watch_dir / "mnt"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
    leaks = watch.find_leaks(before)
    assert [mp for _, mp in leaks.mounts] == [str(target)]
    assert str(target) in leaks.report()
    assert watch.cleanup(leaks) == []
    assert mounts_under(str(watch_dir)) == []
    assert not watch.find_leaks(before)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


ORPHAN = """
import os, sys
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.setsid()
    os.write(w, str(os.getpid()).encode())
    os.close(w)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.execv("/bin/sleep", ["zentry-leak-probe", "100"])
os.close(w)
print(os.read(r, 32).decode())
"""


def test_detects_and_kills_orphaned_process_by_name():
    watch = LeakWatch(needles=["zentry-leak-probe"])
    before = watch.snapshot()
    # Double fork: the probe is reparented away from us, found by its cmdline.
    out = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    try:
        deadline = time.monotonic() + 5
        while "zentry-leak-probe" not in " ".join(psutil.Process(pid).cmdline()):
            assert time.monotonic() < deadline, "probe never exec'd"
            time.sleep(0.02)
        leaks = watch.find_leaks(before)
        assert [p for p, _ in leaks.procs] == [pid]
        assert watch.cleanup(leaks) == []
        assert _wait_gone(pid)
    finally:
        if not _gone(pid):
            os.kill(pid, 9)
    assert not watch.find_leaks(before)


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


def test_detects_descendant_without_needle():
    watch = LeakWatch(needles=["no-such-needle"])
    before = watch.snapshot()
    proc = subprocess.Popen(["sleep", "100"])
    try:
        leaks = watch.find_leaks(before)
        assert [pid for pid, _ in leaks.procs] == [proc.pid]
        watch.cleanup(leaks)
        assert _wait_gone(proc.pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_detects_and_removes_leaked_cgroup():
    hierarchy = CGROUP_ROOT / "pids"
    if not (hierarchy / "cgroup.procs").exists():
        pytest.skip("no cgroup v1 pids hierarchy at /sys/fs/cgroup/pids")
    watch = LeakWatch()
    before = watch.snapshot()
    cg = hierarchy / f"zentry-leak-{os.getpid()}" / "child"
    cg.mkdir(parents=True)
    leaks = watch.find_leaks(before)
    assert sorted(leaks.cgroups) == [str(cg.parent), str(cg)]
    assert watch.cleanup(leaks) == []
    assert not cg.parent.exists()


def test_private_root_and_state_dir(tmp_path):
    root, shared = tmp_path / "root", tmp_path / "shared"
    root.mkdir()
    shared.mkdir()
    (shared / "old").mkdir()
    watch = LeakWatch(needles=[], private_roots=[str(root)], state_dirs=[str(shared)])
    before = watch.snapshot()
    (root / "c1.lock").touch()  # empty lock files are allowed
    assert not watch.find_leaks(before)
    (root / "c1").mkdir()
    (root / "c1" / "state.json").write_text("{}")
    (shared / "new").mkdir()
    leaks = watch.find_leaks(before)
    assert sorted(leaks.state) == [str(root / "c1" / "state.json"), str(shared / "new")]
    watch.cleanup(leaks)
    assert not (shared / "new").exists() and (shared / "old").exists()
