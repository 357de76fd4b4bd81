"""zentry run: create, start, and (unless --detach) wait in the foreground."""

from __future__ import annotations

import argparse
import os

HELP = "create and start a container, then wait for it (unless --detach)"


def add_arguments(p) -> None:
    p.add_argument("--bundle", "-b", default=".", help="bundle directory (default: current directory)")
    p.add_argument("--console-socket", default="", help="unix socket that receives the pty master")
    p.add_argument("--pid-file", default=None)
    p.add_argument("--detach", "-d", action="store_true", help="do not wait for the container")
    p.add_argument("--keep", action="store_true", help="do not delete the container after it exits")
    p.add_argument("--no-pivot", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--no-new-keyring", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--preserve-fds", type=int, default=0, help="pass fds 3 .. 3+N-1 to the container (the rest are closed)")
    # the node agent's own: the container is a pool's template (actors/pool/template.py)
    p.add_argument("--pool-spawner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.actors.oci import load_bundle

    config = load_bundle(os.path.abspath(args.bundle))
    terminal = bool((config.get("process") or {}).get("terminal"))
    return run_foreground(args, ctx, terminal, config)


def run_foreground(args, ctx, terminal: bool, config: dict | None = None) -> int:
    """``config``: the bundle's, when the caller has already loaded and validated it."""
    from zentry.actors import forwarder, launch
    from zentry.bus.errors import InvalidArgument, ZentryError
    from zentry.bus.messages import Delete, Kill, Start
    from zentry.cmd import long_running
    from zentry.cmd.common import ask, load, write_pid_file
    from zentry.cmd.create import create

    console = None
    if terminal and not args.console_socket:
        if args.detach:
            raise InvalidArgument("cannot allocate a pty for a detached container without --console-socket")
        console = forwarder.TempConsole()
        args.console_socket = console.path
    catcher = forwarder.SignalCatcher() if not args.detach else None
    try:
        created = create(args, ctx, config)
        store = ctx.store()
        rec = load(store, args.container_id)
        try:
            master = console.receive() if console is not None else None
            if args.pid_file:
                write_pid_file(args.pid_file, created.pid)
            ask(rec, Start(container_id=rec.id))
        except OSError as err:
            ask(rec, Delete(container_id=rec.id, force=True))
            launch.wait_gone(launch.own_actors(rec))
            launch.remove_dir(store, rec)
            raise InvalidArgument(f"cannot write pid file {args.pid_file}: {err.strerror}") from None
        except BaseException:
            ask(rec, Delete(container_id=rec.id, force=True))
            launch.wait_gone([*launch.own_actors(rec), created.pid])
            launch.remove_dir(store, rec)
            raise
        if args.detach:
            return 0

        def send(sig: int) -> None:
            ask(rec, Kill(container_id=rec.id, signal=sig), timeout=5)

        long_running()  # the foreground lives as long as the container
        # The init is our child (we are its subreaper): its status is ours.
        status = forwarder.relay(created.pid, send, master, catcher)
        if not args.keep:
            try:
                ask(rec, Delete(container_id=rec.id, force=True))
            except ZentryError:
                launch.remove_orphan(store, rec)
            launch.wait_gone(launch.own_actors(rec), timeout=10)
            launch.remove_dir(store, rec)
        return status
    finally:
        if catcher is not None:
            catcher.close()
        if console is not None:
            console.close()
