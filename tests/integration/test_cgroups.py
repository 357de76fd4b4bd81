"""zentry.actors.sandbox.cgroups against the real kernel: limits that bite, freezing, killing, removal.

Every cgroup lives under ``/zentry-test-<random>/`` and the fixture proves
nothing named ``zentry-test-*`` is left in any hierarchy afterwards. Tests that
only translate paths or write into a fake directory tree need no root.
"""

from __future__ import annotations

import errno
import glob
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from zentry.actors.sandbox.cgroups import (
    Cgroup,
    Hierarchy,
    blkio_weight_to_io_weight,
    host_hierarchy,
    parse_cpu_list,
    shares_to_weight,
)
from zentry.bus.errors import ConfigError, InvalidArgument, SystemFailure, Unsupported

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="creating cgroups needs root")
UNIFIED = "/sys/fs/cgroup/unified"


def _leftovers(prefix: str = "zentry-test-") -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/{prefix}*") + glob.glob(f"/sys/fs/cgroup/{prefix}*")


@pytest.fixture(scope="module", autouse=True)
def _nothing_left_behind():
    """After the module: no zentry-test-* cgroup in any hierarchy. (Each lab
    also checks its own prefix at once; this global check runs once, so a
    concurrent run of these tests elsewhere cannot make a single test flaky.)"""
    yield
    if IS_ROOT:
        assert _leftovers() == []


def _is_cgroup2(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path and " - cgroup2 " in line for line in f)


class Lab:
    """Makes test cgroups and processes; tears every one of them down."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self.prefix = f"zentry-test-{uuid.uuid4().hex[:10]}"
        self.cgroups: list[Cgroup] = []
        self.procs: list[subprocess.Popen] = []

    def cgroup(self, name: str = "c1") -> Cgroup:
        cg = Cgroup.for_container(f"/{self.prefix}/{name}", name, hierarchy=self.hierarchy)
        cg.create()
        self.cgroups.append(cg)
        return cg

    def spawn(self, *argv: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(list(argv), **kw)
        self.procs.append(proc)
        return proc

    def python(self, code: str, **kw) -> subprocess.Popen:
        return self.spawn(sys.executable, "-c", textwrap.dedent(code), **kw)

    def close(self) -> None:
        for cg in self.cgroups:
            cg.destroy()
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        tops = [self.hierarchy.root] if self.hierarchy.version == 2 else set(self.hierarchy.mounts.values())
        for top in tops:
            try:
                os.rmdir(os.path.join(top, self.prefix))
            except FileNotFoundError:
                pass


@pytest.fixture
def lab():
    if not IS_ROOT:
        pytest.skip("creating cgroups needs root")
    box = Lab(host_hierarchy())
    try:
        yield box
    finally:
        box.close()
    assert _leftovers(box.prefix) == []


@pytest.fixture
def lab2():
    """A v2 lab: the host's cgroup2 (unified, or hybrid's /sys/fs/cgroup/unified)."""
    if not IS_ROOT:
        pytest.skip("creating cgroups needs root")
    h = host_hierarchy()
    if h.version != 2:
        if not _is_cgroup2(UNIFIED):
            pytest.skip("no cgroup2 hierarchy on this host")
        h = Hierarchy.unified(UNIFIED)
    box = Lab(h)
    try:
        yield box
    finally:
        box.close()
    assert _leftovers(box.prefix) == []


def _cgroup_of(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _wait_for(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def _started(proc: subprocess.Popen) -> None:
    """Wait for the child's 'ready' line (it is blocked on stdin until told to go)."""
    assert proc.stdout.readline().strip() == b"ready"


# --- paths and layout (no root) ----------------------------------------------------------
V1_FAKE = Hierarchy(version=1, mounts={"memory": "/sys/fs/cgroup/memory", "cpu": "/sys/fs/cgroup/cpu,cpuacct",
                                       "cpuacct": "/sys/fs/cgroup/cpu,cpuacct"},
                    own={"memory": "/outer/inner", "cpu": "/", "cpuacct": "/"})


def test_default_path_is_zentry_id():
    cg = Cgroup.for_container(None, "web", hierarchy=V1_FAKE)
    assert cg.path == "/zentry/web"
    assert cg.dir("memory") == "/sys/fs/cgroup/memory/zentry/web"
    assert cg.dirs() == ["/sys/fs/cgroup/memory/zentry/web", "/sys/fs/cgroup/cpu,cpuacct/zentry/web"]
    assert cg.dir("pids") is None


def test_relative_path_is_below_own_cgroup():
    cg = Cgroup.for_container("pod/c1", "c1", hierarchy=V1_FAKE)
    assert cg.dir("memory") == "/sys/fs/cgroup/memory/outer/inner/pod/c1"
    assert cg.dir("cpu") == "/sys/fs/cgroup/cpu,cpuacct/pod/c1"
    v2 = Cgroup.for_container("c1", "c1", hierarchy=Hierarchy.unified("/sys/fs/cgroup", own="/user.slice"))
    assert v2.dir() == "/sys/fs/cgroup/user.slice/c1"


def test_systemd_form_is_refused():
    with pytest.raises(Unsupported) as info:
        Cgroup.for_container("system.slice:zentry:c1", "c1", hierarchy=V1_FAKE)
    assert str(info.value) == "systemd cgroup manager is not available on this host (no systemd); use cgroupfs paths"


@pytest.mark.parametrize("path", ["/a/../../etc", "/", "..", "/x/.."])
def test_escaping_paths_are_refused(path):
    with pytest.raises(ConfigError, match="cgroupsPath"):
        Cgroup.for_container(path, "c1", hierarchy=V1_FAKE)


def test_bad_ids_cannot_name_a_cgroup():
    for bad in ("..", "a/b", ""):
        with pytest.raises(InvalidArgument):
            Cgroup.for_container(None, bad, hierarchy=V1_FAKE)


def test_detect_layouts(tmp_path):
    cg_file = tmp_path / "cgroup"
    cg_file.write_text("3:cpu,cpuacct:/a\n2:memory:/m\n1:name=systemd:/\n0::/u\n")
    v1 = tmp_path / "mi1"
    v1.write_text(
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "33 25 0:29 / /mnt/with\\040space rw - ext4 /dev/sda rw\n"
    )
    h = Hierarchy.detect(str(v1), str(cg_file))
    assert h.version == 1
    # the hybrid's cgroup2 and the named hierarchy count too (a container is put in each, as runc does)
    assert h.mounts == {"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                        "memory": "/sys/fs/cgroup/memory", "unified": "/sys/fs/cgroup/unified"}
    assert h.own["memory"] == "/m" and h.own["cpu"] == "/a" and h.own["unified"] == "/u"
    v2 = tmp_path / "mi2"
    v2.write_text("30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    h2 = Hierarchy.detect(str(v2), str(cg_file))
    assert (h2.version, h2.root, h2.own) == (2, "/sys/fs/cgroup", {"": "/u"})


def test_conversions():
    assert shares_to_weight(2) == 1 and shares_to_weight(262144) == 10000 and shares_to_weight(1024) == 39
    assert blkio_weight_to_io_weight(10) == 1 and blkio_weight_to_io_weight(1000) == 10000
    assert parse_cpu_list("0-2,5\n") == [0, 1, 2, 5] and parse_cpu_list("") == []


def test_v2_translation_into_a_fake_tree(tmp_path):
    leaf = tmp_path / "c1"
    leaf.mkdir()
    for name, text in {"memory.max": "max", "memory.swap.max": "max", "memory.low": "0", "cpu.weight": "100",
                       "cpu.max": "max 100000", "pids.max": "max", "io.weight": "default 100", "io.max": "",
                       "hugetlb.2MB.max": "max", "cpuset.cpus": "", "memory.high": "max"}.items():
        (leaf / name).write_text(text)
    cg = Cgroup("/c1", Hierarchy.unified(str(tmp_path)))
    cg.apply({
        "memory": {"limit": 100 << 20, "swap": 150 << 20, "reservation": 10 << 20},
        "cpu": {"shares": 1024, "quota": 20000, "cpus": "0"},
        "pids": {"limit": 0},
        "blockIO": {"weight": 1000, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1000}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 4 << 20}],
        "devices": [{"allow": False, "access": "rwm"}],
        "unified": {"memory.high": "50000000"},
    })
    read = lambda n: (leaf / n).read_text()  # noqa: E731
    assert read("memory.max") == str(100 << 20)
    assert read("memory.swap.max") == str(50 << 20)  # OCI counts memory+swap
    assert read("memory.low") == str(10 << 20)
    assert read("cpu.weight") == "39"
    assert read("cpu.max") == "20000 100000"  # the old period is kept
    assert read("pids.max") == "0"  # zero is a real limit
    assert read("io.weight") == "default 10000"
    assert read("io.max") == "8:0 rbps=1000"
    assert read("hugetlb.2MB.max") == str(4 << 20)
    assert read("cpuset.cpus") == "0"
    assert read("memory.high") == "50000000"
    cg.update({"memory": {"limit": -1}, "pids": {"limit": -1}})
    assert read("memory.max") == "max" and read("pids.max") == "max"
    with pytest.raises(Unsupported, match='"rdma" controller is not enabled'):
        cg.apply({"unified": {"rdma.max": "x"}})
    with pytest.raises(InvalidArgument):
        cg.apply({"unified": {"../memory.max": "1"}})
    with pytest.raises(InvalidArgument, match="below the memory limit"):
        cg.apply({"memory": {"limit": 100, "swap": 50}})
    assert cg.memory_limit() is None and cg.cpu_quota() == 0.2


# --- the real v1/v2 host hierarchy -------------------------------------------------------
@needs_root
def test_create_add_membership(lab):
    cg = lab.cgroup()
    h = lab.hierarchy
    for where in cg.dirs():
        assert os.path.isdir(where)
    if h.version == 1 and "cpuset" in h.mounts:
        root = h.mounts["cpuset"]
        with open(os.path.join(root, "cpuset.cpus")) as f:
            want = f.read().strip()
        for node in (os.path.dirname(cg.dir("cpuset")), cg.dir("cpuset")):
            with open(os.path.join(node, "cpuset.cpus")) as f:
                assert f.read().strip() == want
    sleeper = lab.spawn("sleep", "60")
    cg.add(sleeper.pid)
    membership = _cgroup_of(sleeper.pid)
    controllers = h.mounts if h.version == 1 else {"": h.root}
    for ctrl in controllers:
        assert membership["" if ctrl == "unified" else ctrl] == cg.path, ctrl
    assert cg.pids() == [sleeper.pid]
    cg.create()  # creating again is harmless


def test_prime_attach_leaves_this_process_where_it_was(lab):
    # The priming write moves this process into the cgroup it is already
    # in (the kernel's first-migration wait then runs off the caller's path):
    # a wrong path would move the test process itself somewhere else.
    before = _cgroup_of(os.getpid())
    cg = lab.cgroup("p1")
    cg.prime_attach()
    _wait_for(lambda: not any(t.name == "cgroup-prime" for t in threading.enumerate()), what="the priming thread")
    assert _cgroup_of(os.getpid()) == before
    sleeper = lab.spawn("sleep", "60")
    cg.add(sleeper.pid)
    assert cg.pids() == [sleeper.pid]


@needs_root
def test_memory_limit_kills_a_process_that_exceeds_it(lab):
    program = """
        import sys
        print("ready", flush=True)
        sys.stdin.readline()
        block = bytearray(b"\\1") * (128 << 20)   # written, so really charged
        print("survived", flush=True)
    """
    limited = lab.cgroup("small")
    limited.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    assert limited.memory_limit() == 32 << 20
    roomy = lab.cgroup("roomy")
    roomy.apply({"memory": {"limit": 512 << 20, "swap": 512 << 20}})
    results = {}
    for name, cg in (("small", limited), ("roomy", roomy)):
        proc = lab.python(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _started(proc)
        cg.add(proc.pid)
        out, _ = proc.communicate(b"go\n", timeout=60)
        results[name] = (proc.returncode, out)
    assert results["roomy"] == (0, b"survived\n")
    assert results["small"][0] == -signal.SIGKILL
    stats = limited.stats()["memory"]
    assert stats["usage"]["failcnt"] > 0 or stats["oom_kill"] > 0
    assert stats["usage"]["limit"] == 32 << 20


@needs_root
def test_pids_limit_makes_fork_fail(lab):
    cg = lab.cgroup()
    cg.apply({"pids": {"limit": 4}})
    program = """
        import os, sys, time
        print("ready", flush=True)
        sys.stdin.readline()
        ok = failed = 0
        for _ in range(8):
            try:
                pid = os.fork()
            except BlockingIOError:
                failed += 1
                continue
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            ok += 1
        print(ok, failed, flush=True)
        sys.stdin.readline()
    """
    proc = lab.python(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _started(proc)
    cg.add(proc.pid)
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    assert proc.stdout.readline().split() == [b"3", b"5"]  # 1 parent + 3 children = 4
    stats = cg.stats()
    assert stats["pids"] == {"current": 4, "limit": 4}
    assert len(cg.pids()) == 4
    cg.destroy()  # the children die with it
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not cg.exists()


COUNTER = """
    import os, sys
    path = sys.argv[1]
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        if n % 1000 == 0:
            with open(path + ".tmp", "w") as f:
                f.write(str(n))
            os.replace(path + ".tmp", path)
"""


def _count(path) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except FileNotFoundError:
        return 0


def _freeze_thaw(lab, cg, tmp_path):
    counter = str(tmp_path / "count")
    proc = lab.spawn(sys.executable, "-c", textwrap.dedent(COUNTER), counter, stdout=subprocess.PIPE)
    _started(proc)
    cg.add(proc.pid)
    _wait_for(lambda: _count(counter) > 0, what="the counter to start")
    assert cg.state() == "thawed"
    cg.freeze()
    assert cg.state() == "frozen"
    first = _count(counter)
    time.sleep(0.3)
    assert _count(counter) == first  # stopped
    cg.thaw()
    assert cg.state() == "thawed"
    _wait_for(lambda: _count(counter) > first, what="the counter to move after thaw")
    return proc


@needs_root
def test_freeze_and_thaw(lab, tmp_path):
    cg = lab.cgroup()
    _freeze_thaw(lab, cg, tmp_path)


@needs_root
def test_stats_show_real_cpu_use(lab):
    cg = lab.cgroup()
    proc = lab.python("""
        import sys, time
        print("ready", flush=True)
        sys.stdin.readline()
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    """, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _started(proc)
    cg.add(proc.pid)
    proc.communicate(b"go\n", timeout=30)
    stats = cg.stats()
    usage = stats["cpu"]["usage"]
    assert usage["total"] >= 200_000_000  # ns: most of the 0.3 s burned in the cgroup
    assert usage["user"] > 0
    if lab.hierarchy.version == 1:
        assert len(usage["percpu"]) == os.cpu_count() and sum(usage["percpu"]) > 0
    assert stats["memory"]["usage"]["max"] > 0
    assert stats["pids"]["current"] == 0


@needs_root
def test_apply_writes_the_controller_files(lab):
    h = lab.hierarchy
    if h.version != 1:
        pytest.skip("the v1 file names are checked here; v2 has its own tests")
    cg = lab.cgroup()
    cg.apply({
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "memory": {"limit": 256 << 20, "reservation": 128 << 20, "swappiness": 10},
        "pids": {"limit": 100},
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 136, "access": "rw"}],
    })

    def read(ctrl, name):
        with open(os.path.join(cg.dir(ctrl), name)) as f:
            return f.read().strip()

    assert read("cpu", "cpu.shares") == "512"
    assert read("cpu", "cpu.cfs_quota_us") == "50000"
    assert read("cpuset", "cpuset.cpus") == "0"
    assert read("memory", "memory.limit_in_bytes") == str(256 << 20)
    assert read("memory", "memory.soft_limit_in_bytes") == str(128 << 20)
    assert read("memory", "memory.swappiness") == "10"
    assert read("pids", "pids.max") == "100"
    assert read("devices", "devices.list").splitlines() == ["c 1:3 rwm", "c 136:* rw"]
    assert cg.cpu_quota() == 0.5 and cg.cpuset() == [0]
    # update: a larger limit than the memsw limit set earlier needs memsw first
    cg.update({"memory": {"limit": 64 << 20, "swap": 64 << 20}})
    cg.update({"memory": {"limit": 1 << 30, "swap": 1 << 30}, "pids": {"limit": -1}})
    assert read("memory", "memory.limit_in_bytes") == str(1 << 30)
    assert read("pids", "pids.max") == "max"
    with pytest.raises(InvalidArgument) as info:
        cg.update({"cpu": {"cpus": "99"}})
    assert str(info.value) == f"cannot set cpuset.cpus to 99: {os.strerror(errno.ERANGE)}"
    with pytest.raises(InvalidArgument) as info:
        cg.update({"memory": {"limit": -5}})
    assert str(info.value) == f"cannot set memory.limit_in_bytes to -5: {os.strerror(errno.EINVAL)}"
    with pytest.raises(Unsupported, match="needs cgroup v2"):
        cg.apply({"unified": {"memory.high": "1"}})


@needs_root
def test_device_rules_deny_access(lab):
    if lab.hierarchy.version != 1:
        pytest.skip("device rules need eBPF on cgroup v2")
    cg = lab.cgroup()
    cg.apply({"devices": [{"allow": False, "access": "rwm"},
                          {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]})
    program = """
        import sys
        print("ready", flush=True)
        sys.stdin.readline()
        open("/dev/null", "w").write("x")
        try:
            open("/dev/zero", "rb")
        except PermissionError:
            print("zero denied", flush=True)
    """
    proc = lab.python(program, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _started(proc)
    cg.add(proc.pid)
    out, _ = proc.communicate(b"go\n", timeout=30)
    assert (proc.returncode, out) == (0, b"zero denied\n")


@needs_root
def test_kill_all_and_destroy(lab):
    cg = lab.cgroup()
    sleepers = [lab.spawn("sleep", "60") for _ in range(2)]
    for p in sleepers:
        cg.add(p.pid)
    # a grandchild that the shell leaves behind, reparented away from us
    shell = lab.spawn("sh", "-c", "echo ready; read x; sleep 60 >/dev/null & echo $!", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    _started(shell)
    cg.add(shell.pid)
    orphan = int(shell.communicate(b"go\n", timeout=10)[0])
    assert orphan in cg.pids()
    assert cg.kill_all(signal.SIGTERM) == 3
    assert [p.wait(timeout=10) for p in sleepers] == [-signal.SIGTERM] * 2
    _wait_for(lambda: cg.pids() == [], what="the orphan to die")
    assert cg.state() == "thawed"  # kill_all's own freeze is undone

    more = lab.spawn("sleep", "60")
    cg.add(more.pid)
    cg.freeze()
    cg.destroy()  # a frozen cgroup still empties and goes
    assert more.wait(timeout=10) == -signal.SIGKILL
    assert not cg.exists() and not any(os.path.exists(d) for d in cg.dirs())
    cg.destroy()  # idempotent
    with pytest.raises(SystemFailure, match="does not exist"):
        cg.state()


@needs_root
def test_kill_all_keeps_a_paused_cgroup_paused(lab):
    cg = lab.cgroup()
    sleeper = lab.spawn("sleep", "60")
    cg.add(sleeper.pid)
    cg.freeze()
    cg.kill_all(signal.SIGTERM)
    assert cg.state() == "frozen"
    time.sleep(0.1)
    assert sleeper.poll() is None  # the signal waits for the thaw
    cg.thaw()
    assert sleeper.wait(timeout=10) == -signal.SIGTERM


# --- the cgroup2 hierarchy (unified host, or hybrid's /sys/fs/cgroup/unified) ------------
@needs_root
def test_v2_membership_freeze_stats_destroy(lab2, tmp_path):
    cg = lab2.cgroup()
    proc = _freeze_thaw(lab2, cg, tmp_path)
    assert _cgroup_of(proc.pid)[""] == os.path.join("/", os.path.relpath(cg.dir(), lab2.hierarchy.root))
    assert cg.pids() == [proc.pid]
    _wait_for(lambda: cg.stats()["cpu"]["usage"]["total"] > 0, what="cpu usage")
    cg.destroy()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert not os.path.exists(cg.dir())
    cg.destroy()


@needs_root
def test_v2_missing_controller_is_a_clear_error(lab2):
    cg = lab2.cgroup()
    controllers = open(os.path.join(lab2.hierarchy.root, "cgroup.controllers")).read().split()
    if "memory" in controllers:
        pytest.skip("this cgroup2 has the memory controller")
    with pytest.raises(Unsupported) as info:
        cg.apply({"memory": {"limit": 1 << 20}})
    assert str(info.value) == f"cannot set memory.max to {1 << 20}: the kernel has no such cgroup file"
    with pytest.raises(Unsupported, match='"memory" controller is not enabled'):
        cg.apply({"unified": {"memory.high": "1"}})
