"""zentry list: the containers under --root, as a table or JSON."""

import json

HELP = "list containers"


def add_arguments(p) -> None:
    p.add_argument("--format", "-f", default="table", choices=["table", "json"])
    p.add_argument("--quiet", "-q", action="store_true", help="ids only")


def run(args, ctx) -> int:
    from zentry.actors.state import STOPPED, pid_alive

    rows = []
    for rec in ctx.store().records():
        if rec.status != STOPPED and not pid_alive(rec.controller_pid):
            rec.status = STOPPED
        rows.append(rec)
    if args.quiet:
        for rec in rows:
            print(rec.id)
        return 0
    if args.format == "json":
        print(json.dumps([{**r.oci_state(), "rootfs": (r.config.get("root") or {}).get("path", "")} for r in rows]))
        return 0
    from tabulate import tabulate  # only for the table: it costs ~100 ms to import

    table = [[r.id, r.pid if r.status != STOPPED else 0, r.status, r.bundle, r.created, r.owner] for r in rows]
    print(tabulate(table, headers=["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"], tablefmt="plain"))
    return 0
