"""The bus's costs against plain pyzmq and a raw unix socket, in one run.

    python bench/bus.py [--requests N] [--events N]

Rows, each between two processes (a forked server, this process the client):
  zentry   Client.request(Ping) -> Actor (main socket), median and p99 round trip
  pyzmq    DEALER -> ROUTER, one msgpack frame of the same size each way
  unix     AF_UNIX SOCK_SEQPACKET socketpair, the same bytes each way
  events   Publisher.publish -> EventStream (a thread) -> SUB: msgs/s, drops
  pub      raw pyzmq PUB -> SUB, same frames: msgs/s
Targets: zentry/pyzmq round trip <= 1.5x; zentry events >= 100k/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time

import msgpack
import zmq

import zentry.bus.messages as M
from zentry.bus import codec
from zentry.bus.actor import Actor
from zentry.bus.client import Client
from zentry.bus.endpoints import Endpoints
from zentry.bus.envelope import Envelope
from zentry.bus.events import EventStream, Publisher


def fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fn()
            code = 0
        finally:
            os._exit(code)
    return pid


def summary(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return statistics.median(s) / 1000, s[int(len(s) * 0.99)] / 1000


class BenchActor(Actor):
    name = "bench"
    heartbeat_interval = 0


def bench_zentry(bus: str, n: int) -> tuple[tuple[float, float], int, int]:
    ep = Endpoints(bus)
    pid = fork(lambda: BenchActor(ep, sandbox_id="b", publish_events=False).run())
    try:
        while not os.path.exists(ep.path("bench.ctl")):
            time.sleep(0.005)
        with Client(ep.actor("bench"), peer_pid=pid) as c:
            req = M.Ping()
            for _ in range(500):
                c.request(req)
            samples = []
            clock = time.perf_counter_ns
            for _ in range(n):
                t0 = clock()
                reply = c.request(req)
                samples.append(clock() - t0)
            assert reply.pid == pid
            req_size = len(Envelope.wrap(req, sender="cli").encode())
            rep_size = len(Envelope.wrap(reply, sender="bench", parent="x").encode())
        with Client(ep.control("bench")) as c:
            c.request(M.Shutdown(), timeout=5)
    finally:
        reap(pid)
    return summary(samples), req_size, rep_size


def bench_pyzmq(bus: str, n: int, req_size: int, rep_size: int) -> tuple[float, float]:
    addr = "ipc://" + os.path.join(bus, "plain.sock")
    # Payloads of the same encoded size as zentry's request and reply.
    req = msgpack.packb([1, "ping", "x" * 8, "", "cli", 1, {"pad": "p" * max(0, req_size - 33)}])
    rep = msgpack.packb([1, "pong", "y" * 8, "", "bench", 1, {"pad": "p" * max(0, rep_size - 35)}])

    def server():
        ctx = zmq.Context()
        s = ctx.socket(zmq.ROUTER)
        s.bind(addr)
        while True:
            ident, frame = s.recv_multipart()
            body = msgpack.unpackb(frame, raw=False)
            if body[1] == "stop":
                break
            s.send_multipart([ident, rep])
        s.close(linger=0)
        ctx.term()

    pid = fork(server)
    try:
        ctx = zmq.Context()
        c = ctx.socket(zmq.DEALER)
        c.connect(addr)
        for _ in range(500):
            c.send(req)
            msgpack.unpackb(c.recv(), raw=False)
        samples = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            c.send(req)
            msgpack.unpackb(c.recv(), raw=False)
            samples.append(clock() - t0)
        c.send(msgpack.packb([1, "stop"]))
        c.close(linger=100)
        ctx.term()
    finally:
        reap(pid)
    return summary(samples)


def bench_unix(n: int, req_size: int, rep_size: int) -> tuple[float, float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    req, rep = b"q" * req_size, b"r" * rep_size

    def server():
        a.close()
        while True:
            data = b.recv(65536)
            if not data:
                break
            b.send(rep)

    pid = fork(server)
    b.close()
    try:
        for _ in range(500):
            a.send(req)
            a.recv(65536)
        samples = []
        clock = time.perf_counter_ns
        for _ in range(n):
            t0 = clock()
            a.send(req)
            a.recv(65536)
            samples.append(clock() - t0)
    finally:
        a.close()
        reap(pid)
    return summary(samples)


def _receive(addr: str, n: int, ready_w: int, result_w: int) -> None:
    """Child: SUB, count frames and seq gaps until ``end`` topic or silence."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(addr)
    time.sleep(0.2)
    os.write(ready_w, b"r")
    got = 0
    last = 0
    lost = 0
    t0 = t1 = 0.0
    while s.poll(2000):
        frames = s.recv_multipart()
        if frames[0] == b"end":
            break
        if got == 0:
            t0 = time.perf_counter()
        got += 1
        seq = msgpack.unpackb(frames[1])
        lost += seq - last - 1
        last = seq
        t1 = time.perf_counter()
    lost += n - last  # the tail lost after the last frame seen
    os.write(result_w, msgpack.packb([got, lost, t1 - t0]))
    s.close(linger=0)
    ctx.term()


def bench_events(bus: str, n: int, zentry: bool) -> dict:
    ep = Endpoints(bus)
    ctx = zmq.Context()
    stream = None
    if zentry:
        stream = EventStream(ctx, ep.events_in, ep.events)
        stream.start()
        stream.wait_ready()
        sub_addr = ep.events
    else:
        sub_addr = "ipc://" + os.path.join(bus, "rawpub.sock")
        raw = ctx.socket(zmq.PUB)
        raw.setsockopt(zmq.SNDHWM, 10000)
        raw.bind(sub_addr)
    ready_r, ready_w = os.pipe()
    result_r, result_w = os.pipe()
    pid = fork(lambda: _receive(sub_addr, n, ready_w, result_w))
    try:
        os.read(ready_r, 1)
        msg = M.Syscall(container_id="c1", pid=100, tid=100, syscall="openat", args=[-100, "/etc/hostname", 0],
                        result=3, errno="", duration_ns=1200)
        if zentry:
            pub = Publisher(ctx, ep.events_in, sandbox_id="sbx", actor="sandbox")
            while not pub.flush():
                time.sleep(0.01)
            t0 = time.perf_counter()
            for _ in range(n):
                pub.publish(msg)
            elapsed = time.perf_counter() - t0
            time.sleep(0.2)
            pub.sock.send_multipart([b"end", codec.pack(0), b""])
            pub.close()
        else:
            frame = Envelope.wrap(msg, sender="sandbox").encode()
            topic = b"sbx.c1.sandbox.syscall"
            time.sleep(0.1)
            t0 = time.perf_counter()
            for i in range(1, n + 1):
                try:
                    raw.send_multipart([topic, msgpack.packb(i), frame], flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass
            elapsed = time.perf_counter() - t0
            time.sleep(0.2)
            raw.send_multipart([b"end", b"\x00", b""])
            raw.close(linger=500)
        got, lost, rx = msgpack.unpackb(os.read(result_r, 100))
    finally:
        reap(pid)
        if stream is not None:
            stream.stop()
            stream.join(5)
        ctx.term()
        for fd in (ready_r, ready_w, result_r, result_w):
            os.close(fd)
    return {"sent_per_s": n / elapsed, "received": got, "lost": n - got, "gap_lost": lost,
            "rx_per_s": got / rx if rx else 0.0}


def reap(pid: int) -> None:
    for _ in range(300):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--events", type=int, default=200_000)
    args = ap.parse_args(argv)
    bus = tempfile.mkdtemp(prefix="zbench-", dir="/tmp")
    try:
        start = time.time()
        (z_med, z_p99), req_size, rep_size = bench_zentry(bus, args.requests)
        p_med, p_p99 = bench_pyzmq(bus, args.requests, req_size, rep_size)
        u_med, u_p99 = bench_unix(args.requests, req_size, rep_size)
        ev = bench_events(bus, args.events, zentry=True)
        raw = bench_events(bus, args.events, zentry=False)
        print(f"round trips: {args.requests} requests, request {req_size} B, reply {rep_size} B")
        print(f"{'row':<34}{'median µs':>11}{'p99 µs':>10}")
        print(f"{'zentry Client -> Actor (ping)':<34}{z_med:>11.1f}{z_p99:>10.1f}")
        print(f"{'pyzmq DEALER -> ROUTER (msgpack)':<34}{p_med:>11.1f}{p_p99:>10.1f}")
        print(f"{'AF_UNIX socketpair':<34}{u_med:>11.1f}{u_p99:>10.1f}")
        ratio = z_med / p_med
        print(f"zentry/pyzmq median ratio: {ratio:.2f}x (target <= 1.5x) {'OK' if ratio <= 1.5 else 'OVER'}")
        print()
        print(f"events: {args.events} published")
        print(f"{'row':<34}{'sent/s':>11}{'recv/s':>11}{'received':>10}{'lost':>8}{'seq-gap':>9}")
        for name, r in (("zentry Publisher -> EventStream", ev), ("pyzmq PUB -> SUB", raw)):
            print(f"{name:<34}{r['sent_per_s']:>11.0f}{r['rx_per_s']:>11.0f}{r['received']:>10}{r['lost']:>8}{r['gap_lost']:>9}")
        print(f"zentry events: {ev['sent_per_s']:.0f}/s published (target >= 100k/s) "
              f"{'OK' if ev['sent_per_s'] >= 100_000 else 'UNDER'}; "
              f"{ev['received']}/{args.events} through the stream, every loss seen as a seq gap: "
              f"{'yes' if ev['lost'] == ev['gap_lost'] else 'no'}")
        print(f"total {time.time() - start:.1f}s")
    finally:
        shutil.rmtree(bus, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
