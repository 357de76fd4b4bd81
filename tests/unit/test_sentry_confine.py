"""The sentry thread's own filter (``sentry/confine.py``): what a confined
thread can no longer do, and that it binds that thread only.

Each check runs in a forked child (a filter cannot be unloaded), in a fresh
thread that confines itself as the sentry thread does; the child reports
what each call did over a pipe.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import threading

import pytest

from zentry.sentry import confine
from zentry.sentry.abi import libc
from zentry.sentry.abi.libseccomp import pyseccomp
from zentry.sentry.filter import LoadedProgram, compile_policy, policy_from_table
from zentry.sentry.table import TABLE


def _errno_of(call) -> int | str:
    """0 if ``call()`` succeeded, else its errno."""
    try:
        call()
        return 0
    except OSError as err:
        return err.errno
    except Exception as err:  # noqa: BLE001  (reported, so that the test shows it)
        return f"{type(err).__name__}: {err}"


def _in_child(body) -> dict:
    """Run ``body() -> dict`` in a forked child; its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, json.dumps(body()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(b"".join(chunks))


def _status(tid: int | None = None) -> dict:
    path = "/proc/self/status" if tid is None else f"/proc/self/task/{tid}/status"
    with open(path) as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}


def _syscall(nr: int, *args: int):
    def call():
        res = libc.libc().syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
        if res < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return call


def _fork() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _forbidden(another: LoadedProgram) -> dict:
    """The calls a compromised sentry must never make (``another``: a filter to try to load)."""
    from zentry.sentry.abi.syscalls import SYSCALLS

    nr = {name: n for n, name in SYSCALLS.items()}
    return {
        "execve": lambda: os.execv("/bin/true", ["/bin/true"]),
        "execveat": _syscall(nr["execveat"], -100, 0, 0, 0, 0),
        "fork": _fork,
        "clone(CLONE_NEWUSER)": _syscall(nr["clone"], 0x10000000 | 17, 0, 0, 0, 0),
        "clone(CLONE_THREAD|CLONE_NEWNS)": _syscall(nr["clone"], 0x00010000 | 0x00020000, 0, 0, 0, 0),
        "unshare": lambda: libc.unshare(libc.CLONE_NEWNS),
        "setns": _syscall(nr["setns"], 0, 0),
        "ptrace": _syscall(nr["ptrace"], 16, 1, 0, 0),  # PTRACE_ATTACH to pid 1
        "mount": lambda: libc.mount("none", "/mnt", "tmpfs", 0),
        "umount2": _syscall(nr["umount2"], 0, 0),
        "fsopen": _syscall(nr["fsopen"], 0, 0),
        "open_tree": _syscall(nr["open_tree"], -100, 0, 0),
        "pivot_root": _syscall(nr["pivot_root"], 0, 0),
        "bpf": _syscall(nr["bpf"], 0, 0, 0),
        "kexec_load": _syscall(nr["kexec_load"], 0, 0, 0, 0),
        "kexec_file_load": _syscall(nr["kexec_file_load"], -1, -1, 0, 0, 0),
        "init_module": _syscall(nr["init_module"], 0, 0, 0),
        "finit_module": _syscall(nr["finit_module"], -1, 0, 0),
        "delete_module": _syscall(nr["delete_module"], 0, 0),
        "keyctl": _syscall(nr["keyctl"], 0, 0),
        "add_key": _syscall(nr["add_key"], 0, 0, 0, 0, 0),
        "request_key": _syscall(nr["request_key"], 0, 0, 0, 0),
        "seccomp (a further filter)": lambda: another.load(0),
        "pidfd_getfd": _syscall(nr["pidfd_getfd"], -1, 0, 0),
        "prctl": lambda: libc.prctl(4, 1),  # PR_SET_DUMPABLE
        "setuid": lambda: os.setuid(0),
        "memfd_create": lambda: os.memfd_create("x"),
        "socket": lambda: __import__("socket").socket(),
        "ioctl(TIOCSTI)": _syscall(nr["ioctl"], 0, 0x5412, 0),
    }


def test_a_confined_thread_is_refused_what_a_compromised_sentry_must_never_do():
    prog = confine.program()

    def body() -> dict:
        out = {}
        calls = _forbidden(LoadedProgram(compile_policy(policy_from_table(TABLE))))  # compiled here: the thread cannot

        def confined():
            confine.confine_thread(prog)
            for name, call in calls.items():
                out[name] = _errno_of(call)

        t = threading.Thread(target=confined)
        t.start()
        t.join()
        return out

    results = _in_child(body)
    wrong = {name: (errno.errorcode.get(e, e) if isinstance(e, int) else e) for name, e in results.items() if e != errno.EPERM}
    assert not wrong, f"not refused with EPERM: {wrong}"
    assert len(results) >= 25


def test_the_filter_binds_the_confined_thread_only():
    """Seccomp mode 2 and no_new_privs on that thread; the main thread keeps neither,
    and can still fork and exec (it forks the container inits)."""
    prog = confine.program()

    def body() -> dict:
        out = {}
        before = _status()["CapEff"]

        def confined():
            confine.confine_thread(prog)
            out["tid"] = threading.get_native_id()
            out["thread"] = {k: v for k, v in _status(out["tid"]).items() if k in ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff", "CapPrm")}
            # a thread of its own still starts (clone with CLONE_THREAD; clone3 answers ENOSYS) and inherits the filter
            inner = {}
            t = threading.Thread(target=lambda: inner.update(_status(threading.get_native_id())))
            t.start()
            t.join()
            out["its thread"] = inner.get("Seccomp")
            out["getpid"] = os.getpid()  # allowed calls run

        t = threading.Thread(target=confined)
        t.start()
        t.join()
        out["main"] = {k: v for k, v in _status().items() if k in ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff")}
        out["before"] = before
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/sh", ["/bin/sh", "-c", "exit 7"])
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        out["main execs"] = os.waitstatus_to_exitcode(status)
        return out

    out = _in_child(body)
    caps = {k: int(out["thread"].pop(k), 16) for k in ("CapEff", "CapPrm")}
    assert out["thread"] == {"Seccomp": "2", "Seccomp_filters": "1", "NoNewPrivs": "1"}, out
    keep = sum(1 << n for n in confine.KEEP_CAPS.values())
    assert caps["CapEff"] == caps["CapPrm"] == int(out["before"], 16) & keep, out  # every other capability dropped
    assert out["its thread"] == "2", out
    assert out["main"] == {"Seccomp": "0", "Seccomp_filters": "0", "NoNewPrivs": "0", "CapEff": out["before"]}, out
    assert out["main execs"] == 7, out


def test_the_allowlist_refuses_by_default_and_never_allows_the_dangerous():
    policy = confine.policy()
    assert policy.default == pyseccomp.ERRNO(errno.EPERM)
    assert policy.flags == 0  # no TSYNC: the thread alone; no listener
    for name in ("execve", "execveat", "fork", "vfork", "ptrace", "unshare", "setns", "mount", "bpf", "seccomp",
                 "prctl", "init_module", "finit_module", "kexec_load", "keyctl", "add_key", "request_key",
                 "pidfd_getfd", "socket", "memfd_create", "clone", "clone3", "ioctl"):
        assert name not in confine.ALLOWED, name  # clone and ioctl: only with the argument rules


def test_what_the_sentry_does_off_the_hot_path_still_works_confined(tmp_path):
    """The fail-closed and logging paths, which the sentry tests rarely reach:
    a log line with a traceback to a file, a cgroup-style file write, /proc
    reads, signals through a pidfd, tracee memory, sysinfo."""
    import logging
    import signal

    from zentry.sentry.handlers.emulate import boottime_offset, sysinfo_bytes
    from zentry.sentry.kernel import ContainerView
    from zentry.sentry.tracee import Memory, Tracees

    prog = confine.program()
    logfile = tmp_path / "log"
    target = tmp_path / "cgroup.kill"
    view = ContainerView("c", "h", memory_limit_bytes=1 << 30, init_pid=os.getpid())

    def body() -> dict:
        out = {}
        sleeper = os.fork()
        if sleeper == 0:
            signal.pause()
            os._exit(0)
        logger = logging.getLogger("zentry.test.confined")
        logger.addHandler(logging.FileHandler(logfile, delay=True))  # opened at the first line, on the thread
        data = ctypes.create_string_buffer(b"tracee bytes")

        def confined():
            confine.confine_thread(prog)
            try:
                raise ValueError("a handler bug")
            except ValueError:
                logger.exception("handler failed")
            with open(target, "w") as f:
                f.write("1")
            out["offset"] = boottime_offset(os.getpid())
            out["sysinfo"] = len(sysinfo_bytes(view))
            out["listdir"] = len(os.listdir("/proc/self/task"))
            mem = Memory()
            addr = ctypes.addressof(data)
            out["read"] = mem.read(os.getpid(), addr, 12).decode()
            mem.write(os.getpid(), addr, b"written back")
            out["tid info"] = Tracees().get(threading.get_native_id()).tgid == os.getpid()
            pidfd = libc.pidfd_open(sleeper)
            libc.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            os.kill(os.getpid(), 0)

        def guarded():
            try:
                confined()
            except BaseException as exc:  # noqa: BLE001  (reported)
                out["error"] = repr(exc)

        t = threading.Thread(target=guarded)
        t.start()
        t.join()
        _, status = os.waitpid(sleeper, 0)
        out["sleeper"] = os.waitstatus_to_exitcode(status)
        out["data"] = data.value.decode()
        return out

    out = _in_child(body)
    assert "error" not in out, out
    assert out["read"] == "tracee bytes" and out["data"] == "written back", out
    assert out["sleeper"] == -9 and out["tid info"] and out["sysinfo"] > 0 and out["listdir"] >= 2, out
    assert "ValueError: a handler bug" in logfile.read_text()
    assert target.read_text() == "1"


def test_a_sentry_that_cannot_confine_itself_does_not_start(monkeypatch):
    from zentry.sentry.kernel import Sentry

    def refuse(prog):
        raise PermissionError(errno.EACCES, "seccomp(SET_MODE_FILTER): refused")

    monkeypatch.setattr(confine, "confine_thread", refuse)
    s = Sentry()
    try:
        with pytest.raises(RuntimeError, match="cannot confine itself"):
            s.start()
        assert not s.alive
    finally:
        s.stop()
