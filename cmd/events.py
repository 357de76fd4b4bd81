"""zentry events: container resource statistics (runc events shape)."""

import json
import re
import time

HELP = "print container events and resource statistics"


def interval(text: str) -> float:
    from zentry.bus.errors import InvalidArgument

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    if not m:
        raise InvalidArgument(f"invalid interval {text!r} (e.g. 5, 5s, 500ms)")
    scale = {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def add_arguments(p) -> None:
    p.add_argument("--stats", action="store_true", help="print one stats event and exit")
    p.add_argument("--interval", default="5s", help="stats interval (5, 5s, 500ms)")
    p.add_argument("container_id", metavar="ID")


def run(args, ctx) -> int:
    from zentry.cmd import long_running

    long_running()
    from zentry.bus.errors import ZentryError
    from zentry.bus.messages import Stats
    from zentry.cmd.common import ask, load

    period = interval(args.interval)
    rec = load(ctx.store(), args.container_id)
    while True:
        stats = ask(rec, Stats(container_id=rec.id)).stats
        print(json.dumps({"type": "stats", "id": rec.id, "data": stats}), flush=True)
        if args.stats:
            return 0
        time.sleep(period)
        try:
            rec = load(ctx.store(), rec.id)
        except ZentryError:
            return 0
        if rec.status == "stopped":
            return 0
