"""zentry wait: block until a container stops; print its exit status."""

import json

HELP = "wait for a container to exit and print its status"


def add_arguments(p) -> None:
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.cmd import long_running

    long_running()
    from zentry.bus.errors import ActorGone
    from zentry.bus.messages import Wait
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    try:
        status = ask(rec, Wait(container_id=rec.id), timeout=10**7).exit_status
    except ActorGone:
        status = rec.exit_status if rec.exit_status is not None else 137
    print(json.dumps({"id": rec.id, "exitStatus": status}))
    return 0
