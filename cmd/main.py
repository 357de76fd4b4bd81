"""The zentry command line: global flags, the command table, errors to exit codes.

Each subcommand is one module of this package with ``HELP``,
``add_arguments(parser)`` and ``run(args, ctx) -> int``. Commands parse,
ask an actor, print; lifecycle logic lives in ``actors/``.

Errors: every failure is one line on stderr (``zentry: <message>``) and,
with ``--log FILE --log-format json``, one ``{"level":"error","msg":…,"time":…}``
line in the log (containerd shows the user only that). Exit status 1, as
runc; engines derive 126/127 from the message text. Usage errors (what
argparse refuses) are such a line too, with status 1, and an unknown command
word status 3, as runc's; ``--log`` is opened before the command runs, so a
log that cannot be written is refused at once (runc does the same).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

from zentry.bus.errors import InvalidArgument, ZentryError, to_wire
from zentry.bus.log import Logger, configure, get_logger

#: The command table: group -> module names (module ``zentry.cmd.<name>``).
COMMANDS: dict[str, list[str]] = {
    "oci": ["create", "start", "run", "exec", "kill", "delete", "state", "list", "ps", "pause", "resume", "events", "wait", "update", "spec", "features"],
    "extras": ["do", "tap", "metrics-server"],
    "debug": ["debug"],
    "pools": ["pool"],
}

#: Where a command's module name differs from its verb.
VERBS = {"list": "list_", "exec": "exec_", "do": "do_", "metrics-server": "metrics_server"}

EXIT_FAILURE = 1
#: an unknown command word (runc's status for it)
EXIT_UNKNOWN_COMMAND = 3


class UsageError(Exception):
    """A command line argparse refused (runc: "Incorrect Usage", status 1).

    Not a ZentryError: it never crosses the bus, and has no wire code."""

    def __init__(self, message: str, exit_status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def version() -> str:
    from zentry.cmd import VERSION

    return VERSION


class Context:
    """What every command gets besides its own arguments."""

    __slots__ = ("root", "log_file", "log_format", "debug", "systemd_cgroup", "strace", "prefork")

    def __init__(self, *, root: str, log_file: str | None, log_format: str, debug: bool, systemd_cgroup: bool, strace: bool, prefork=None) -> None:
        self.root = root
        self.log_file = log_file
        self.log_format = log_format
        self.debug = debug
        self.systemd_cgroup = systemd_cgroup
        self.strace = strace
        #: create/run/do: the sandbox's actors, forked before parsing (launch.Prefork)
        self.prefork = prefork

    def store(self):
        from zentry.actors.state import Store

        return Store(self.root)


def build_parser(verb: str | None = None):
    """The parser; with ``verb``, only that command's subparser is built.

    Importing every command module and building 19 subparsers costs more
    than most commands' own work, and engines run the CLI several times per
    container: a call with a known verb pays only for its own command.
    (argparse is imported here, not at the top: create and run fork their
    actors before they parse, and the actors have no use for it.)
    """
    import argparse

    class _VersionAction(argparse.Action):
        """--version (an action, so that it works without a command)."""

        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            print(f"zentry version {version()}\nspec: 1.2.0")
            parser.exit()

    class _Parser(argparse.ArgumentParser):
        """Usage errors are one line and exit status 1, as runc's (argparse: usage text and 2)."""

        def error(self, message: str):
            where = self.prog.removeprefix("zentry").strip()
            raise UsageError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)")

    parser = _Parser(prog="zentry", description="zentry: a sandboxed, runc-compatible OCI container runtime")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument("--root", default=os.environ.get("ZENTRY_ROOT", "/run/zentry"), help="state directory (default /run/zentry)")
    parser.add_argument("--log", default=None, help="log file (engines read its last error line)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log format")
    parser.add_argument("--debug", action="store_true", help="debug logging")
    parser.add_argument("--systemd-cgroup", action="store_true", help="use systemd cgroups (not available without systemd)")
    parser.add_argument("--strace", action="store_true", help="publish every trapped syscall on the tap")
    parser.add_argument("--rootless", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--criu", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for names in COMMANDS.values():
        for name in names:
            if verb is not None and name != verb:
                continue
            module = importlib.import_module(f"zentry.cmd.{VERBS.get(name, name)}")
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


#: global flags that take a value (``--root X``), for finding the verb
VALUE_FLAGS = ("--root", "--log", "--log-format", "--rootless", "--criu")


def verb_index(argv: list[str]) -> int | None:
    """Where the command word is: the first word that is neither a global flag nor a flag's value."""
    for i, arg in enumerate(argv):
        if arg.startswith("-") or (i > 0 and argv[i - 1] in VALUE_FLAGS):
            continue
        return i
    return None


def find_verb(argv: list[str]) -> str | None:
    """The command word of ``argv`` if it names a command, else None (then the full parser decides)."""
    i = verb_index(argv)
    if i is None or any(arg in ("-h", "--help", "--version") for arg in argv[:i]):
        return None
    verbs = {name for names in COMMANDS.values() for name in names}
    return argv[i] if argv[i] in verbs else None


def log_flags(argv: list[str]) -> tuple[str | None, str, bool]:
    """(--log, --log-format, --debug) from the global flags of ``argv``
    without argparse, for reporting a usage error where it was asked."""
    log, fmt, debug = None, "text", False
    end = verb_index(argv)
    flags = argv[: len(argv) if end is None else end]
    for i, arg in enumerate(flags):
        name, eq, value = arg.partition("=")
        if not eq:
            value = flags[i + 1] if i + 1 < len(flags) else ""
        if name == "--log" and value:
            log = value
        elif name == "--log-format" and value in ("text", "json"):
            fmt = value
        elif arg == "--debug":
            debug = True
    return log, fmt, debug


def fail(ctx_log: Logger, message: str) -> int:
    ctx_log.error(message)
    print(f"zentry: {message}", file=sys.stderr)
    return EXIT_FAILURE


def split_subcommand_argv(argv: list[str]) -> list[str]:
    """exec: a ``--`` after the ID; do: a ``--`` before the command, if missing."""
    i = verb_index(argv)
    if i is None:
        return argv
    if argv[i] == "exec":
        from zentry.cmd.exec_ import split_command

        return argv[: i + 1] + split_command(argv[i + 1 :])
    if argv[i] == "do":
        rest = argv[i + 1 :]
        for j, token in enumerate(rest):
            if token == "--":
                break
            if not token.startswith("-") and not (j > 0 and rest[j - 1] in ("--network", "--cwd")):
                rest = rest[:j] + ["--"] + rest[j:]
                break
        return argv[: i + 1] + rest
    return argv


#: commands that make a new sandbox: their actors are forked before parsing
PREFORK_VERBS = ("create", "run", "do")


def main(argv: list[str] | None = None) -> int:
    argv = split_subcommand_argv(list(sys.argv[1:] if argv is None else argv))
    verb = find_verb(argv)
    if verb is None and "--version" in argv:
        # no command parsers needed (building all of them imports every command)
        print(f"zentry version {version()}\nspec: 1.2.0")
        return 0
    prefork = None
    if verb in PREFORK_VERBS and not any(arg in ("-h", "--help") for arg in argv):
        from zentry.actors.launch import Prefork

        try:
            prefork = Prefork()
        except OSError:
            prefork = None  # e.g. EAGAIN: create forks them itself, and reports what still fails
    try:
        return _main(argv, verb, prefork)
    finally:
        if prefork is not None:
            prefork.dismiss()


def global_flag(argv: list[str], flag: str) -> str | None:
    """The value of a global ``flag`` before the command word (for a usage error's log line)."""
    end = verb_index(argv)
    head = argv if end is None else argv[:end]
    value = None
    for i, arg in enumerate(head):
        if arg == flag and i + 1 < len(head):
            value = head[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value


def open_log(path: str) -> None:
    """Refuse a --log that cannot be written, at once (as runc), not at the first message."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644))
    except OSError as err:
        raise InvalidArgument(f"cannot open log file {path!r}: {err.strerror}") from None


def _main(argv: list[str], verb: str | None, prefork) -> int:
    parser = build_parser(verb)
    try:
        i = verb_index(argv)
        if verb is None and i is not None and argv[i] == "help":  # runc help
            parser.print_help()
            return 0
        if verb is None and i is not None and not any(arg in ("-h", "--help") for arg in argv[:i]):
            raise UsageError(f"unknown command {argv[i]!r} (see zentry --help)", exit_status=EXIT_UNKNOWN_COMMAND)
        args = parser.parse_args(argv)
        if args.log:
            open_log(args.log)
    except UsageError as err:
        log_file, log_format = global_flag(argv, "--log"), global_flag(argv, "--log-format")
        usable = log_file is not None
        if usable:
            try:
                open_log(log_file)
            except InvalidArgument:
                usable = False
        # a --log-format that is itself the usage error: the engine reads JSON
        configure(log_file if usable else None, log_format if log_format in ("text", "json") else "json" if log_format else "text")
        fail(get_logger("zentry.cli"), str(err))
        return err.exit_status
    except InvalidArgument as err:  # the log file itself
        configure(None)
        return fail(get_logger("zentry.cli"), str(err))
    configure(args.log, args.log_format, args.debug)  # applied at the first message (bus/log.py)
    log = get_logger("zentry.cli")
    if not args.verb:
        parser.print_help()
        return 0
    ctx = Context(
        root=args.root,
        log_file=args.log,
        log_format=args.log_format,
        debug=args.debug,
        systemd_cgroup=args.systemd_cgroup,
        strace=args.strace,
        prefork=prefork,
    )
    try:
        if args.systemd_cgroup and not os.path.isdir("/run/systemd/system"):
            from zentry.bus.errors import Unsupported

            raise Unsupported("--systemd-cgroup: systemd is not running on this host; use cgroupfs paths")
        return int(args._module.run(args, ctx) or 0)
    except ZentryError as err:
        return fail(log, str(err))
    except KeyboardInterrupt:
        return fail(log, "interrupted")
    except OSError as err:
        return fail(log, to_wire(err)[1])
    except Exception as err:  # a bug: still one line, and the traceback in the log
        log.debug("unexpected error", exc_info=True)
        return fail(log, f"internal error: {type(err).__name__}: {err}")


def call(argv: list[str] | None = None) -> int:
    """One CLI call to its end: main(argv), its exit status, the log shut down, output flushed.

    The console script (``entry``) ends its process with this, then
    ``os._exit`` with what it returns. A SystemExit (argparse's --help, a
    command's ``sys.exit``) becomes a status as Python's own rule has it:
    None is 0, an int is itself, anything else is 1 with the value on stderr.
    """
    gc.disable()  # a short-lived process: collection pauses buy nothing (actors re-enable it)
    try:
        code = main(argv)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = EXIT_FAILURE
    from zentry.bus.log import shutdown

    shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def entry() -> None:
    """The console script: call(), then exit without the interpreter's teardown.

    A CLI call lives for a fraction of a second; freeing every module and
    object at exit took ~70 ms of it. Buffered output and the log are
    flushed first (``call``); no zentry code relies on atexit or finalizers here.
    """
    os._exit(call())


if __name__ == "__main__":
    entry()
