"""zentry start: run the user process of a created container."""

HELP = "start a created container"


def add_arguments(p) -> None:
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.bus.messages import Start
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    rec.require_status("start", "created")
    ask(rec, Start(container_id=rec.id))
    return 0
