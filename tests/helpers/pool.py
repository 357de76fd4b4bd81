"""A node agent (``zentry pool serve``) run by a test: its config, its process, its end.

``PoolAgent(root, config_dir, pools=..., **agent_keys).start()`` writes the
config (JSON), starts the agent as a child process (optionally under
``prefix``, e.g. ``ip netns exec NS``), and waits until every pool has its
warm sandboxes. ``stop()`` is SIGTERM and a wait; ``kill()`` SIGKILLs the
agent alone (its sandboxes end with their channels).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Sequence

from helpers.bundle import zentry_command


def local_endpoint(root: os.PathLike | str) -> str:
    from zentry.cmd.pool import local_endpoint as endpoint

    return endpoint(str(root))


class PoolAgent:
    def __init__(self, root: os.PathLike | str, config_dir: os.PathLike | str, pools: dict, *, prefix: Sequence[str] = (),
                 name: str = "agent", **keys) -> None:
        self.root = str(root)
        self.config_path = Path(config_dir) / f"{name}.json"
        self.log_path = Path(config_dir) / f"{name}.log"
        self.config = {"node": name, "pools": pools, **keys}
        self.prefix = list(prefix)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return local_endpoint(self.root)

    def start(self, wait_warm: bool = True, timeout: float = 120) -> "PoolAgent":
        self.config_path.write_text(json.dumps(self.config))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, *zentry_command(), "--root", self.root, "pool", "serve", "--config", str(self.config_path)],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait_warm:
            self.wait_warm(timeout)
        return self

    def status(self):
        from zentry.actors.pool.client import Client

        with Client(self.endpoint) as client:
            return client.status().get(self.endpoint)

    def wait_warm(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the agent exited ({self.proc.returncode}): {self.log()}")
            try:
                st = self.status() if os.path.exists(self.endpoint[6:]) else None
            except Exception:
                st = None
            if st is not None and all(p["warm"] >= p["target"] for p in st.pools):
                return
            time.sleep(0.1)
        raise AssertionError(f"pools not warm within {timeout}s: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 90) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def templates(root: os.PathLike | str) -> dict[str, int]:
    """The pools' templates under ``root`` (zentry containers): id -> its init (the spawner)."""
    r = subprocess.run([*zentry_command(), "--root", str(root), "list", "--format", "json"], capture_output=True, text=True, check=True)
    return {c["id"]: c["pid"] for c in json.loads(r.stdout or "[]") if c.get("status") == "running"}


def sandboxes(root: os.PathLike | str) -> dict[str, int]:
    """The live sandboxes under ``root``: id -> its init's pid, found where the agent
    puts them, each in a cgroup of its own below its template's (memory hierarchy)."""
    out = {}
    for pid in templates(root).values():
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                path = next(line.split(":", 2)[2].strip() for line in f if ":memory:" in line)
        except (OSError, StopIteration):
            continue
        top = f"/sys/fs/cgroup/memory{path}"
        for name in os.listdir(top) if os.path.isdir(top) else []:
            if not os.path.isdir(os.path.join(top, name)):
                continue
            with open(os.path.join(top, name, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
            inits = [p for p in pids if _ppid(p) == pid]
            out[name] = inits[0] if inits else 0
    return out


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0
