"""A hook run by a container's init ends when the init's sandbox goes away."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from zentry.actors.controller import hooks
from zentry.bus.errors import SystemFailure


def test_a_hook_is_killed_when_the_channels_peer_hangs_up(tmp_path):
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    threading.Timer(0.3, peer.close).start()
    began = time.monotonic()
    with pytest.raises(SystemFailure, match="went away"):
        hooks.run_one("createContainer", {"path": "/bin/sleep", "args": ["sleep", "30"]}, {}, abort_on_hangup=ours)
    assert time.monotonic() - began < 10  # not the hook's 30 s
    ours.close()


def test_a_hook_with_a_live_peer_runs_to_its_end(tmp_path):
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    peer.send(b"unread")  # data waiting on the channel is no hangup
    ok = hooks.run_one("createContainer", {"path": "/bin/sh", "args": ["sh", "-c", f"cat > {tmp_path}/state"]},
                       {"id": "c1"}, abort_on_hangup=ours)
    failed = hooks.run_one("createContainer", {"path": "/bin/sh", "args": ["sh", "-c", "exit 4"]}, {}, abort_on_hangup=ours)
    assert (ok.exit_code, ok.error) == (0, "")
    assert (tmp_path / "state").read_text() == '{"id": "c1"}'
    assert failed.exit_code == 4 and failed.error.startswith("exit status 4")
    ours.close()
    peer.close()
