"""Helpers shared by commands: finding a container, asking its controller, pid files."""

from __future__ import annotations

import os

from zentry.actors.launch import controller_client
from zentry.actors.state import STOPPED, Record, Store, pid_alive
from zentry.bus.errors import ActorGone
from zentry.bus.message import Message


def load(store: Store, partial_id: str) -> Record:
    """The record for an id or unique prefix; ``stopped`` if its sandbox is gone."""
    rec = store.load(store.resolve(partial_id))
    if rec.status != STOPPED and not pid_alive(rec.controller_pid):
        rec.status = STOPPED
    return rec


def ask(rec: Record, msg: Message, timeout: float = 60.0) -> Message:
    with controller_client(rec) as client:
        return client.request(msg, timeout=timeout)


def live_state(rec: Record) -> dict:
    """The controller's view of the state, or the record's when it is gone."""
    from zentry.bus.messages import GetState

    try:
        return ask(rec, GetState(container_id=rec.id), timeout=5).state
    except ActorGone:
        if rec.status != STOPPED:
            rec.status = STOPPED
        return rec.oci_state()


def write_pid_file(path: str, pid: int) -> None:
    """Atomically (engines poll for it): temp file then rename."""
    path = os.path.abspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def add_id(parser, help: str = "container id") -> None:
    parser.add_argument("container_id", metavar="ID", help=help)
