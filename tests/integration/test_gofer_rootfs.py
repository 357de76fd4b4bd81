"""The gofer's root filesystem view (actors/gofer): real mounts in private namespaces.

Every scenario runs in a forked child that unshares its own mount namespace
first, so no mount ever reaches the test's namespace; the child reports a
JSON result through a pipe and ``os._exit``s. Container-side steps run in a
grandchild that is PID 1 of a new pid namespace, after ``enter_rootfs``:
from there on only already-imported Python is available (the host's files
are gone), which is exactly what is being tested.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import struct
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest

from zentry.actors.gofer import cleanup, enter_rootfs, finish_in_container, lock_down, prepare_rootfs
from zentry.actors.gofer import rootfs as rootfs_mod
from zentry.sentry.abi import libc

pytestmark = pytest.mark.root

TIOCGPTN = 0x80045430  # <asm-generic/ioctls.h>: _IOR('T', 0x30, unsigned int)

if os.geteuid() != 0:  # pragma: no cover - the marker skips these, this says why
    pytest.skip("needs root: mount namespaces, mounts and pivot_root", allow_module_level=True)


# --- running code in private namespaces -------------------------------------------
def _report(fd: int, fn: Callable[[], Any]) -> None:
    """Run fn, write {"ok": result} or {"error": ...} as JSON to fd, never return."""
    try:
        try:
            out = {"ok": fn()}
        except BaseException as err:  # the parent turns it into a test failure
            out = {"error": type(err).__name__, "message": str(err), "trace": traceback.format_exc()}
        data = json.dumps(out).encode()
        while data:
            data = data[os.write(fd, data):]
    finally:
        os._exit(0)


def _collect(pid: int, r: int) -> dict:
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    assert raw, f"child died without reporting (wait status {status})"
    return json.loads(raw)


def in_namespace(fn: Callable[[], Any], flags: int = libc.CLONE_NEWNS) -> dict:
    """fn() in a forked child that first unshares ``flags``; its JSON report."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _report(w, lambda: (libc.unshare(flags), fn())[1])
    os.close(w)
    return _collect(pid, r)


def ok(report: dict) -> Any:
    if "error" in report:
        pytest.fail(f"{report['error']}: {report['message']}\n{report['trace']}")
    return report["ok"]


def as_container(config: dict, bundle: str, mountpoint: str, check: Callable[[], Any]) -> Any:
    """prepare in a new mount+pid namespace, then check() as its PID 1 after enter+finish."""

    def gofer_side():
        prepare_rootfs(config, bundle, mountpoint)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            def container_side():
                rootfs_mod.mount_entries(config, bundle, mountpoint, None, rootfs_mod.cgroup_binds(config))
                enter_rootfs(mountpoint)
                finish_in_container(config)
                lock_down(config)
                return check()

            _report(w, container_side)
        os.close(w)
        return _collect(pid, r)

    return ok(ok(in_namespace(gofer_side, libc.CLONE_NEWNS | libc.CLONE_NEWPID)))


def build(cfg: dict, bundle: str, mountpoint: str) -> None:
    """The gofer's root, then every mounts entry and the devices, as the init makes them."""
    prepare_rootfs(cfg, bundle, mountpoint)
    rootfs_mod.mount_entries(cfg, bundle, mountpoint, None, None)


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def write_error(path: str) -> int | None:
    """The errno of creating/writing ``path``, None if it worked."""
    try:
        with open(path, "w") as f:
            f.write("x")
    except OSError as err:
        return err.errno
    return None


@pytest.fixture
def bundle(tmp_path, busybox_rootfs):
    """(bundle dir, rootfs, mountpoint); asserts afterwards that no mount mentions tmp_path."""
    rootfs = busybox_rootfs()
    yield tmp_path, rootfs, tmp_path / "mnt"
    leaked = [p for p in mount_points() if str(tmp_path) in p]
    assert leaked == [], f"mounts left in the test's namespace: {leaked}"


def config(rootfs: Path, *mounts: dict, **extra) -> dict:
    cfg = {"ociVersion": "1.2.0", "root": {"path": str(rootfs)}, "mounts": list(mounts), "linux": {}}
    for key, value in extra.items():
        if key in ("root_readonly",):
            cfg["root"]["readonly"] = value
        else:
            cfg["linux"][key] = value
    return cfg


PROC = {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}
DEV = {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
DEVPTS = {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
          "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}
MQUEUE = {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}
SYSFS = {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
CGROUP = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
          "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
TMP = {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m", "mode=1777"]}


# --- gofer side --------------------------------------------------------------------
def test_bind_mounts_read_only_file_and_read_write(bundle):
    tmp, rootfs, mp = bundle
    (tmp / "ro-src").mkdir()
    (tmp / "ro-src" / "data.txt").write_text("hello")
    (tmp / "rw-src").mkdir()
    (tmp / "single.txt").write_text("single")
    cfg = config(
        rootfs,
        {"destination": "/data", "type": "bind", "source": str(tmp / "ro-src"), "options": ["bind", "ro", "nosuid"]},
        {"destination": "/etc/conf/single.txt", "type": "none", "source": "single.txt", "options": ["rbind"]},
        {"destination": "rw", "source": str(tmp / "rw-src"), "options": ["bind"]},  # relative destination
    )

    def scenario():
        build(cfg, str(tmp), str(mp))
        flags = os.statvfs(mp / "data").f_flag
        with open(mp / "rw" / "written", "w") as f:
            f.write("through the bind")
        return {
            "data": (mp / "data" / "data.txt").read_text(),
            "ro_write": write_error(str(mp / "data" / "new")),
            "nosuid": bool(flags & os.ST_NOSUID),
            "single": (mp / "etc" / "conf" / "single.txt").read_text(),
            "single_is_file": (mp / "etc" / "conf" / "single.txt").is_file(),
        }

    got = ok(in_namespace(scenario))
    assert got == {"data": "hello", "ro_write": errno.EROFS, "nosuid": True, "single": "single", "single_is_file": True}
    assert not (tmp / "ro-src" / "new").exists()
    assert (tmp / "rw-src" / "written").read_text() == "through the bind"
    assert (rootfs / "etc" / "conf" / "single.txt").stat().st_size == 0  # the empty mountpoint file


def test_recursive_read_only_reaches_submounts(bundle):
    tmp, rootfs, mp = bundle
    src = tmp / "tree"
    (src / "sub").mkdir(parents=True)
    cfg = config(rootfs, {"destination": "/tree", "source": str(src), "options": ["rbind", "ro"]},
                 {"destination": "/rtree", "source": str(src), "options": ["rbind", "rro"]})

    def scenario():
        libc.mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=64k")  # a submount of the source
        build(cfg, str(tmp), str(mp))
        return {
            "ro_top": write_error(str(mp / "tree" / "x")),
            "ro_sub": write_error(str(mp / "tree" / "sub" / "x")),  # plain ro: the top mount only
            "rro_top": write_error(str(mp / "rtree" / "x")),
            "rro_sub": write_error(str(mp / "rtree" / "sub" / "x")),
        }

    assert ok(in_namespace(scenario)) == {"ro_top": errno.EROFS, "ro_sub": None, "rro_top": errno.EROFS, "rro_sub": errno.EROFS}


def test_tmpfs_size_mode_and_tmpcopyup(bundle):
    tmp, rootfs, mp = bundle
    cfg = config(rootfs, TMP, {"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "mode=755"]})

    def scenario():
        build(cfg, str(tmp), str(mp))
        st = os.statvfs(mp / "tmp")
        (mp / "etc" / "new-in-tmpfs").write_text("x")
        return {
            "size": st.f_blocks * st.f_frsize,
            "mode": oct(stat.S_IMODE(os.stat(mp / "tmp").st_mode)),
            "nodev": bool(st.f_flag & os.ST_NODEV),
            "passwd": (mp / "etc" / "passwd").read_text(),
            "etc_dev": os.stat(mp / "etc").st_dev != os.stat(mp).st_dev,
        }

    got = ok(in_namespace(scenario))
    assert got["size"] == 1 << 20 and got["mode"] == "0o1777" and got["nodev"]
    assert got["passwd"] == (rootfs / "etc" / "passwd").read_text() and got["etc_dev"]
    assert not (rootfs / "etc" / "new-in-tmpfs").exists()


def test_dev_default_devices_devpts_and_linux_devices(bundle):
    tmp, rootfs, mp = bundle
    devices = [
        {"path": "/dev/myfifo", "type": "p", "fileMode": 0o640, "uid": 1000, "gid": 1001},
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600},
        {"path": "/opt/block", "type": "b", "major": 7, "minor": 0},
    ]
    cfg = config(rootfs, DEV, DEVPTS, devices=devices)

    def scenario():
        build(cfg, str(tmp), str(mp))
        dev = mp / "dev"
        out = {}
        for name in ("null", "zero", "full", "random", "urandom", "tty"):
            st = os.stat(dev / name)
            out[name] = stat.S_ISCHR(st.st_mode) and st.st_rdev == os.stat(f"/dev/{name}").st_rdev
        with open(dev / "null", "w") as f:
            f.write("discarded")
        with open(dev / "zero", "rb") as f:
            out["zero_read"] = f.read(4).hex()
        out["ptmx_link"] = os.readlink(dev / "ptmx")
        fd = os.open(dev / "ptmx", os.O_RDWR | os.O_NOCTTY)  # through the link: this instance's ptmx
        try:
            out["ptn"] = struct.unpack("I", fcntl.ioctl(fd, TIOCGPTN, b"\0" * 4))[0]
            out["pts"] = sorted(os.listdir(dev / "pts"))
        finally:
            os.close(fd)
        for path in ("dev/myfifo", "dev/mynull", "opt/block"):
            st = os.lstat(mp / path)
            out[path] = [stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                         os.major(st.st_rdev), os.minor(st.st_rdev)]
        return out

    got = ok(in_namespace(scenario))
    assert all(got[n] for n in ("null", "zero", "full", "random", "urandom", "tty")), got
    assert got["zero_read"] == "00000000"
    assert got["ptmx_link"] == "pts/ptmx"
    assert got["ptn"] == 0 and got["pts"] == ["0", "ptmx"]  # a new devpts instance, not the host's
    assert got["dev/myfifo"] == [stat.S_IFIFO, "0o640", 1000, 1001, 0, 0]
    assert got["dev/mynull"] == [stat.S_IFCHR, "0o600", 0, 0, 1, 3]
    assert got["opt/block"] == [stat.S_IFBLK, "0o666", 0, 0, 7, 0]
    assert not (rootfs / "dev" / "null").exists()  # all of it was on the tmpfs


def test_device_over_a_different_file_is_an_error(bundle):
    tmp, rootfs, mp = bundle
    (rootfs / "etc" / "notadev").write_text("")
    cfg = config(rootfs, devices=[{"path": "/etc/notadev", "type": "c", "major": 1, "minor": 3}])
    got = in_namespace(lambda: build(cfg, str(tmp), str(mp)))
    assert got["error"] == "ConfigError" and "/etc/notadev" in got["message"], got


def test_symlink_and_dotdot_escapes_stay_inside_the_rootfs(bundle):
    tmp, rootfs, mp = bundle
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("original")
    (tmp / "payload.txt").write_text("INJECTED")
    (rootfs / "x").symlink_to("../" * 12 + str(victim).lstrip("/"))  # climbs to the host "/"
    (rootfs / "y").symlink_to(str(victim))  # absolute host path
    (rootfs / "z").symlink_to("/../.." + str(victim / "keep.txt"))  # a file
    (rootfs / "loop").symlink_to("loop")
    cfg = config(
        rootfs,
        {"destination": "/x", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/y/sub", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/z", "source": str(tmp / "payload.txt"), "options": ["bind"]},
        {"destination": "/../../../.." + str(victim) + "/dotdot", "type": "tmpfs", "source": "tmpfs"},
    )

    def scenario():
        build(cfg, str(tmp), str(mp))
        points = mount_points()
        return {
            "outside": [p for p in points if p.startswith(str(victim))],
            "inside": sorted(p[len(str(mp)):] for p in points if p.startswith(str(mp) + str(victim))),
            "keep": (victim / "keep.txt").read_text(),
            "victim": sorted(os.listdir(victim)),
            "payload_in_root": (mp / str(victim / "keep.txt").lstrip("/")).read_text(),
        }

    got = ok(in_namespace(scenario))
    v = str(victim)
    assert got["outside"] == [] and got["keep"] == "original" and got["victim"] == ["keep.txt"]
    assert got["inside"] == sorted([v, v + "/sub", v + "/keep.txt", v + "/dotdot"])
    assert got["payload_in_root"] == "INJECTED"
    assert (victim / "keep.txt").read_text() == "original" and sorted(os.listdir(victim)) == ["keep.txt"]

    loop = config(rootfs, {"destination": "/loop/a", "type": "tmpfs", "source": "tmpfs"})
    err = in_namespace(lambda: build(loop, str(tmp), str(mp)))
    assert err["error"] == "SystemFailure" and "too many levels of symbolic links" in err["message"], err


def test_errors_name_the_mount_and_the_rootfs(bundle):
    tmp, rootfs, mp = bundle
    missing = config(rootfs, {"destination": "/m", "source": "nope", "options": ["bind"]})
    got = in_namespace(lambda: build(missing, str(tmp), str(mp)))
    assert got["error"] == "ConfigError" and f'"{tmp}/nope"' in got["message"], got
    bad = config(rootfs, {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=lots"]})
    got = in_namespace(lambda: build(bad, str(tmp), str(mp)))
    assert got["error"] == "SystemFailure", got
    assert got["message"].startswith(f'cannot mount "tmpfs" on "/tmp" (rootfs {rootfs}): invalid argument'), got
    prop = config(rootfs, rootfsPropagation="sideways")
    got = in_namespace(lambda: prepare_rootfs(prop, str(tmp), str(mp)))
    assert got["error"] == "ConfigError" and "rootfsPropagation" in got["message"], got


def test_cleanup_detaches_the_whole_view(bundle):
    tmp, rootfs, mp = bundle
    cfg = config(rootfs, DEV, DEVPTS, TMP)

    def scenario():
        build(cfg, str(tmp), str(mp))
        before = [p for p in mount_points() if p.startswith(str(mp))]
        cleanup(str(mp))
        cleanup(str(mp))  # idempotent
        return {"before": len(before), "after": [p for p in mount_points() if p.startswith(str(mp))]}

    got = ok(in_namespace(scenario))
    assert got["before"] >= 4 and got["after"] == []  # root, /dev, /dev/pts, /tmp


# --- container side ----------------------------------------------------------------
def test_in_container_mounts_masks_readonly_paths_and_readonly_root(bundle):
    tmp, rootfs, mp = bundle
    (rootfs / "etc" / "secret").write_text("s3cret")
    (rootfs / "secretdir").mkdir()
    (rootfs / "secretdir" / "inside").write_text("hidden")
    (rootfs / "data").mkdir()
    (rootfs / "data" / "file").write_text("readable")
    cfg = config(
        rootfs, PROC, DEV, DEVPTS, MQUEUE, SYSFS, CGROUP, TMP,
        maskedPaths=["/etc/secret", "/secretdir", "/proc/kcore", "/does/not/exist"],
        readonlyPaths=["/data", "/proc/sys", "/missing"],
        root_readonly=True,
    )

    def check():
        out = {"pid": os.getpid(), "status": open("/proc/1/status").readline().split(":")[0]}
        out["secret"] = open("/etc/secret").read()
        out["secretdir"] = os.listdir("/secretdir")
        out["secretdir_write"] = write_error("/secretdir/x")
        out["data"] = open("/data/file").read()
        out["data_write"] = write_error("/data/x")
        out["proc_sys_write"] = write_error("/proc/sys/kernel/hostname")
        out["root_write"] = write_error("/newfile")
        out["tmp_write"] = write_error("/tmp/ok")
        out["devnull_write"] = write_error("/dev/null")
        with open("/dev/zero", "rb") as f:
            out["zero"] = f.read(3).hex()
        out["links"] = {n: os.readlink(f"/dev/{n}") for n in ("fd", "stdin", "stdout", "stderr", "ptmx")}
        out["mqueue_mounted"] = os.stat("/dev/mqueue").st_dev != os.stat("/dev").st_dev
        out["sys_write"] = write_error("/sys/kernel/x")
        out["cgroups"] = sorted(os.listdir("/sys/fs/cgroup"))
        # as runc: the tmpfs stays read-write, each hierarchy's bind is read-only
        out["cgroup_write"] = write_error("/sys/fs/cgroup/pids/pids.max")
        with open("/proc/self/mountinfo") as f:
            out["mount_points"] = [line.split()[4] for line in f]
        return out

    got = as_container(cfg, str(tmp), str(mp), check)
    assert got["pid"] == 1 and got["status"] == "Name"
    assert got["secret"] == "" and got["secretdir"] == [] and got["secretdir_write"] == errno.EROFS
    assert got["data"] == "readable" and got["data_write"] == errno.EROFS
    assert got["proc_sys_write"] == errno.EROFS
    assert got["root_write"] == errno.EROFS and got["tmp_write"] is None and got["devnull_write"] is None
    assert got["zero"] == "000000"
    assert got["links"] == {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                            "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
    assert got["mqueue_mounted"] and got["sys_write"] == errno.EROFS
    assert got["cgroups"] and got["cgroup_write"] == errno.EROFS
    # the host's old root is gone: every mount is at or below the container's "/"
    assert got["mount_points"][0] == "/" and not any(str(tmp) in p for p in got["mount_points"])
    assert (rootfs / "etc" / "secret").read_text() == "s3cret"
    assert not (rootfs / "newfile").exists()


@pytest.mark.parametrize("propagation", [None, "shared", "slave"])
def test_full_flow_gofer_holds_namespace_init_joins_and_execs(bundle, propagation):
    """The real process picture: a gofer prepares and waits; an init setns()es into
    its mount namespace, unshares a copy (and a pid namespace), pivots, and execs."""
    tmp, rootfs, mp = bundle
    extra = {"rootfsPropagation": propagation} if propagation else {}
    cfg = config(rootfs, PROC, DEV, DEVPTS, TMP, maskedPaths=["/proc/kcore"], root_readonly=True, **extra)

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    report_r, report_w = os.pipe()
    gofer = os.fork()
    if gofer == 0:
        os.close(ready_r), os.close(done_w), os.close(report_r)

        def hold():
            libc.unshare(libc.CLONE_NEWNS)
            prepare_rootfs(cfg, str(tmp), str(mp))
            os.write(ready_w, b"1")
            os.read(done_r, 1)  # the container has run
            points = mount_points()
            view = {"busybox": (mp / "bin" / "busybox").is_file(),
                    "proc_in_view": any(p.startswith(str(mp) + "/proc") for p in points),
                    "root_still_host": os.path.exists(str(tmp / "mnt"))}
            cleanup(str(mp))
            return view

        _report(report_w, hold)
    os.close(ready_w), os.close(done_r), os.close(report_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the gofer failed before it was ready"
        out_r, out_w = os.pipe()
        init = os.fork()
        if init == 0:
            code = 1
            try:
                os.close(out_r)
                ns = os.open(f"/proc/{gofer}/ns/mnt", os.O_RDONLY)
                libc.setns(ns, libc.CLONE_NEWNS)
                libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWPID)
                child = os.fork()
                if child == 0:
                    try:
                        rootfs_mod.mount_entries(cfg, str(tmp), str(mp), None, None)
                        enter_rootfs(str(mp))
                        finish_in_container(cfg)
                        lock_down(cfg)
                        os.dup2(out_w, 1)
                        os.dup2(out_w, 2)
                        os.execv("/bin/busybox", ["sh", "-c", "head -1 /proc/1/status; echo pid=$$; ls /dev; awk '$5 == \"/\"' /proc/self/mountinfo; touch /x"])
                    except BaseException:
                        os.write(out_w, traceback.format_exc().encode())
                    finally:
                        os._exit(127)
                code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
            except BaseException:
                os.write(out_w, traceback.format_exc().encode())
            finally:
                os._exit(code)
        os.close(out_w)
        with os.fdopen(out_r) as f:
            output = f.read()
        status = os.waitstatus_to_exitcode(os.waitpid(init, 0)[1])
    finally:
        os.write(done_w, b"1")
        os.close(done_w)
        os.close(ready_r)
        view = ok(_collect(gofer, report_r))
    lines = output.splitlines()
    assert lines[:2] == ["Name:\tbusybox", "pid=1"], output  # comm of the exec'd file
    for name in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "fd", "stdin", "stdout", "stderr"):
        assert name in lines, (name, output)
    root_line = next(line for line in lines if len(line.split()) > 6 and line.split()[4] == "/")
    assert ("shared:" in root_line) == (propagation == "shared"), root_line  # a new peer group after pivot
    assert "Read-only file system" in output and status == 1, output  # touch /x on the read-only root
    assert view == {"busybox": True, "proc_in_view": False, "root_still_host": True}
