"""Endpoint rules: private directories and sockets, short ipc paths, tcp only with CURVE."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from zentry.bus import endpoints
from zentry.bus.actor import Actor
from zentry.bus.endpoints import Endpoints, bus_dir_for, check_endpoint, chmod_socket, make_private_dir
from zentry.bus.errors import InvalidArgument, PermissionDenied


def test_tcp_without_curve_is_refused():
    with pytest.raises(InvalidArgument, match="without CURVE"):
        check_endpoint("tcp://127.0.0.1:5555")
    with pytest.raises(InvalidArgument, match="without CURVE"):
        check_endpoint("tcp://0.0.0.0:5555", b"")
    check_endpoint("tcp://127.0.0.1:5555", b"x" * 40)
    check_endpoint("ipc:///run/x.sock", b"x" * 40)
    check_endpoint("inproc://stream")
    for bad in ("udp://1.2.3.4:5", "pgm://eth0;239.1.1.1:5555", "/plain/path"):
        with pytest.raises(InvalidArgument, match="unsupported endpoint"):
            check_endpoint(bad)


class _TcpActor(Actor):
    name = "tcp"


def test_actor_refuses_to_bind_tcp_without_curve():
    actor = _TcpActor(Endpoints("/nonexistent"), sandbox_id="s", publish_events=False)
    actor.ctx = zmq.Context()
    try:
        with pytest.raises(InvalidArgument):
            actor._bind("tcp://127.0.0.1:0")
    finally:
        actor.ctx.term()


def test_private_dir_and_socket_modes(tmp_path):
    d = tmp_path / "a" / "bus"
    old = os.umask(0)
    try:
        make_private_dir(str(d))
        make_private_dir(str(d))  # idempotent
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    ctx = zmq.Context()
    try:
        actor = _TcpActor(Endpoints(str(d)), sandbox_id="s", publish_events=False)
        actor.ctx = ctx
        old = os.umask(0)
        try:
            s = actor._bind(actor.endpoints.actor("tcp"))
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(d / "tcp.sock").st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(d / "tcp.sock").st_mode)
        s.close(linger=0)
    finally:
        ctx.term()
    f = tmp_path / "other.sock"
    f.touch(mode=0o666)
    chmod_socket("ipc://" + str(f))
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    chmod_socket("ipc://" + str(tmp_path / "absent"))  # not an error


def test_bind_restores_the_umask(tmp_path):
    ctx = zmq.Context()
    actor = _TcpActor(Endpoints(str(tmp_path)), sandbox_id="s", publish_events=False)
    actor.ctx = ctx
    old = os.umask(0o027)
    try:
        actor._bind(actor.endpoints.control("tcp")).close(linger=0)
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)
        ctx.term()


def test_endpoint_layout():
    ep = Endpoints("/run/zentry/abc")
    assert ep.actor("controller") == "ipc:///run/zentry/abc/controller.sock"
    assert ep.control("gofer") == "ipc:///run/zentry/abc/gofer.ctl"
    assert ep.events_in == "ipc:///run/zentry/abc/events.in"
    assert ep.events == "ipc:///run/zentry/abc/events.sock"
    assert ep.fd_socket == "/run/zentry/abc/fds.sock"


def test_bus_dir_for_short_and_long_paths():
    short = "/run/zentry/sandbox-1"
    assert bus_dir_for(short) == short
    long = "/var/lib/containerd/io.containerd.runtime.v2.task/k8s.io/" + "f" * 64
    moved = bus_dir_for(long)
    assert moved.startswith("/run/zentry-bus/") and len(os.path.basename(moved)) == 20
    assert moved == bus_dir_for(long)  # stable
    assert moved != bus_dir_for(long + "x")
    # every socket of the moved dir fits the kernel's sun_path
    for name in ("controller.sock", "controller.ctl", "sandbox.sock", "events.sock", "events.in", "fds.sock"):
        assert len(os.path.join(moved, name)) <= endpoints._IPC_MAX
    # the boundary: the longest name must leave 8 bytes of headroom
    edge = "/" + "d" * (endpoints._IPC_MAX - 8 - len("/controller.ctl") - 1)
    assert len(os.path.join(edge, "controller.ctl")) == endpoints._IPC_MAX - 8
    assert bus_dir_for(edge) == edge
    assert bus_dir_for(edge + "d") != edge + "d"


def test_ipc_without_curve_only_in_a_private_directory(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    check_endpoint(f"ipc://{private}/tap.sock")
    for mode in (0o755, 0o711, 0o770, 0o777, 0o1777):
        os.chmod(private, mode)
        with pytest.raises(PermissionDenied, match="without CURVE keys"):
            check_endpoint(f"ipc://{private}/tap.sock")
    with pytest.raises(InvalidArgument, match="No such file"):
        check_endpoint(f"ipc://{tmp_path}/missing/tap.sock")


def test_bind_private_makes_0600_sockets_whatever_the_umask(tmp_path):
    ctx = zmq.Context()
    old = os.umask(0)
    try:
        sock = ctx.socket(zmq.PUB)
        endpoints.bind_private(sock, f"ipc://{tmp_path}/s.sock")
        assert stat.S_IMODE(os.stat(tmp_path / "s.sock").st_mode) == 0o600
        sock.close(0)
    finally:
        os.umask(old)
        ctx.term()


def test_make_private_dir_whatever_the_umask_and_refuses_a_planted_one(tmp_path):
    old = os.umask(0)
    try:
        make_private_dir(str(tmp_path / "parent" / "bus"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "parent" / "bus").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "parent").st_mode) == 0o711
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    os.chmod(open_parent, 0o777)
    with pytest.raises(PermissionDenied, match="bus directory parent .*0777"):
        make_private_dir(str(open_parent / "bus"))
    os.symlink(tmp_path / "parent", tmp_path / "link")
    with pytest.raises(PermissionDenied, match="not a directory"):
        make_private_dir(str(tmp_path / "link"))
    if os.geteuid() == 0:
        planted = tmp_path / "planted"
        planted.mkdir()
        os.chown(planted, 65534, 65534)
        with pytest.raises(PermissionDenied, match="owned by uid 65534"):
            make_private_dir(str(planted))
