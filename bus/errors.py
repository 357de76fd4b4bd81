"""The one error hierarchy of zentry; each class's ``code`` is its wire code.

An actor that fails a request replies with ``Error{code, message}``; the
client turns the code back into the same class (``from_wire``), so a
``NotFound`` raised in the controller is a ``NotFound`` in the CLI. The CLI
maps classes to exit statuses in one place (``cmd/main.py``).

OS errors are translated at the boundary with ``raise X(...) from err``.
Messages carry context: ``cannot start container "web": ...``.
"""

from __future__ import annotations


class ZentryError(Exception):
    """Base of every error zentry reports. ``code`` is the wire code."""

    code = "internal"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message or self.code


# --- the caller's fault: bad input, wrong state -------------------------------
class UserError(ZentryError):
    """The request cannot be honoured as given; nothing was changed."""

    code = "invalid"


class InvalidArgument(UserError):
    code = "invalid_argument"


class ConfigError(UserError):
    """config.json is unreadable or does not follow the OCI schema."""

    code = "invalid_config"


class NotFound(UserError):
    code = "not_found"


class AlreadyExists(UserError):
    code = "already_exists"


class Ambiguous(UserError):
    """A partial container ID matches more than one container."""

    code = "ambiguous"


class WrongState(UserError):
    """``cannot <action> container <id> in state <status>``."""

    code = "wrong_state"


class ExecNotFound(UserError):
    """The process's executable does not exist (engines map this text to 127)."""

    code = "exec_not_found"


class ExecPermission(UserError):
    """The executable exists but cannot be run (engines map this text to 126)."""

    code = "exec_permission"


class PermissionDenied(UserError):
    """A path or socket others could write (or have planted) is refused."""

    code = "permission_denied"


class Unsupported(UserError):
    """A feature this host or zentry does not provide (e.g. systemd cgroups)."""

    code = "unsupported"


class LimitReached(UserError):
    """A limit refuses the request (a pool's maximum, the node's sandboxes or memory budget)."""

    code = "limit_reached"


# --- the bus --------------------------------------------------------------------
class ProtocolError(ZentryError):
    """A frame that is not a valid envelope (size, type, fields)."""

    code = "protocol"


class UnknownMessage(ProtocolError):
    """A well-formed envelope whose type no handler (or no registry) knows."""

    code = "unknown_message"


class Timeout(ZentryError):
    """A request's deadline passed without a reply."""

    code = "timeout"


class ActorGone(ZentryError):
    """The actor that should answer is stopping or dead."""

    code = "actor_gone"


class NodeUnreachable(ActorGone):
    """A pool node agent stopped answering: its sandboxes are lost to the client (raised client-side)."""

    code = "node_unreachable"


# --- ours or the system's -------------------------------------------------------
class SystemFailure(ZentryError):
    """An operating system call failed (an OSError at the boundary)."""

    code = "system"


class Internal(ZentryError):
    """A bug: an exception nobody translated."""

    code = "internal"


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: wire code -> class; every code is unique (tests/unit/test_errors.py).
ERROR_CODES: dict[str, type[ZentryError]] = {c.code: c for c in [ZentryError, *_all_subclasses(ZentryError)] if c is not ZentryError}
ERROR_CODES.setdefault("internal", Internal)


def from_wire(code: str, message: str, details: dict | None = None) -> ZentryError:
    """The exception for an ``Error`` reply; unknown codes become ``Internal``."""
    cls = ERROR_CODES.get(code, Internal)
    err = cls(message)
    # Not ``cls(message, **details)``: details come off the wire, and a key
    # named "message" would make that a TypeError instead of the error.
    if details:
        err.details.update(details)
    return err


def to_wire(exc: BaseException) -> tuple[str, str]:
    """(code, message) for any exception, for an ``Error`` reply."""
    if isinstance(exc, ZentryError):
        return exc.code, str(exc)
    if isinstance(exc, OSError):
        return SystemFailure.code, os_error_message(exc)
    return Internal.code, f"{type(exc).__name__}: {exc}"


def os_error_message(exc: OSError) -> str:
    """``/x: no such file or directory``: what failed and on which path, in
    runc's words, without Python's ``[Errno 2]`` and quotes."""
    if not exc.strerror:
        return str(exc) or type(exc).__name__
    reason = exc.strerror[0].lower() + exc.strerror[1:]
    if exc.filename is None:
        return reason
    if exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    return f"{exc.filename}: {reason}"
