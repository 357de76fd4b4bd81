"""Builds OCI bundles for tests: a busybox root filesystem and a config.json.

The rootfs is Debian's static busybox (`busybox-static`) plus one symlink per
applet in /bin and the few files a shell expects.  `RootfsCache` builds that
tree once and hands out hardlinked copies, so a test may scribble on its own
rootfs without touching anyone else's.

`make_bundle` writes config.json from `zentry spec` when the CLI answers
(then forces the fields tests rely on), else from `minimal_config()`, a
config written from the OCI runtime spec's semantics (config.md,
config-linux.md), and applies `overrides` by deep merge.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

BUSYBOX = os.environ.get("ZENTRY_TEST_BUSYBOX", "/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Paths of /proc and /sys that leak host information or give control over the
# host kernel: masked (an empty file/dir is bind-mounted over them) ...
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
# ... or remounted read-only.
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    "etc/hostname": "zentry-test\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
    "etc/resolv.conf": "",
}


class BusyboxMissing(RuntimeError):
    """Debian's busybox-static is not installed (run .ci/install)."""


def busybox_applets(busybox: str = BUSYBOX) -> list[str]:
    """The applet names `busybox --list` prints (without `busybox` itself)."""
    if not os.access(busybox, os.X_OK):
        raise BusyboxMissing(f"{busybox} not found: install busybox-static (.ci/install)")
    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return sorted({name for name in out.split() if name and "/" not in name and name != "busybox"})


def make_busybox_rootfs(dest: os.PathLike | str, busybox: str = BUSYBOX) -> Path:
    """Create a busybox root filesystem at `dest` (created if needed); returns it."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "etc", "root", "proc", "dev", "sys", "run", "var", "usr"):
        (root / d).mkdir(exist_ok=True)
    tmp = root / "tmp"
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)
    target = root / "bin" / "busybox"
    shutil.copy2(busybox, target)
    target.chmod(0o755)
    for applet in busybox_applets(busybox):
        link = root / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    for rel, text in _ETC_FILES.items():
        (root / rel).write_text(text)
    # Some programs look for /usr/bin and /sbin; keep them pointing at /bin.
    for alias in ("sbin", "usr/bin", "usr/sbin"):
        p = root / alias
        if not p.exists() and not p.is_symlink():
            p.symlink_to("/bin")
    return root


def _link_or_copy(src: str, dst: str) -> None:
    """Hardlink big files (busybox itself), copy the small ones (/etc...): a
    test that rewrites a small file in place must not change other copies."""
    if os.path.getsize(src) >= 256 * 1024:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


class RootfsCache:
    """Builds the busybox rootfs once; `copy_to(dest)` gives a private copy.

    The busybox binary is hardlinked (fast; never write to it), everything else
    copied; across filesystems everything is copied.
    """

    def __init__(self, cache_dir: os.PathLike | str | None = None):
        self._dir = Path(cache_dir) if cache_dir else None
        self._owned = cache_dir is None
        self._built: Path | None = None

    @property
    def template(self) -> Path:
        if self._built is None:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="zentry-rootfs-cache-"))
            self._built = make_busybox_rootfs(self._dir / "rootfs")
        return self._built

    def copy_to(self, dest: os.PathLike | str) -> Path:
        dest = Path(dest)
        shutil.copytree(self.template, dest, symlinks=True, copy_function=_link_or_copy)
        (dest / "tmp").chmod(0o1777)
        return dest

    def close(self) -> None:
        if self._owned and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._built = None


def minimal_config(args: Iterable[str]) -> dict[str, Any]:
    """A minimal runnable OCI config (spec 1.0.2) for a busybox rootfs."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [DEFAULT_PATH, "HOME=/root"],
            "cwd": "/",
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "zentry-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            # No cgroupsPath: the runtime picks one.
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `overrides` into `base` in place: dicts recursively, other values
    replace; a value of None removes the key."""
    for key, value in overrides.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def zentry_command() -> list[str] | None:
    """argv prefix that runs the zentry CLI, or None while it cannot run.

    `ZENTRY_BIN` overrides.  Otherwise the `zentry` console script installed
    beside this interpreter (no pyenv shim in between), else the one on PATH,
    provided its entry module `zentry.cmd.main` exists.
    """
    env_bin = os.environ.get("ZENTRY_BIN")
    if env_bin:
        return [env_bin]
    import importlib.util
    import sysconfig

    try:
        if importlib.util.find_spec("zentry.cmd.main") is None:
            return None
    except ImportError:
        return None
    script = Path(sysconfig.get_path("scripts"), "zentry")
    if os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("zentry")
    return [found] if found else None


_SPEC_TEMPLATE: dict[str, Any] | None = None
_SPEC_TRIED = False


def cli_spec_template() -> dict[str, Any] | None:
    """config.json as `zentry spec` writes it (cached), or None when the CLI
    cannot produce one.  ZENTRY_TEST_SPEC=builtin forces the built-in config."""
    global _SPEC_TEMPLATE, _SPEC_TRIED
    if os.environ.get("ZENTRY_TEST_SPEC") == "builtin":
        return None
    if not _SPEC_TRIED:
        _SPEC_TRIED = True
        cmd = zentry_command()
        if cmd is not None:
            with tempfile.TemporaryDirectory(prefix="zentry-spec-") as d:
                try:
                    res = subprocess.run([*cmd, "spec", "--bundle", d], cwd=d, capture_output=True,
                                         text=True, timeout=30, stdin=subprocess.DEVNULL)
                    cfg = Path(d, "config.json")
                    if res.returncode == 0 and cfg.is_file():
                        _SPEC_TEMPLATE = json.loads(cfg.read_text())
                except (OSError, subprocess.TimeoutExpired, ValueError):
                    _SPEC_TEMPLATE = None
    return copy.deepcopy(_SPEC_TEMPLATE) if _SPEC_TEMPLATE is not None else None


def make_config(args: Iterable[str], use_cli: bool | None = None, **overrides: Any) -> dict[str, Any]:
    """The config.json document make_bundle writes (see its doc)."""
    args = list(args)
    config = cli_spec_template() if use_cli is not False else None
    if config is None:
        if use_cli:
            raise RuntimeError("`zentry spec` is not available")
        config = minimal_config(args)
    else:
        proc = config.setdefault("process", {})
        proc["args"] = args
        proc["terminal"] = False
        proc.setdefault("cwd", "/")
        env = [e for e in proc.get("env", []) if not e.startswith("PATH=")]
        proc["env"] = [DEFAULT_PATH, *env]
        config.setdefault("root", {})["path"] = "rootfs"
        config.setdefault("linux", {}).pop("cgroupsPath", None)
    return deep_merge(config, overrides)


def make_bundle(bundle_dir: os.PathLike | str, args: Iterable[str], *,
                rootfs_cache: RootfsCache | None = None, use_cli: bool | None = None,
                **overrides: Any) -> Path:
    """Write an OCI bundle at `bundle_dir` and return its path.

    `args` is process.args.  The rootfs (`bundle_dir/rootfs`) is built unless it
    exists, from `rootfs_cache` when given.  `overrides` are top-level config
    keys deep-merged into the config (e.g. `process={"terminal": True}`,
    `linux={"cgroupsPath": "/x"}`; None deletes a key).  `use_cli`: True =
    require `zentry spec`, False = built-in config, None = `zentry spec` if it
    works.
    """
    bundle = Path(bundle_dir)
    bundle.mkdir(parents=True, exist_ok=True)
    rootfs = bundle / "rootfs"
    if not rootfs.exists():
        if rootfs_cache is not None:
            rootfs_cache.copy_to(rootfs)
        else:
            make_busybox_rootfs(rootfs)
    config = make_config(args, use_cli=use_cli, **overrides)
    tmp = bundle / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(bundle / "config.json")
    return bundle
