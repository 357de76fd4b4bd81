"""Podman and containerd with fully private state, driving a runtime under test
the way tests/../shared/notes/engines.md records them doing it on this host.

Podman: the system containers.conf (every default a user gets, above all
`default_sysctls` and `default_capabilities`) with only what this host needs
changed (see `host_containers_conf`), --root/--runroot/--tmpdir in one
private folder, `--runtime RT` as a global flag so pod infra containers use
it too.
Containerd: a private daemon (config version 2, own root/state/sockets/opt,
CRI disabled), driven with `ctr --address`; the shim runs the runtime via
`--runc-binary`.  Some paths stay global because containerd 1.6 hardcodes
them: the runtime root /run/containerd/runc/<namespace>, shim sockets in
/run/containerd/s and ctr's fifos in /run/containerd/fifo.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import termios
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import psutil

from helpers.leaks import CGROUP_ROOT, rmdir_cgroup, unmount_all_under

# The files podman 4.3 reads as root when CONTAINERS_CONF is unset, in order;
# each key of a later file replaces the earlier one's.  CONTAINERS_CONF
# replaces all of them (this podman has no CONTAINERS_CONF_OVERRIDE), so the
# file we give it starts from their merge.
SYSTEM_CONTAINERS_CONFS = (Path("/usr/share/containers/containers.conf"),
                           Path("/etc/containers/containers.conf"))
SYSTEM_CONTAINERS_CONF_DIR = Path("/etc/containers/containers.conf.d")

# The only keys changed from the system configuration, each because this host
# requires it (nothing here changes what a container sees from podman's
# defaults except the two ulimits, which podman could not set at all here).
HOST_CONTAINERS_CONF = {
    "containers": {
        # root lacks CAP_SYS_RESOURCE here, so no hard limit can be raised:
        # podman's defaults as root (nofile 1048576, nproc above this host's
        # hard 96367) make every create fail ("error setting rlimit").
        "default_ulimits": ["nofile=20000:20000", "nproc=32768:32768"],
    },
    "engine": {
        # No systemd on this host: the systemd cgroup manager cannot work.
        "cgroup_manager": "cgroupfs",
        # No journald either: events go to a file (in our private tmpdir).
        "events_logger": "file",
    },
}


def _merge(into: dict, top: dict) -> None:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def host_containers_conf() -> dict:
    """The system containers.conf files merged as podman merges them, with
    HOST_CONTAINERS_CONF on top."""
    conf: dict = {}
    drop_ins = sorted(SYSTEM_CONTAINERS_CONF_DIR.glob("*.conf")) if SYSTEM_CONTAINERS_CONF_DIR.is_dir() else []
    for path in (*SYSTEM_CONTAINERS_CONFS, *drop_ins):
        if path.is_file():
            with open(path, "rb") as f:
                _merge(conf, tomllib.load(f))
    _merge(conf, HOST_CONTAINERS_CONF)
    return conf


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"containers.conf value of type {type(value).__name__}")


def to_toml(conf: dict, prefix: str = "") -> str:
    """TOML text of `conf` (tables of scalars, arrays and sub-tables: all a
    containers.conf holds)."""
    lines = [f"{key} = {_toml_value(v)}" for key, v in conf.items() if not isinstance(v, dict)]
    for key, v in conf.items():
        if isinstance(v, dict):
            name = f"{prefix}.{key}" if prefix else key
            lines += [f"[{name}]", to_toml(v, name).rstrip("\n")]
    return "\n".join(line for line in lines if line) + "\n"


CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = "{base}/debug.sock"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
"""

CONTAINER_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONTAINERD_RUN_ROOT = Path("/run/containerd")


@dataclass
class PtyResult:
    returncode: int
    output: str


def run_in_pty(argv: Sequence[str], timeout: float = 60.0, env: dict | None = None) -> PtyResult:
    """Run `argv` with a fresh pty as controlling terminal and stdio; returns
    its exit status and everything it wrote (CRLF as the tty made it).
    Killed (by pid) on timeout."""
    master, slave = os.openpty()

    def make_ctty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=env,
                                start_new_session=True, preexec_fn=make_ctty, close_fds=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(list(argv), timeout, b"".join(chunks))
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError as err:
                    if err.errno == errno.EIO:  # every slave end closed
                        break
                    raise
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                # Exited but a grandchild may still hold the slave: stop reading.
                break
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
    return PtyResult(rc, b"".join(chunks).decode(errors="replace"))


def _cgroup_dirs_under(rel: str) -> set[str]:
    found = set()
    for hier in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        d = hier / rel
        if d.is_dir():
            for dp, _, _ in os.walk(d):
                found.add(dp)
    return found


class Podman:
    """podman with private state under `base`, running containers with `runtime`."""

    CGROUP_PARENT = "libpod_parent"  # cgroupfs manager's parent for everything

    def __init__(self, base: Path, runtime: str):
        self.base = Path(base)
        self.runtime = runtime
        for d in ("root", "runroot", "tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.conf = self.base / "containers.conf"
        self.conf.write_text(to_toml(host_containers_conf()))
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        self._pods: set[str] = set()

    def argv(self, *args: str) -> list[str]:
        b = self.base
        return ["podman", "--root", str(b / "root"), "--runroot", str(b / "runroot"),
                "--tmpdir", str(b / "tmp"), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--runtime", self.runtime, *map(str, args)]

    def __call__(self, *args: str, timeout: float = 120, input: str | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
        res = subprocess.run(self.argv(*args), env=self.env, input=input, capture_output=True,
                             text=True, timeout=timeout, check=check,
                             stdin=None if input is not None else subprocess.DEVNULL)
        if args[:2] == ("pod", "create") and res.returncode == 0:
            self._pods.update(res.stdout.split())  # for cleanup(): the pod is gone by then
        return res

    def object_ids(self) -> set[str]:
        """Ids of every container and pod this podman made (its events log)."""
        ids = set(self._pods)
        try:
            with open(self.base / "tmp" / "events" / "events.log") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("Type") in ("container", "pod") and event.get("ID"):
                        ids.add(event["ID"])
        except OSError:
            pass
        return ids

    def cleanup(self) -> list[str]:
        """Remove every container and pod (through the runtime), then what
        podman itself leaves: storage mounts, the private folder, and the
        empty cgroups of our pods that podman 4.3 forgets in the named
        (systemd, unified) hierarchies of this host."""
        errors = []
        pods = self._pods | set(self("pod", "ps", "--quiet", "--no-trunc", timeout=60).stdout.split())
        for args in (("rm", "--all", "--force", "--time", "0"), ("pod", "rm", "--all", "--force")):
            try:
                res = self(*args, timeout=60)
                if res.returncode != 0:
                    errors.append(f"podman {' '.join(args)}: {res.stderr.strip()}")
            except subprocess.TimeoutExpired:
                errors.append(f"podman {' '.join(args)}: timed out")
        errors += unmount_all_under(str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)
        for pod in pods:
            if not re.fullmatch(r"[0-9a-f]{64}", pod):
                continue
            for d in _cgroup_dirs_under(f"{self.CGROUP_PARENT}/{pod}"):
                if os.path.basename(d) == pod:
                    try:
                        os.rmdir(d)  # only if empty: a runtime's leak stays visible
                    except OSError:
                        pass
        return errors


def podman_session_cleanup(existed_before: set[str]) -> None:
    """Remove libpod_parent (and its conmon child) where this session made them."""
    for d in sorted(_cgroup_dirs_under(Podman.CGROUP_PARENT) - existed_before, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


class Containerd:
    """A private containerd daemon under `base`, with ctr in `namespace`."""

    def __init__(self, base: Path, namespace: str, runtime: str):
        self.base = Path(base)
        self.namespace = namespace
        self.runtime = runtime
        self.socket = self.base / "containerd.sock"
        self.config = self.base / "config.toml"
        self.log = self.base / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self._run_dirs_before = {p for p in ("", "runc", "s", "fifo")
                                 if (CONTAINERD_RUN_ROOT / p).exists()}

    @property
    def runtime_root(self) -> Path:
        """Where the runc shim tells the runtime to keep state (--root)."""
        return CONTAINERD_RUN_ROOT / "runc" / self.namespace

    def start(self, timeout: float = 20.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(CONTAINERD_CONFIG.format(base=self.base))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.is_socket() and self.ctr("version", timeout=10).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def ctr_argv(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", self.namespace, *map(str, args)]

    def ctr(self, *args: str, timeout: float = 120, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(self.ctr_argv(*args), input=input, capture_output=True, text=True,
                              timeout=timeout, check=check,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def run_argv(self, rootfs: str, cid: str, *cmd: str, opts: Sequence[str] = (),
                 runtime: str | None = None) -> list[str]:
        """`ctr run --rm --rootfs` argv for `cmd` in `rootfs` with `runtime`
        (default: the runtime under test); `opts` may replace --rm with
        --detach."""
        rm = () if "--detach" in opts else ("--rm",)
        return self.ctr_argv("run", *rm, *opts, "--rootfs", "--env", CONTAINER_PATH_ENV,
                             "--runtime", "io.containerd.runc.v2",
                             "--runc-binary", runtime or self.runtime, rootfs, cid, *cmd)

    def clean_namespace(self) -> list[str]:
        """Kill and delete every task and container in our namespace."""
        errors = []
        if self.proc is None or self.proc.poll() is not None:
            return errors
        tasks = self.ctr("task", "ls", "--quiet", timeout=30).stdout.split()
        for t in tasks:
            self.ctr("task", "resume", t, timeout=30)
            self.ctr("task", "kill", "--signal", "SIGKILL", t, timeout=30)
        for t in tasks:
            res = self.ctr("task", "delete", "--force", t, timeout=60)
            if res.returncode != 0 and "not found" not in res.stderr:
                errors.append(f"ctr task delete {t}: {res.stderr.strip()}")
        for c in self.ctr("container", "ls", "--quiet", timeout=30).stdout.split():
            res = self.ctr("container", "delete", c, timeout=60)
            if res.returncode != 0:
                errors.append(f"ctr container delete {c}: {res.stderr.strip()}")
        return errors

    def _shims(self) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if any(str(self.base) in a for a in cmd) and p.pid != (self.proc.pid if self.proc else -1):
                found.append(p)
        return found

    def stop(self) -> list[str]:
        """Stop the daemon by pid, then remove everything it made."""
        errors = self.clean_namespace()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in self._shims():  # shims of tasks that could not be deleted
            try:
                p.kill()
            except psutil.Error:
                pass
        errors += unmount_all_under(str(self.base))
        shutil.rmtree(self.base, ignore_errors=True)
        for hier in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
            errors += rmdir_cgroup(str(hier / self.namespace))
        shutil.rmtree(self.runtime_root, ignore_errors=True)
        for p in ("runc", "s", "fifo", ""):  # the global dirs, where we made them
            d = CONTAINERD_RUN_ROOT / p
            if p not in self._run_dirs_before:
                try:
                    d.rmdir()
                except OSError:
                    pass
        return errors
