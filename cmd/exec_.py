"""zentry exec: run a new process inside a running container."""

from __future__ import annotations

import argparse
import json
import os
import signal

HELP = "run a process in a running container"


def add_arguments(p) -> None:
    p.add_argument("--process", "-p", default=None, help="process.json (OCI process object)")
    p.add_argument("--cwd", default=None)
    p.add_argument("--env", "-e", action="append", default=[])
    p.add_argument("--user", "-u", default=None, help="uid[:gid]")
    p.add_argument("--additional-gids", "-g", action="append", default=[])
    p.add_argument("--cap", "-c", action="append", default=[])
    p.add_argument("--tty", "-t", action="store_true")
    p.add_argument("--detach", "-d", action="store_true")
    p.add_argument("--pid-file", default=None)
    p.add_argument("--console-socket", default="")
    p.add_argument("--no-new-privs", action="store_true")
    p.add_argument("--process-label", default=None, help="ignored (no SELinux)")
    p.add_argument("--apparmor", default=None, help="ignored (no AppArmor)")
    p.add_argument("--preserve-fds", type=int, default=0)
    p.add_argument("container_id", metavar="ID")
    p.add_argument("command", nargs="*", help="command and arguments")


#: Options of exec that take a value (for splitting ID and command in argv).
VALUE_OPTIONS = {"--process", "-p", "--cwd", "--env", "-e", "--user", "-u", "--additional-gids", "-g", "--cap", "-c",
                 "--pid-file", "--console-socket", "--process-label", "--apparmor", "--preserve-fds"}


def split_command(argv: list[str]) -> list[str]:
    """Put ``--`` after the container ID, so the command's own flags stay its own.

    runc stops parsing its flags at the first positional (the ID); argparse
    would otherwise read ``exec ID sh -c x`` as exec's ``-c``.
    """
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv
        if arg.startswith("-") and arg != "-":
            i += 1 if "=" in arg or arg not in VALUE_OPTIONS else 2
            continue
        return argv[: i + 1] + ["--"] + argv[i + 1 :]
    return argv


def build_process(args, base: dict) -> dict:
    from zentry.bus.errors import InvalidArgument

    if args.process:
        try:
            with open(args.process) as f:
                process = json.load(f)
        except (OSError, ValueError) as err:
            raise InvalidArgument(f"cannot read process file {args.process}: {err}") from err
        if not isinstance(process, dict):
            raise InvalidArgument(f"process file {args.process}: must be a JSON object (an OCI process)")
        argv = process.get("args")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            # runc refuses a string too (it does not split it)
            raise InvalidArgument(f"process file {args.process}: args must be a non-empty array of strings, not {type(argv).__name__}")
        return process
    if not args.command:
        raise InvalidArgument("exec needs a command (or --process)")
    process = json.loads(json.dumps(base))
    process["args"] = list(args.command)
    process["terminal"] = bool(args.tty)
    if args.cwd:
        process["cwd"] = args.cwd
    if args.env:
        names = {e.split("=", 1)[0] for e in args.env}
        process["env"] = [e for e in process.get("env") or [] if e.split("=", 1)[0] not in names] + list(args.env)
    if args.user:
        uid, _, gid = args.user.partition(":")
        try:
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        except ValueError:
            raise InvalidArgument(f"invalid --user {args.user!r}: expected uid[:gid]") from None
    if args.additional_gids:
        process.setdefault("user", {})["additionalGids"] = [int(g) for g in args.additional_gids]
    if args.no_new_privs:
        process["noNewPrivileges"] = True
    if args.cap:
        caps = process.setdefault("capabilities", {})
        for kind in ("bounding", "effective", "permitted"):
            caps[kind] = sorted(set(caps.get(kind) or []) | set(args.cap))
    return process


#: runc's status for an exec that failed (bad container, process that cannot start)
EXEC_FAILED = 255


def run(args, ctx) -> int:
    """The exec'd process is our child, forked straight into the container
    (no zentry process sits between it and the engine): with ``--detach`` we
    write its pid and exit, and it becomes the child of our subreaper (the
    engine's shim); in the foreground we relay signals and return its status.
    A failure is one line and status 255, as runc's ``exec failed``."""
    from zentry.bus.errors import ZentryError
    from zentry.bus.log import get_logger

    try:
        return _run(args, ctx)
    except (ZentryError, OSError) as err:
        from zentry.bus.errors import to_wire
        from zentry.cmd.main import fail

        fail(get_logger("zentry.cli"), f"exec failed: {err if isinstance(err, ZentryError) else to_wire(err)[1]}")
        return EXEC_FAILED


def _run(args, ctx) -> int:
    from zentry.actors import forwarder
    from zentry.bus.errors import InvalidArgument
    from zentry.bus.messages import ExecInfo
    from zentry.cmd import long_running
    from zentry.cmd.common import ask, check_stdio_options, load, write_pid_file

    rec = load(ctx.store(), args.container_id)
    rec.require_status("exec in", "created", "running")
    target = ask(rec, ExecInfo(container_id=rec.id))
    process = build_process(args, target.config.get("process") or {})
    check_stdio_options(bool(process.get("terminal")), args.console_socket, args.preserve_fds)
    console = None
    if process.get("terminal") and not args.console_socket:
        if args.detach:
            raise InvalidArgument("cannot allocate a pty for a detached exec without --console-socket")
        console = forwarder.TempConsole()
        args.console_socket = console.path

    def start() -> int:
        return forwarder.start_exec(target.init_pid, target.cgroup_procs, target.config, process, target.fd_socket, rec.id, args.console_socket,
                                    preserve_fds=max(0, args.preserve_fds))

    def pid_file_or_kill(pid: int) -> None:
        """As runc: an exec whose pid file cannot be written leaves no process."""
        if not args.pid_file:
            return
        try:
            write_pid_file(args.pid_file, pid)
        except OSError as err:
            os.kill(pid, signal.SIGKILL)  # our child: its pid cannot be reused before we reap it
            os.waitpid(pid, 0)
            raise InvalidArgument(f"cannot write pid file {args.pid_file}: {err.strerror}") from None

    try:
        if args.detach:
            pid_file_or_kill(start())
            return 0
        with forwarder.SignalCatcher() as catcher:
            pid = start()
            pid_file_or_kill(pid)
            master = console.receive() if console is not None else None
            long_running()
            return forwarder.relay(pid, lambda sig: os.kill(pid, sig), master, catcher)
    finally:
        if console is not None:
            console.close()
