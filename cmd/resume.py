"""zentry resume: resume every process of a container (cgroup freezer)."""

HELP = "resume a container"


def add_arguments(p) -> None:
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.bus.messages import Resume
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    ask(rec, Resume(container_id=rec.id))
    return 0
