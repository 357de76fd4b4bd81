"""zentry state: print a container's OCI state as JSON."""

import json

HELP = "print the state of a container"


def add_arguments(p) -> None:
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.cmd.common import live_state, load

    state = live_state(load(ctx.store(), args.container_id))
    print(json.dumps(state, indent=2))
    return 0
