"""OCI hooks: run with the container's state on stdin, each with its timeout.

Failure rules (config.md "POSIX-platform Hooks"): a failing prestart,
createRuntime, createContainer or startContainer hook fails the operation
(the container is destroyed); a failing poststart or poststop hook is a
warning and the lifecycle goes on. Hooks run through ``sh`` (the package),
which gives stdin, environment and timeout in one call; ``args[0]`` is not
passed as argv[0] (sh cannot), the hook's path is.
"""

from __future__ import annotations

import json
import os
import time
from typing import NamedTuple

from zentry.bus.errors import SystemFailure
from zentry.bus.log import get_logger

log = get_logger("zentry.hooks")

FATAL_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer")
DEFAULT_TIMEOUT = 60.0


class HookResult(NamedTuple):
    kind: str
    path: str
    exit_code: int
    duration_ns: int
    error: str = ""


def run_hooks(kind: str, config: dict, state: dict, on_result=None, abort_on_hangup=None) -> list[HookResult]:
    """Run ``config.hooks[kind]`` in order. Raises SystemFailure for a fatal kind.

    ``abort_on_hangup``: a socket whose peer going away kills the hook running
    and raises SystemFailure (the container's init, whose sandbox is gone,
    must not wait on for a hook: nobody would ever end either)."""
    results = []
    for hook in (config.get("hooks") or {}).get(kind) or []:
        result = run_one(kind, hook, state, abort_on_hangup)
        results.append(result)
        if on_result is not None:
            on_result(result)
        if result.error:
            if kind in FATAL_KINDS:
                raise SystemFailure(f"{kind} hook {result.path} failed: {result.error}")
            log.warning("%s hook %s failed (ignored): %s", kind, result.path, result.error)
    return results


def _die_with_runner() -> None:
    """In the hook's child: a hook never outlives the process that runs it."""
    import signal

    from zentry.sentry.abi import libc

    libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGKILL)


def _wait_unless_hangup(proc, sock) -> None:
    """``proc.wait()``, but kill it and raise SystemFailure once ``sock``'s peer is gone."""
    import select

    import sh

    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    while True:
        try:
            proc.wait(timeout=0.1)
            return
        except sh.TimeoutException:
            if proc.process.timed_out:
                raise
        if poller.poll(0):  # POLLRDHUP/POLLHUP: the peer closed its end
            proc.kill()
            try:
                proc.wait()
            except sh.ErrorReturnCode:
                pass
            raise SystemFailure("the sandbox went away during the hook")


def run_one(kind: str, hook: dict, state: dict, abort_on_hangup=None) -> HookResult:
    path = hook["path"]
    args = list(hook.get("args") or [path])[1:]
    # No "env": the runtime's own environment, as runc (Go's exec with a nil Env)
    # gives; an "env" list, even an empty one, is the whole environment.
    if hook.get("env") is None:
        env = dict(os.environ)
    else:
        env = dict(e.split("=", 1) for e in hook["env"] if "=" in e)
    timeout = hook.get("timeout") or DEFAULT_TIMEOUT
    import sh  # only when there is a hook: it costs ~40 ms to import

    t0 = time.perf_counter_ns()
    try:
        if abort_on_hangup is None:
            sh.Command(path)(*args, _in=json.dumps(state), _env=env, _timeout=timeout, _truncate_exc=False, _preexec_fn=_die_with_runner)
        else:
            _wait_unless_hangup(sh.Command(path)(*args, _in=json.dumps(state), _env=env, _timeout=timeout, _truncate_exc=False,
                                                 _preexec_fn=_die_with_runner, _bg=True, _bg_exc=False), abort_on_hangup)
        return HookResult(kind, path, 0, time.perf_counter_ns() - t0)
    except sh.TimeoutException:
        return HookResult(kind, path, -1, time.perf_counter_ns() - t0, f"timed out after {timeout}s")
    except sh.ErrorReturnCode as err:
        stderr = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = f"exit status {err.exit_code}" + (f": {stderr[-1]}" if stderr else "")
        return HookResult(kind, path, err.exit_code, time.perf_counter_ns() - t0, detail)
    except (sh.CommandNotFound, OSError) as err:
        return HookResult(kind, path, -1, time.perf_counter_ns() - t0, f"cannot run: {err}")
