"""zentry's loggers: ``logging``, imported only when something is logged.

Every module gets its logger from :func:`get_logger`. Importing ``logging``
(with traceback, tokenize, string and weakref) costs ~13 ms, and most CLI
calls log nothing: ``state``, ``start``, ``kill``, ``delete`` each paid it
for an empty ``--log`` file. A :class:`Logger` here is a name; the first
message imports ``logging``, applies the set-up :func:`configure` recorded
(the CLI's ``--log``, ``--log-format``, ``--debug``) and hands the message on.

Without :func:`configure` (a library user, the tests) nothing is set up:
the messages go to ``logging``'s own loggers under the same names, so
``caplog`` and the user's handlers see them.

The set-up: ``--log FILE`` appends one line per record, ``{"level","msg","time"}``
with ``--log-format json`` (what engines read back), else
``time level name: message``; without a file, ``--debug`` writes to stderr;
otherwise records at INFO and above are dropped (the CLI prints its error
once itself).
"""

from __future__ import annotations

import sys

#: (log_file, log_format, debug) from configure(), applied at the first message
_pending: tuple[str | None, str, bool] | None = None
#: the --log file configure() was given, if any
_log_file: str | None = None


class Logger:
    """A named logger that imports ``logging`` on its first message."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real = None

    def _get(self):
        if self._real is None:
            self._real = _logging().getLogger(self.name)
        return self._real

    def debug(self, msg: str, *args, **kwargs) -> None:
        self._get().debug(msg, *args, **kwargs)

    def info(self, msg: str, *args, **kwargs) -> None:
        self._get().info(msg, *args, **kwargs)

    def warning(self, msg: str, *args, **kwargs) -> None:
        self._get().warning(msg, *args, **kwargs)

    def error(self, msg: str, *args, **kwargs) -> None:
        self._get().error(msg, *args, **kwargs)

    def exception(self, msg: str, *args, **kwargs) -> None:
        kwargs.setdefault("exc_info", True)
        self._get().error(msg, *args, **kwargs)


def get_logger(name: str) -> Logger:
    return Logger(name)


def configure(log_file: str | None, log_format: str = "text", debug: bool = False) -> None:
    """Record the CLI's logging flags; they take effect at the first message
    (at once if ``logging`` is already in use)."""
    global _pending, _log_file
    _pending = (log_file, log_format, debug)
    _log_file = log_file
    if "logging" in sys.modules:
        _apply()


def warn_user(msg: str) -> None:
    """A warning for the person at the CLI, as runc gives one: into the --log
    file when there is one, else one line on stderr. Only the CLI process
    calls this (an actor's stderr may be the container's)."""
    get_logger("zentry").warning("%s", msg)
    if _log_file is None:
        sys.stderr.write(f"zentry: warning: {msg}\n")


def shutdown() -> None:
    """Flush and close the handlers, if anything was logged at all."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()


def _logging():
    import logging

    if _pending is not None:
        _apply()
    return logging


def _apply() -> None:
    global _pending
    settings, _pending = _pending, None
    if settings is None:
        return
    log_file, log_format, debug = settings
    import logging

    root = logging.getLogger("zentry")
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_file:
        handler: logging.Handler = logging.FileHandler(log_file)
        handler.setFormatter(_json_formatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    elif debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())  # the CLI prints its error once itself


def _json_formatter():
    import json
    import logging

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return json.dumps({"level": record.levelname.lower(), "msg": record.getMessage(), "time": _utc(record.created)})

    return JsonFormatter()


def _utc(seconds: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
