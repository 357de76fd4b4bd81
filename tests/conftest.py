"""Fixtures every tier shares: the zentry CLI, private roots, busybox bundles,
and the leak guard that fails any integration/e2e/security/fault test which
leaves a process, mount, cgroup or runtime state behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# `python -m pytest` run from the repository root puts the root on sys.path,
# where the top-level folders (cmd/, bus/...) would shadow stdlib modules
# (pdb needs the real `cmd`).  zentry itself is found through its installed
# package mapping, so drop the root; helpers are imported from tests/.
_REPO = str(TESTS_DIR.parent)
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _REPO]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
for _name in ("cmd", "bus", "actors", "sentry"):
    _mod = sys.modules.get(_name)
    if _mod is not None and str(getattr(_mod, "__file__", "") or "").startswith(_REPO + os.sep):
        del sys.modules[_name]

from helpers.bundle import RootfsCache, make_bundle, zentry_command  # noqa: E402
from helpers.leaks import LeakWatch, Snapshot  # noqa: E402
from helpers.skips import IS_ROOT  # noqa: E402

LEAK_CHECKED_TIERS = {"integration", "e2e", "security", "fault"}


def _strict_leaks() -> bool:
    """Strict: anything new mentioning "zentry" is a leak (and is removed).
    Right on a CI machine, where nothing else runs; on a shared development
    machine other people's zentry processes and cgroups would be blamed (and
    killed), so there only what names this test's own private dirs, engine
    namespaces or descends from the test process counts."""
    flag = os.environ.get("ZENTRY_LEAK_STRICT")
    if flag is not None:
        return flag not in ("", "0", "false", "no")
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


STRICT_LEAKS = _strict_leaks()
ZENTRY_TIMEOUT = float(os.environ.get("ZENTRY_TEST_TIMEOUT", "60"))


def pytest_collection_modifyitems(config, items):
    skip_root = pytest.mark.skip(reason="marked root: needs uid 0 (namespaces, mounts, cgroups)")
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


def _tier(node) -> str | None:
    try:
        rel = Path(node.path).resolve().relative_to(TESTS_DIR)
    except ValueError:
        return None
    return rel.parts[0] if len(rel.parts) > 1 else None


class LeakGuard:
    """One test's leak watch: fixtures register the private dirs they make."""

    def __init__(self, active: bool, tmp_path: Path):
        self.active = active
        generic = ["zentry"] if STRICT_LEAKS else []
        self.watch = LeakWatch(needles=[*generic, str(tmp_path)])
        self.before: Snapshot | None = None
        self.private_roots: list[str] = []

    def add_needle(self, needle: str) -> None:
        if needle not in self.watch.needles:
            self.watch.needles.append(needle)

    def add_private_root(self, path: str) -> None:
        """A runtime --root that must be empty after the test."""
        self.private_roots.append(path)
        self.watch.private_roots.append(path)
        self.add_needle(path)

    def add_state_dir(self, path: str, shared: bool = False) -> None:
        """A state dir that must gain no entry (`shared`: no entry naming a
        needle, unless in strict mode, where every new entry counts)."""
        shared = shared and not STRICT_LEAKS
        if self.before is not None:
            self.watch.baseline_state_dir(self.before, path, shared=shared)
        else:
            dirs = self.watch.shared_state_dirs if shared else self.watch.state_dirs
            if path not in dirs:
                dirs.append(path)

    def ignore_cgroup(self, rel: str) -> None:
        """An engine-wide parent cgroup (relative to the hierarchy) to ignore."""
        self.watch.ignore_cgroups.add(rel)


@pytest.fixture
def leak_guard(request, tmp_path) -> LeakGuard:
    """The current test's LeakGuard (active only in the leak-checked tiers)."""
    return LeakGuard(IS_ROOT and _tier(request.node) in LEAK_CHECKED_TIERS, tmp_path)


@pytest.fixture(autouse=True)
def _leak_check(leak_guard: LeakGuard):
    """Snapshot before the test; after it (and after every other fixture's
    teardown) fail with the list of leaks, then remove them."""
    if leak_guard.active:
        leak_guard.before = leak_guard.watch.snapshot()
    yield
    try:
        if leak_guard.active:
            leaks = leak_guard.watch.wait_for_leaks(leak_guard.before)
            if leaks:
                errors = leak_guard.watch.cleanup(leaks)
                msg = "test leaked:\n" + leaks.report()
                if errors:
                    msg += "\ncleanup failed for:\n  " + "\n  ".join(errors)
                pytest.fail(msg, pytrace=False)
    finally:
        for root in leak_guard.private_roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def zentry_root(leak_guard: LeakGuard) -> Path:
    """A private, short (unix socket paths!) directory for `zentry --root`;
    it must be empty again when the test ends."""
    path = tempfile.mkdtemp(prefix="zr-", dir="/tmp")
    leak_guard.add_private_root(path)
    return Path(path)


@pytest.fixture
def zentry(zentry_root: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`zentry(*args, timeout=60, input=None, env=None, cwd=None)` runs the CLI as
    `zentry --root <zentry_root> *args` and returns the CompletedProcess (text,
    stdout/stderr captured, stdin /dev/null unless `input`)."""
    prefix = zentry_command()
    if prefix is None:
        pytest.skip("the zentry CLI cannot run: module zentry.cmd.main does not exist yet")

    def run(*args: str, timeout: float = ZENTRY_TIMEOUT, input: str | None = None,
            env: dict | None = None, cwd: str | os.PathLike | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        # stdout/stderr are files, not pipes: a detached container keeps the
        # stdio of `create`/`run -d` (as with runc), so a pipe would never
        # reach EOF and the call would look hung. We wait for the CLI to exit.
        argv = [*prefix, "--root", str(zentry_root), *map(str, args)]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                    stdout=out, stderr=err, env=env, cwd=cwd)
            try:
                if input is not None:
                    proc.stdin.write(input.encode())
                    proc.stdin.close()
                code = proc.wait(timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            out.seek(0)
            err.seek(0)
            result = subprocess.CompletedProcess(argv, code, out.read().decode(errors="replace"),
                                                 err.read().decode(errors="replace"))
        if check:
            result.check_returncode()
        return result

    run.root = zentry_root  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="session")
def busybox_rootfs_cache(tmp_path_factory) -> RootfsCache:
    """The session's busybox rootfs, built once; `.copy_to(dest)` for a copy."""
    from helpers.bundle import BusyboxMissing

    cache = RootfsCache(tmp_path_factory.mktemp("rootfs-cache"))
    try:
        cache.template
    except BusyboxMissing as err:
        pytest.skip(str(err))
    return cache


@pytest.fixture
def busybox_rootfs(busybox_rootfs_cache: RootfsCache, tmp_path: Path) -> Callable[..., Path]:
    """Factory: `busybox_rootfs(name="rootfs")` -> a private busybox rootfs dir."""
    def make(name: str = "rootfs") -> Path:
        return busybox_rootfs_cache.copy_to(tmp_path / name)
    return make


@pytest.fixture
def busybox_bundle(busybox_rootfs_cache: RootfsCache, tmp_path: Path) -> Callable[..., Path]:
    """Factory: `busybox_bundle(args, name=None, use_cli=None, **overrides)` ->
    path of a fresh bundle (busybox rootfs + config.json) under tmp_path;
    overrides deep-merge into config.json (see helpers.bundle)."""
    counter = iter(range(1_000_000))

    def make(args: Sequence[str] = ("/bin/true",), name: str | None = None,
             use_cli: bool | None = None, **overrides) -> Path:
        if isinstance(args, str):
            args = [args]
        bundle = tmp_path / (name or f"bundle{next(counter)}")
        return make_bundle(bundle, args, rootfs_cache=busybox_rootfs_cache,
                           use_cli=use_cli, **overrides)
    return make
