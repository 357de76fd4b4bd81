"""The floor of zentry's process design: a `run` skeleton, against runc, in one interleaved run.

    python bench/floor.py [--runs N]

What it measures is not zentry: it is the least any implementation of
zentry's design could spend on this host for `run` of /bin/true, with none of
zentry's own work. One `python -IS` process imports pyzmq and msgpack, forks
three children with their own ZeroMQ contexts (ROUTER sockets on ipc://), and
drives them with msgpack requests the way the CLI drives the controller:

  create   the controller asks the gofer (own mount namespace, the rootfs
           bind-mounted) and the sandbox, which makes the cgroup in every v1
           hierarchy, forks an intermediate that unshares the pid namespace
           and forks the init; the init joins the gofer's mount namespace,
           unshares uts/ipc/net/mount, pivots into the rootfs and mounts
           /proc; the sandbox puts it in the cgroup and lets it go on;
  start    the init execs /bin/true; the sandbox reaps it;
  delete   the three exit, the cgroup directories are removed, the CLI
           waits for every child.

Left out, because zentry has them and the skeleton does not: argument
parsing, config validation, logging, state.json and its lock, the event
stream, hooks, rlimits/capabilities/devices/masked paths, the seccomp
filters and the sentry, error handling. The gap between this row and
zentry's `run` in bench/lifecycle.py is what zentry's own work costs.
Needs root, runc and busybox-static (tests/helpers/bundle.py's rootfs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import helpers_bundle, which  # noqa: E402

SKELETON = r'''
import ctypes, os, sys
sys.path[len(sys.path):] = SITE
import msgpack, zmq

libc = ctypes.CDLL("libc.so.6", use_errno=True)
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWPID = 0x20000, 0x4000000, 0x8000000, 0x40000000, 0x20000000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
BUS, ROOTFS, CG = sys.argv[1], sys.argv[2], sys.argv[3]
HIER = ["cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"]


def check(rc):
    if rc != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def serve(name, handle, before_zmq=None):
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        return pid, r
    os.close(r)
    if before_zmq:
        before_zmq()  # while single-threaded (unshare(CLONE_NEWNS) needs it)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(f"ipc://{BUS}/{name}")
    os.write(w, b"ok")
    state = {"ctx": ctx}
    while True:
        ident, body = sock.recv_multipart()
        req = msgpack.unpackb(body)
        reply = handle(req, state)
        sock.send_multipart([ident, msgpack.packb(reply)])
        if req["op"] == "exit":
            for peer in state.get("peers", {}).values():
                peer.close(0)
            sock.close(0)
            ctx.term()
            os._exit(0)


def ask(state, name, req):
    peers = state.setdefault("peers", {})
    if name not in peers:
        s = state["ctx"].socket(zmq.DEALER)
        s.connect(f"ipc://{BUS}/{name}")
        peers[name] = s
    peers[name].send(msgpack.packb(req))
    return msgpack.unpackb(peers[name].recv())


def gofer_namespace():
    check(libc.unshare(CLONE_NEWNS))
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))


def gofer(req, state):
    if req["op"] == "prepare":
        os.mkdir(f"{BUS}/root")
        check(libc.mount(ROOTFS.encode(), f"{BUS}/root".encode(), None, MS_BIND | MS_REC, None))
        return {"root": f"{BUS}/root", "pid": os.getpid()}
    return {}


def sandbox(req, state):
    if req["op"] == "spawn":
        for h in HIER:
            os.makedirs(f"/sys/fs/cgroup/{h}/{CG}", exist_ok=True)
        for f in ("cpus", "mems"):
            with open(f"/sys/fs/cgroup/cpuset/{CG}/cpuset.{f}", "w") as out:
                out.write(open(f"/sys/fs/cgroup/cpuset/cpuset.{f}").read())
        libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: the init is reparented here
        ours, theirs = os.pipe(), os.pipe()
        middle = os.fork()
        if middle == 0:
            check(libc.unshare(CLONE_NEWPID))
            init = os.fork()
            if init:
                os.write(theirs[1], b"%d\n" % init)
                os._exit(0)
            os.read(ours[0], 1)  # in the cgroup
            fd = os.open(f"/proc/{req['gofer']}/ns/mnt", os.O_RDONLY)
            check(libc.setns(fd, CLONE_NEWNS))
            check(libc.unshare(CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWNS))
            check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None))
            os.chdir(req["root"])
            check(libc.syscall(155, b".", b"."))  # pivot_root
            check(libc.umount2(b".", MNT_DETACH))
            os.chdir("/")
            check(libc.mount(b"proc", b"/proc", b"proc", 0, None))
            os.write(theirs[1], b"r")
            os.read(ours[0], 1)  # start
            os.execv("/bin/true", ["/bin/true"])
        os.waitpid(middle, 0)
        init = int(os.read(theirs[0], 32))
        for h in HIER:
            with open(f"/sys/fs/cgroup/{h}/{CG}/cgroup.procs", "w") as out:
                out.write(str(init))
        os.write(ours[1], b"g")
        os.read(theirs[0], 1)
        state["init"], state["go"] = init, ours[1]
        return {"pid": init}
    if req["op"] == "start":
        os.write(state["go"], b"s")
        _, status = os.waitpid(state["init"], 0)
        for h in HIER:
            os.rmdir(f"/sys/fs/cgroup/{h}/{CG}")
        return {"status": os.waitstatus_to_exitcode(status)}
    return {}


def controller(req, state):
    if req["op"] == "create":
        got = ask(state, "gofer", {"op": "prepare"})
        state["spawned"] = ask(state, "sandbox", {"op": "spawn", "root": got["root"], "gofer": got["pid"]})
        return state["spawned"]
    if req["op"] == "start":
        return ask(state, "sandbox", {"op": "start"})
    if req["op"] == "delete":
        ask(state, "sandbox", {"op": "exit"})
        ask(state, "gofer", {"op": "exit"})
        return {}
    return {}


kids = [serve("controller", controller), serve("gofer", gofer, gofer_namespace), serve("sandbox", sandbox)]
for _, r in kids:
    os.read(r, 2)
ctx = zmq.Context()
cli = ctx.socket(zmq.DEALER)
cli.connect(f"ipc://{BUS}/controller")
for op in ("create", "start", "delete", "exit"):
    cli.send(msgpack.packb({"op": op}))
    cli.recv()
cli.close(0)
ctx.term()
for pid, _ in kids:
    os.waitpid(pid, 0)
os._exit(0)
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    if os.geteuid() != 0 or not which("runc"):
        print("floor.py needs root and runc", file=sys.stderr)
        return 2
    import site

    work = tempfile.mkdtemp(prefix="fl")
    try:
        bundle = os.path.join(work, "bundle")
        helpers_bundle().make_bundle(bundle, ["/bin/true"])
        script = os.path.join(work, "skeleton.py")
        with open(script, "w") as f:
            f.write(SKELETON.replace("SITE", repr(site.getsitepackages())))
        rootfs = os.path.join(bundle, "rootfs")
        python = sys.executable
        times: dict[str, list[float]] = {"skeleton": [], "runc": []}
        for i in range(args.runs):
            bus = os.path.join(work, f"bus{i}")
            os.mkdir(bus)
            t = time.perf_counter()
            r = subprocess.run([python, "-IS", script, bus, rootfs, f"zentry-floor-{os.getpid()}-{i}"], capture_output=True)
            times["skeleton"].append(time.perf_counter() - t)
            if r.returncode != 0:
                print(r.stderr.decode(), file=sys.stderr)
                return 1
            t = time.perf_counter()
            r = subprocess.run(["runc", "--root", os.path.join(work, "runc"), "run", "--bundle", bundle, f"f{i}"], capture_output=True)
            times["runc"].append(time.perf_counter() - t)
            if r.returncode != 0:
                print(r.stderr.decode(), file=sys.stderr)
                return 1
        sk, rc = statistics.median(times["skeleton"]) * 1000, statistics.median(times["runc"]) * 1000
        print(f"run of /bin/true, median of {args.runs} interleaved runs")
        print(f"  design skeleton (python -IS, pyzmq, 3 forked actors, namespaces, cgroup v1, pivot_root): {sk:6.1f} ms")
        print(f"  runc:                                                                            {rc:6.1f} ms")
        print(f"  skeleton/runc: {sk / rc:.1f}x   (4x runc = {4 * rc:.0f} ms; what is left for zentry's own work: {4 * rc - sk:.0f} ms)")
        return 0
    finally:
        subprocess.run(["umount", "-R", "-l", work], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
