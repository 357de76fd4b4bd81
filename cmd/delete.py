"""zentry delete: remove a container and everything made for it (idempotent with --force)."""

HELP = "delete a container"


def add_arguments(p) -> None:
    p.add_argument("--force", "-f", action="store_true", help="kill it first if it runs")
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.actors import launch
    from zentry.actors.state import pid_alive
    from zentry.bus.errors import ActorGone, NotFound, ProtocolError
    from zentry.bus.messages import Delete
    from zentry.cmd.common import ask, load

    store = ctx.store()
    try:
        rec = load(store, args.container_id)
    except NotFound:
        # A create killed before its first state.json left only a directory
        # (runc's delete removes that too).
        store.remove_stale(args.container_id)
        if args.force:
            return 0  # idempotent, like runc delete --force
        raise
    if not args.force:
        rec.require_status("delete", "created", "stopped")
    try:
        ask(rec, Delete(container_id=rec.id, force=args.force), timeout=60)
    except ActorGone:
        launch.remove_orphan(store, rec)
        return 0
    except ProtocolError:
        if not args.force:
            raise
        # Its actors were started by another version of zentry and refuse
        # ours: --force removes it as it would an orphan (kill, cgroup, state).
        launch.remove_orphan(store, rec)
        return 0
    if rec.sandbox_id == rec.id:
        launch.wait_gone([p for p in (rec.controller_pid, rec.gofer_pid) if p], timeout=10)
    launch.remove_dir(store, rec)
    return 0
