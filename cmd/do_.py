"""zentry do: run a host command sandboxed, over a read-only view of the host root.

Like ``runsc do``: no bundle needed. The command runs in new pid, ipc, uts,
mount and network namespaces (no network), with a private /tmp and /dev,
under the sentry, with the host's root bind-mounted read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid

HELP = "run a host command in a sandbox over a read-only host root (no bundle needed)"


def add_arguments(p) -> None:
    p.add_argument("--network", default="none", choices=["none", "host"], help="none (default) or the host's network")
    p.add_argument("--cwd", default=None, help="working directory (default: the current one)")
    p.add_argument("--tty", "-t", action="store_true", help="allocate a terminal")
    p.add_argument("command", nargs="*", help="command and arguments (after --)")


def do_config(args) -> dict:
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if args.network == "none":
        namespaces.append({"type": "network"})
    keep = ("PATH", "HOME", "LANG", "TERM", "USER", "LC_ALL")
    env = [f"{k}={os.environ[k]}" for k in keep if k in os.environ] or ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]
    return {
        "ociVersion": "1.2.0",
        "root": {"path": "/", "readonly": True},
        "hostname": "zentry-do",
        "process": {
            "terminal": bool(args.tty),
            "args": list(args.command),
            "cwd": args.cwd or os.getcwd(),
            "env": env,
            "user": {"uid": os.getuid(), "gid": os.getgid()},
            "capabilities": {k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"] for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"],
        },
    }


def run(args, ctx) -> int:
    from zentry.bus.errors import ExecNotFound, ExecPermission, InvalidArgument
    from zentry.cmd.run import run_foreground

    if not args.command:
        raise InvalidArgument("do needs a command: zentry do -- CMD [ARGS...]")

    bundle = tempfile.mkdtemp(prefix="zentry-do-")
    try:
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(do_config(args), f)
        args.bundle = bundle
        args.container_id = f"do-{uuid.uuid4().hex[:12]}"
        args.console_socket = ""
        args.pid_file = None
        args.detach = False
        args.keep = False
        try:
            return run_foreground(args, ctx, bool(args.tty))
        except ExecNotFound as err:
            return _fail(err, 127)  # as a shell: command not found
        except ExecPermission as err:
            return _fail(err, 126)  # found, but cannot be run
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def _fail(err: Exception, status: int) -> int:
    from zentry.bus.log import get_logger
    from zentry.cmd.main import fail

    fail(get_logger("zentry.cli"), str(err))
    return status
