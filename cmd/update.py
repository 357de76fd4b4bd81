"""zentry update: change a container's resources (OCI linux.resources JSON)."""

import json
import sys

HELP = "update a container's resource limits"


def add_arguments(p) -> None:
    p.add_argument("--resources", "-r", default=None, help="file with linux.resources JSON, or - for stdin")
    p.add_argument("--memory", default=None, help="memory limit in bytes")
    p.add_argument("--pids-limit", type=int, default=None)
    p.add_argument("--cpu-quota", type=int, default=None)
    p.add_argument("--cpu-period", type=int, default=None)
    p.add_argument("--cpu-shares", type=int, default=None)
    p.add_argument("--cpuset-cpus", default=None)
    p.add_argument("container_id", metavar="ID")


def resources_from(args) -> dict:
    from zentry.bus.errors import InvalidArgument

    res: dict = {}
    if args.resources:
        try:
            text = sys.stdin.read() if args.resources == "-" else open(args.resources).read()
            res = json.loads(text)
        except (OSError, ValueError) as err:
            raise InvalidArgument(f"cannot read resources from {args.resources}: {err}") from err
        if not isinstance(res, dict):
            raise InvalidArgument("resources must be a JSON object")
    if args.memory is not None:
        res.setdefault("memory", {})["limit"] = int(args.memory)
    if args.pids_limit is not None:
        res.setdefault("pids", {})["limit"] = args.pids_limit
    for key, value in (("quota", args.cpu_quota), ("period", args.cpu_period), ("shares", args.cpu_shares), ("cpus", args.cpuset_cpus)):
        if value is not None:
            res.setdefault("cpu", {})[key] = value
    return res


def run(args, ctx) -> int:
    from zentry.bus.messages import Update
    from zentry.cmd.common import ask, load

    res = resources_from(args)
    rec = load(ctx.store(), args.container_id)
    ask(rec, Update(container_id=rec.id, resources=res))
    return 0
