"""zentry ps: the processes of a container."""

import json

HELP = "list the processes of a container"


def add_arguments(p) -> None:
    p.add_argument("--format", "-f", default="table", choices=["table", "json"])
    p.add_argument("container_id", metavar="ID")
    p.add_argument("ps_args", nargs="*", help="ignored (runc passes them to ps)")


def run(args, ctx) -> int:
    from tabulate import tabulate

    from zentry.bus.messages import Processes
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    rec.require_status("get processes of", "created", "running", "paused")
    procs = ask(rec, Processes(container_id=rec.id)).processes
    if args.format == "json":
        print(json.dumps([p["pid"] for p in procs]))
        return 0
    rows = [[p["uid"], p["pid"], p["ppid"], p["stime"], p["tty"], f"{p['time']:.2f}", p["cmd"]] for p in procs]
    print(tabulate(rows, headers=["UID", "PID", "PPID", "STIME", "TTY", "TIME", "CMD"], tablefmt="plain"))
    return 0
