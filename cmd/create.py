"""zentry create: make a container that waits for start."""

from __future__ import annotations

import argparse
import os

HELP = "create a container (it waits for start)"


def add_arguments(p) -> None:
    p.add_argument("--bundle", "-b", default=".", help="bundle directory (default: current directory)")
    p.add_argument("--console-socket", default="", help="unix socket that receives the pty master")
    p.add_argument("--pid-file", default=None, help="file to write the container init's pid to (written last)")
    p.add_argument("--no-pivot", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--no-new-keyring", action="store_true", help="accepted for runc compatibility")
    p.add_argument("--preserve-fds", type=int, default=0, help="pass fds 3 .. 3+N-1 to the container (the rest are closed)")
    # the node agent's own: the container is a pool's template (actors/pool/template.py)
    p.add_argument("--pool-spawner", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("container_id", metavar="ID")


def create(args, ctx, config: dict | None = None):
    """Shared by create and run: validate, launch, return the Created reply.

    ``config``: the bundle's config.json, already loaded and validated by
    ``load_bundle`` (run reads it first to learn whether it needs a
    terminal); read here otherwise.
    """
    from zentry.actors import launch
    from zentry.actors.oci import PRESERVE_FDS_ANNOTATION, SPAWNER_ANNOTATION, STRACE_ANNOTATION, load_bundle
    from zentry.actors.state import validate_id
    from zentry.bus.errors import ConfigError, InvalidArgument
    from zentry.cmd.common import check_stdio_options

    validate_id(args.container_id)
    bundle = os.path.abspath(args.bundle)
    if config is None:
        config = load_bundle(bundle)
    terminal = bool((config.get("process") or {}).get("terminal"))
    if terminal and not args.console_socket:
        raise InvalidArgument("cannot allocate a pty without --console-socket (process.terminal is true)")
    check_stdio_options(terminal, args.console_socket, getattr(args, "preserve_fds", 0))
    annotations = config.get("annotations") or {}
    if SPAWNER_ANNOTATION in annotations:
        raise ConfigError(f"annotation {SPAWNER_ANNOTATION} is zentry's own: only its node agent sets it (with --pool-spawner)")
    if getattr(args, "pool_spawner", False):
        config.setdefault("annotations", {})[SPAWNER_ANNOTATION] = "true"
    if ctx.strace:
        config.setdefault("annotations", {})[STRACE_ANNOTATION] = "true"
    if getattr(args, "preserve_fds", 0) > 0:  # fds 3 .. 3+N-1 of this call reach the container (actors/sandbox/init.py; `do` has no such flag)
        config.setdefault("annotations", {})[PRESERVE_FDS_ANNOTATION] = str(args.preserve_fds)
    return launch.create_container(ctx.store(), args.container_id, bundle, config, console_socket=args.console_socket, log_file=ctx.log_file,
                                   prefork=ctx.prefork, log_format=ctx.log_format, debug=ctx.debug)


def write_pid_file_or_delete(args, ctx, pid: int) -> None:
    """The pid file, written last; if it cannot be written the container is
    deleted again (as runc does): a failed create leaves nothing behind."""
    from zentry.cmd.common import write_pid_file

    if not args.pid_file:
        return
    try:
        write_pid_file(args.pid_file, pid)
    except OSError as err:
        from zentry.actors import launch
        from zentry.bus.errors import InvalidArgument, ZentryError
        from zentry.bus.messages import Delete
        from zentry.cmd.common import ask, load

        store = ctx.store()
        try:
            rec = load(store, args.container_id)
            try:
                ask(rec, Delete(container_id=rec.id, force=True))
            except ZentryError:
                launch.remove_orphan(store, rec)
            if rec.sandbox_id == rec.id:
                launch.wait_gone([rec.controller_pid, rec.gofer_pid, rec.sandbox_pid], timeout=10)
            launch.remove_dir(store, rec)
        except ZentryError:
            pass
        raise InvalidArgument(f"cannot write pid file {args.pid_file}: {err.strerror}") from None


def run(args, ctx) -> int:
    created = create(args, ctx)
    write_pid_file_or_delete(args, ctx, created.pid)
    return 0
