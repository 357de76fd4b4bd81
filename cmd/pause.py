"""zentry pause: pause every process of a container (cgroup freezer)."""

HELP = "pause a container"


def add_arguments(p) -> None:
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.bus.messages import Pause
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    ask(rec, Pause(container_id=rec.id))
    return 0
