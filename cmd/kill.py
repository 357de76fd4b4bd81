"""zentry kill: send a signal (number or name) to a container."""

import signal

HELP = "send a signal to a container's init (or all its processes)"


def add_arguments(p) -> None:
    p.add_argument("--all", "-a", action="store_true", help="signal every process of the container")
    p.add_argument("container_id", metavar="ID")
    p.add_argument("signal", nargs="?", default="SIGTERM", help="signal number or name: 15, TERM, SIGTERM (default SIGTERM)")


def parse_signal(text: str) -> int:
    from zentry.bus.errors import InvalidArgument

    if text == "":
        return int(signal.SIGTERM)  # runc: an empty signal is the default
    if text.isdigit():
        number = int(text)
        if 0 <= number < signal.NSIG:  # 0: only checks the container is there, as kill(2) (runc accepts it)
            return number
        raise InvalidArgument(f"invalid signal {text!r}: numbers run from 0 to {signal.NSIG - 1}")
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"unknown signal {text!r}") from None


def run(args, ctx) -> int:
    from zentry.bus.messages import Kill
    from zentry.cmd.common import ask, load

    sig = parse_signal(args.signal)
    rec = load(ctx.store(), args.container_id)
    if rec.status == "stopped" and not args.all:
        rec.require_status("signal", "created", "running", "paused")
    if rec.status == "stopped":
        return 0
    ask(rec, Kill(container_id=rec.id, signal=sig, all=args.all))
    return 0
