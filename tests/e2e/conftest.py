"""E2E fixtures: podman and containerd with private state, driving the runtime
under test.

The runtime is `$ZENTRY_E2E_RUNTIME` (e.g. `$(which runc)` to check the
harness itself), else `$ZENTRY_BIN`, else the installed `zentry` console
script.  Its state root for podman (which passes no --root) is
`$ZENTRY_E2E_RUNTIME_ROOT`, default /run/<basename>; the leak guard requires
it to gain no entry.

Tests that compare with runc in the same test use `runtimes` (runc first,
then the runtime under test) and `podman_for(runtime)`: one private podman
per runtime.
"""
from __future__ import annotations

import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pytest

from helpers.bundle import zentry_command
from helpers.engines import Containerd, Podman, _cgroup_dirs_under, podman_session_cleanup
from helpers.skips import IS_ROOT, require_tool


def _resolve_runtime() -> tuple[str | None, str]:
    """(runtime path or None, why it is missing)."""
    env = os.environ.get("ZENTRY_E2E_RUNTIME")
    if env:
        path = shutil.which(env) or env
        if not os.access(path, os.X_OK):
            return None, f"ZENTRY_E2E_RUNTIME={env} is not an executable"
        return os.path.abspath(path), ""
    env_bin = os.environ.get("ZENTRY_BIN")  # a worktree's own launcher
    if env_bin and os.access(env_bin, os.X_OK):
        return os.path.abspath(env_bin), ""
    # Prefer the script beside this interpreter to a pyenv shim (podman and
    # the containerd shim run it with their own environment).
    script = Path(sysconfig.get_path("scripts"), "zentry")
    path = str(script) if os.access(script, os.X_OK) else shutil.which("zentry")
    if path is None:
        return None, "no zentry executable installed (pip install -e .) and ZENTRY_E2E_RUNTIME unset"
    if zentry_command() is None:
        return None, f"{path} exists but its entry module zentry.cmd.main does not yet"
    return path, ""


RUNTIME, RUNTIME_MISSING = _resolve_runtime()


@pytest.fixture(scope="session")
def runtime() -> str:
    """Absolute path of the OCI runtime under test (skips when absent)."""
    if not IS_ROOT:
        pytest.skip("e2e tests drive podman/containerd as root: run as uid 0")
    if RUNTIME is None:
        pytest.skip(f"runtime under test is absent: {RUNTIME_MISSING}")
    return RUNTIME


def state_root_of(runtime: str) -> str:
    """The runtime's default --root (podman passes none)."""
    if runtime == RUNTIME and os.environ.get("ZENTRY_E2E_RUNTIME_ROOT"):
        return os.environ["ZENTRY_E2E_RUNTIME_ROOT"]
    return f"/run/{os.path.basename(runtime)}"


@pytest.fixture(scope="session")
def runc() -> str:
    """Absolute path of runc, the reference every comparison is made with."""
    require_tool("runc", "e2e tests compare the runtime under test with runc")
    return os.path.abspath(shutil.which("runc"))


@pytest.fixture(scope="session")
def runtimes(runtime: str, runc: str) -> list[tuple[str, str]]:
    """[(label, path)]: runc, then the runtime under test; a test checks the
    same property for each, so a harness fault shows as runc failing."""
    return [("runc", runc), (f"under test ({os.path.basename(runtime)})", runtime)]


@pytest.fixture
def rootfs(busybox_rootfs) -> Path:
    """A private busybox root filesystem for `--rootfs`."""
    return busybox_rootfs("rootfs")


@pytest.fixture(scope="session")
def _podman_session(runtime: str):
    require_tool("podman", "podman e2e tests")
    require_tool("conmon", "podman needs conmon to run containers")
    before = _cgroup_dirs_under(Podman.CGROUP_PARENT)
    yield
    podman_session_cleanup(before)


@pytest.fixture
def podman_for(_podman_session, leak_guard):
    """Factory: `podman_for(runtime)` -> a Podman (callable: `podman(*args,
    timeout=120, input=None)` -> CompletedProcess) with private
    containers.conf/root/runroot/tmpdir and `--runtime <runtime>`; every
    container and pod is removed and the folder deleted afterwards."""
    made: list[Podman] = []

    def make(runtime: str) -> Podman:
        base = tempfile.mkdtemp(prefix="zp-", dir="/tmp")  # short: conmon socket paths
        leak_guard.add_needle(base)
        leak_guard.ignore_cgroup(Podman.CGROUP_PARENT)
        leak_guard.ignore_cgroup(f"{Podman.CGROUP_PARENT}/conmon")
        leak_guard.add_state_dir(state_root_of(runtime), shared=True)
        made.append(Podman(Path(base), runtime))
        return made[-1]

    yield make
    errors = []
    for engine in made:
        # Our containers' and pods' ids name their cgroups (libpod-<id>) and the
        # runtime's state entries: watch exactly those.
        for object_id in engine.object_ids():
            leak_guard.add_needle(object_id)
        errors += engine.cleanup()
    if errors:
        pytest.fail("podman cleanup failed:\n  " + "\n  ".join(errors), pytrace=False)


@pytest.fixture
def podmen(runtimes, podman_for, busybox_rootfs) -> list[tuple[str, Podman, Path]]:
    """[(label, podman, rootfs)]: a private podman and busybox rootfs for runc,
    then the same for the runtime under test."""
    return [(label, podman_for(path), busybox_rootfs(f"rootfs{i}"))
            for i, (label, path) in enumerate(runtimes)]


@pytest.fixture
def podman(podman_for, runtime: str) -> Podman:
    """A Podman (see podman_for) running containers with the runtime under test."""
    return podman_for(runtime)


@pytest.fixture(scope="session")
def containerd(runtime: str) -> Containerd:
    """A private containerd daemon for the session (namespace `e2e-<pid>`),
    stopped by pid at the end with all its state."""
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2"):
        require_tool(tool, "containerd e2e tests")
    base = tempfile.mkdtemp(prefix="zc-", dir="/tmp")
    # No "zentry" in the namespace: other sessions' cleanups match that word.
    daemon = Containerd(Path(base), f"e2e-{os.getpid()}", runtime)
    try:
        daemon.start()
    except Exception:
        daemon.stop()
        raise
    yield daemon
    errors = daemon.stop()
    if errors:
        raise RuntimeError("containerd teardown: " + "; ".join(errors))


@pytest.fixture
def ctr(containerd: Containerd, leak_guard) -> Containerd:
    """The session's containerd, for one test: its namespace is emptied (tasks
    killed and deleted, containers deleted) after the test, and the leak
    guard watches the daemon's folder, namespace cgroups and global dirs."""
    leak_guard.add_needle(str(containerd.base))
    leak_guard.add_needle(containerd.namespace)
    leak_guard.ignore_cgroup(containerd.namespace)  # the namespace's parent cgroup
    leak_guard.add_state_dir(str(containerd.runtime_root))
    for d in ("/run/containerd/s", "/run/containerd/fifo"):  # global: others' too
        leak_guard.add_state_dir(d, shared=True)
    yield containerd
    errors = containerd.clean_namespace()
    if errors:
        pytest.fail("containerd cleanup failed:\n  " + "\n  ".join(errors), pytrace=False)
