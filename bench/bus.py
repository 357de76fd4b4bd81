"""The bus's costs against plain pyzmq and a raw unix socket, interleaved in one run.

    python bench/bus.py [--requests N] [--rounds R] [--events N] [--event-runs K]

Round trips, each between two processes (forked servers, this process the
client), measured in R interleaved rounds (the order rotates every round, so
a load change on a shared machine hits every row alike):
  zentry   Client.request(Ping) -> Actor (main socket)
  pyzmq    DEALER -> ROUTER, one msgpack frame of the same size each way
  unix     AF_UNIX SOCK_SEQPACKET socketpair, the same bytes each way
Median and p99 per row over all rounds, the zentry/pyzmq ratio of the
medians, and the spread of the per-round ratios.

Events, K runs of each, alternating:
  events   Publisher.publish -> EventStream (a thread) -> SUB (another process): events/s, drops
  pub      raw pyzmq PUB -> SUB, one 3-frame message per event: msgs/s
Targets: zentry/pyzmq round trip <= 1.5x; zentry events >= 100k/s published.
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
from zentry.bus.events import EventStream, Publisher, batch_count


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


# --- round trips: three servers up at once, clients driven in rotating rounds ----


class ZentryRow:
    label = "zentry Client -> Actor (ping)"

    def __init__(self, bus: str) -> None:
        self.ep = Endpoints(bus)
        self.pid = fork(lambda: BenchActor(self.ep, sandbox_id="b", publish_events=False).run())
        while not os.path.exists(self.ep.path("bench.ctl")):
            time.sleep(0.005)
        self.client = Client(self.ep.actor("bench"), peer_pid=self.pid)
        self.req = M.Ping()
        reply = self.client.request(self.req)
        assert reply.pid == self.pid
        self.req_size = len(Envelope.wrap(self.req, sender="cli").encode())
        self.rep_size = len(Envelope.wrap(reply, sender="bench", parent="x").encode())

    def run(self, n: int) -> list[int]:
        c, req, clock = self.client, self.req, time.perf_counter_ns
        samples = []
        for _ in range(n):
            t0 = clock()
            c.request(req)
            samples.append(clock() - t0)
        return samples

    def close(self) -> None:
        self.client.close()
        with Client(self.ep.control("bench")) as c:
            c.request(M.Shutdown(), timeout=5)
        reap(self.pid)


class PyzmqRow:
    label = "pyzmq DEALER -> ROUTER (msgpack)"

    def __init__(self, bus: str, req_size: int, rep_size: int) -> None:
        addr = "ipc://" + os.path.join(bus, "plain.sock")
        # Payloads of the same encoded size as zentry's request and reply.
        self.frame = msgpack.packb([1, "ping", "x" * 8, "", "cli", 1, {"pad": "p" * max(0, req_size - 33)}])
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

        self.pid = fork(server)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.connect(addr)

    def run(self, n: int) -> list[int]:
        c, req, clock = self.sock, self.frame, time.perf_counter_ns
        samples = []
        for _ in range(n):
            t0 = clock()
            c.send(req)
            msgpack.unpackb(c.recv(), raw=False)
            samples.append(clock() - t0)
        return samples

    def close(self) -> None:
        self.sock.send(msgpack.packb([1, "stop"]))
        self.sock.close(linger=100)
        self.ctx.term()
        reap(self.pid)


class UnixRow:
    label = "AF_UNIX socketpair"

    def __init__(self, req_size: int, rep_size: int) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.req, rep = b"q" * req_size, b"r" * rep_size

        def server():
            a.close()
            while True:
                data = b.recv(65536)
                if not data:
                    break
                b.send(rep)

        self.pid = fork(server)
        b.close()
        self.sock = a

    def run(self, n: int) -> list[int]:
        a, req, clock = self.sock, self.req, time.perf_counter_ns
        samples = []
        for _ in range(n):
            t0 = clock()
            a.send(req)
            a.recv(65536)
            samples.append(clock() - t0)
        return samples

    def close(self) -> None:
        self.sock.close()
        reap(self.pid)


def bench_round_trips(bus: str, n: int, rounds: int) -> tuple[dict, list[float], int, int]:
    """Samples per row over ``rounds`` rotating rounds; the per-round zentry/pyzmq median ratios."""
    rows: list = []
    try:
        z = ZentryRow(bus)
        rows.append(z)
        rows.append(PyzmqRow(bus, z.req_size, z.rep_size))
        rows.append(UnixRow(z.req_size, z.rep_size))
        for row in rows:
            row.run(500)  # warm up
        samples: dict[str, list[int]] = {row.label: [] for row in rows}
        ratios = []
        per_round = max(1, n // rounds)
        for r in range(rounds):
            this_round = {}
            for row in rows[r % len(rows):] + rows[: r % len(rows)]:
                this_round[row.label] = row.run(per_round)
                samples[row.label] += this_round[row.label]
            ratios.append(statistics.median(this_round[rows[0].label]) / statistics.median(this_round[rows[1].label]))
        return samples, ratios, z.req_size, z.rep_size
    finally:
        for row in rows:
            row.close()


# --- events ----------------------------------------------------------------------


def _receive(addr: str, n: int, batched: bool, ready_w: int, result_w: int) -> None:
    """Child: SUB, count events and seq gaps until the ``end`` topic or silence."""
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
        seq = msgpack.unpackb(frames[1])
        # a zentry stream message holds a batch: seq is its first event's
        count = batch_count(frames[2]) if batched else 1
        got += count
        lost += seq - last - 1
        last = seq + count - 1
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
    pid = fork(lambda: _receive(sub_addr, n, zentry, ready_w, result_w))
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
            pub.send_pending()
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
    ap.add_argument("--requests", type=int, default=6000, help="round trips per row, over all rounds")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--events", type=int, default=200_000, help="events per run")
    ap.add_argument("--event-runs", type=int, default=2, help="runs of each event row, alternating")
    args = ap.parse_args(argv)
    bus = tempfile.mkdtemp(prefix="zbench-", dir="/tmp")
    try:
        start = time.time()
        samples, ratios, req_size, rep_size = bench_round_trips(bus, args.requests, args.rounds)
        ev_runs, raw_runs = [], []
        for _ in range(args.event_runs):
            ev_runs.append(bench_events(bus, args.events, zentry=True))
            raw_runs.append(bench_events(bus, args.events, zentry=False))
        per_row = len(next(iter(samples.values())))
        print(f"round trips: {per_row} per row in {args.rounds} interleaved rounds, request {req_size} B, reply {rep_size} B")
        print(f"{'row':<34}{'median µs':>11}{'p99 µs':>10}")
        meds = {}
        for label, xs in samples.items():
            med, p99 = summary(xs)
            meds[label] = med
            print(f"{label:<34}{med:>11.1f}{p99:>10.1f}")
        z_med, p_med = meds[ZentryRow.label], meds[PyzmqRow.label]
        ratio = z_med / p_med
        rs = sorted(ratios)
        print(f"zentry/pyzmq median ratio: {ratio:.2f}x (target <= 1.5x) {'OK' if ratio <= 1.5 else 'OVER'}; "
              f"per round: min {rs[0]:.2f}x, median {statistics.median(rs):.2f}x, max {rs[-1]:.2f}x")
        print()
        print(f"events: {args.events} published per run, {args.event_runs} runs of each row, alternating")
        print(f"{'row':<34}{'sent/s':>11}{'recv/s':>11}{'received':>10}{'lost':>8}{'seq-gap':>9}")
        for i in range(args.event_runs):
            for name, r in ((f"zentry Publisher -> EventStream #{i + 1}", ev_runs[i]), (f"pyzmq PUB -> SUB #{i + 1}", raw_runs[i])):
                print(f"{name:<34}{r['sent_per_s']:>11.0f}{r['rx_per_s']:>11.0f}{r['received']:>10}{r['lost']:>8}{r['gap_lost']:>9}")
        z_rate = statistics.median(r["sent_per_s"] for r in ev_runs)
        raw_rate = statistics.median(r["sent_per_s"] for r in raw_runs)
        seen = all(r["lost"] == r["gap_lost"] for r in ev_runs)
        print(f"zentry events: {z_rate:.0f}/s published, median of runs (target >= 100k/s) "
              f"{'OK' if z_rate >= 100_000 else 'UNDER'}; {z_rate / raw_rate:.2f}x raw PUB's {raw_rate:.0f} msgs/s; "
              f"every loss seen as a seq gap: {'yes' if seen else 'no'}")
        print(f"total {time.time() - start:.1f}s")
    finally:
        shutil.rmtree(bus, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
