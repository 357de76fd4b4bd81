"""actors/sandbox/exits.py: exit statuses of processes that are not our children, from the proc connector."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest

pytestmark = pytest.mark.root


def _exit_in_grandchild(code_or_signal: int, by_signal: bool = False) -> tuple[int, int]:
    """A process whose parent is not us (as the sandbox sees an init): its pid and a pidfd."""
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            time.sleep(0.3)
            if by_signal:
                os.kill(os.getpid(), code_or_signal)
            os._exit(code_or_signal)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    pid = int(os.read(r, 64))
    os.close(r)
    os.waitpid(middle, 0)
    return pid, os.pidfd_open(pid)


def test_statuses_of_watched_non_children_and_nothing_else():
    from zentry.actors.sandbox.exits import ExitStatuses

    exits = ExitStatuses()
    if not exits.available:
        pytest.skip("no proc connector here")
    try:
        pid, fd = _exit_in_grandchild(7)
        exits.watch(pid)
        killed, kfd = _exit_in_grandchild(signal.SIGTERM, by_signal=True)
        exits.watch(killed)
        unwatched, ufd = _exit_in_grandchild(3)
        for f in (fd, kfd, ufd):
            assert select.select([f], [], [], 10)[0]
            os.close(f)
        assert exits.status(pid) == 7 << 8
        assert exits.status(killed) == signal.SIGTERM
        assert exits.status(unwatched) is None
        exits.forget(pid)
        assert exits.status(pid) is None
    finally:
        exits.close()
