"""zentry debug: switch a sandbox's syscall events on or off, make CURVE keys for the tap.

    zentry debug --strace on ID     every trapped syscall of ID's sandbox goes to the tap
    zentry debug --keygen FILE      FILE (secret key, 0600) and FILE.pub (public key), z85
"""

from __future__ import annotations

import os

HELP = "debugging aids: --strace on|off ID, --keygen FILE"


def add_arguments(p) -> None:
    p.add_argument("--strace", choices=["on", "off"], default=None, help="publish every trapped syscall of the container's sandbox on the tap")
    p.add_argument("--keygen", default=None, metavar="FILE", help="write a CURVE key pair: FILE (secret) and FILE.pub (public)")
    p.add_argument("container_id", metavar="ID", nargs="?", help="container id (for --strace)")


def run(args, ctx) -> int:
    from zentry.bus.errors import InvalidArgument

    if args.keygen:
        keygen(args.keygen)
        if args.strace is None:
            return 0
    if args.strace is None:
        raise InvalidArgument("nothing to do: give --strace on|off ID or --keygen FILE")
    if not args.container_id:
        raise InvalidArgument("--strace needs a container ID")
    from zentry.bus.messages import SetStrace
    from zentry.cmd.common import ask, load

    rec = load(ctx.store(), args.container_id)
    rec.require_status("trace", "created", "running", "paused")
    ask(rec, SetStrace(on=args.strace == "on"), timeout=10)
    return 0


def keygen(path: str) -> None:
    import zmq

    public, secret = zmq.curve_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.decode() + "\n")
    with open(path + ".pub", "w") as f:
        f.write(public.decode() + "\n")
    print(public.decode())
