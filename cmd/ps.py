"""zentry ps: the processes of a container, as runc shows them.

``zentry ps ID [PS-ARGS...]`` runs the host's ``ps`` with PS-ARGS (``-ef``
when none) and prints its header and the lines whose PID column names one
of the container's processes; ``--format json`` prints their pids. Words
after ID are ``ps``'s, not zentry's (``zentry ps ID -o pid,comm``), as with
runc.
"""

import json

HELP = "list the processes of a container"

#: ps's arguments when none are given (runc's default)
DEFAULT_PS_ARGS = ("-ef",)


def add_arguments(p) -> None:
    import argparse

    p.add_argument("--format", "-f", default="table", choices=["table", "json"])
    p.add_argument("container_id", metavar="ID")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="PS-ARGS", help="arguments for ps (default -ef)")


def filter_ps_output(text: str, pids: set[int]) -> list[str]:
    """The header and the lines of ``ps`` output ``text`` whose PID column is in ``pids``."""
    from zentry.bus.errors import InvalidArgument

    lines = text.splitlines()
    if not lines:
        raise InvalidArgument("ps printed nothing")
    header = lines[0].split()
    if "PID" not in header:
        raise InvalidArgument("the output of ps has no PID column (give ps -f, or -o pid,...)")
    column = header.index("PID")
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        try:
            pid = int(fields[column])
        except (IndexError, ValueError):
            raise InvalidArgument(f"cannot read a pid in the output of ps: {line.strip()!r}") from None
        if pid in pids:
            out.append(line)
    return out


def run(args, ctx) -> int:
    import subprocess

    from zentry.bus.errors import InvalidArgument
    from zentry.bus.messages import Processes
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    rec.require_status("get processes of", "created", "running", "paused")
    pids = [p["pid"] for p in ask(rec, Processes(container_id=rec.id)).processes]
    if args.format == "json":
        print(json.dumps(pids))
        return 0
    ps_args = list(args.ps_args) or list(DEFAULT_PS_ARGS)
    try:
        done = subprocess.run(["ps", *ps_args], stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace")
    except OSError as err:
        raise InvalidArgument(f"cannot run ps: {err.strerror}") from err
    if done.returncode != 0:
        why = " ".join(done.stderr.split())[:300] or f"exit status {done.returncode}"
        raise InvalidArgument(f"ps {' '.join(ps_args)} failed: {why}")
    print("\n".join(filter_ps_output(done.stdout, set(pids))))
    return 0
