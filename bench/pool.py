"""Sandbox pools: claim latency, exec latency, sustained claims/s, memory of a warm sandbox.

    python bench/pool.py [--claims N] [--execs N] [--sustain SECONDS] [--warm N]

Starts a node agent (`zentry pool serve`) on a private --root with one
busybox pool (tests/helpers' rootfs), then measures:

  claim          `Client.claim("bb")` from a warm pool (the client's whole
                 call: its status refresh when stale, the claim round trip);
                 batches of --warm claims, each batch released and the pool
                 refilled before the next; also the bare `pool.claim` round
                 trip on one DEALER (what the agent itself takes)
  exec           `/bin/true` in a claimed sandbox, interleaved with
                 `zentry exec` into a zentry container and `runc exec` into a
                 runc container of the same bundle (median, p99)
  claims/s       from warm: the claims of the latency batches, back to back;
                 sustained: claim + release as fast as one client can for --sustain
                 seconds, the refill running (a claim waits for a start when
                 the pool is empty, so this converges to the start rate), and
                 the starts/s the agent achieved
  memory         of one idle warm sandbox: its init's PSS (from
                 /proc/PID/smaps_rollup) plus what its cgroup is charged
                 (its tmpfs pages, its kernel objects); and the pool's fixed
                 cost, its template (controller, gofer, sandbox actor,
                 spawner), which every sandbox of the pool shares; how many
                 sandboxes fit in 16 GiB

Targets (2-core host): claim median <= 5 ms, p99 <= 20 ms; exec median
<= 10 ms; >= 100 claims/s; idle warm sandbox <= 20 MB PSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import helpers_bundle, pss_kib, which, zentry_argv  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))] if s else float("nan")


def ms(x: float) -> str:
    return f"{x * 1000:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", type=int, default=100)
    ap.add_argument("--execs", type=int, default=50)
    ap.add_argument("--sustain", type=float, default=10.0)
    ap.add_argument("--warm", type=int, default=20)
    args = ap.parse_args()
    zentry = zentry_argv()
    if not zentry:
        print("zentry CLI not found", file=sys.stderr)
        return 1
    os.environ.setdefault("ZENTRY_BIN", zentry[0])
    from zentry.actors.pool.client import Client
    from zentry.bus.messages import PoolClaim, PoolRelease

    bundle_mod = helpers_bundle()
    work = tempfile.mkdtemp(prefix="zpb-", dir="/tmp")
    root = os.path.join(work, "r")
    runc_root = os.path.join(work, "runc")
    agent = runc_id = None
    try:
        bundle = bundle_mod.make_bundle(os.path.join(work, "b"), ["sleep", "1000000"])
        config = {"node": "bench", "parallel_starts": 2,
                  "pools": {"bb": {"bundle": str(bundle), "warm": args.warm, "max": 400,
                                   "overrides": {"root": {"readonly": False}}}}}
        with open(os.path.join(work, "pools.json"), "w") as f:
            json.dump(config, f)
        log = open(os.path.join(work, "agent.log"), "wb")
        t_start = time.monotonic()
        agent = subprocess.Popen([*zentry, "--root", root, "pool", "serve", "--config", os.path.join(work, "pools.json")],
                                 stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        from zentry.cmd.pool import local_endpoint

        endpoint = local_endpoint(root)
        while not os.path.exists(endpoint[6:]):
            time.sleep(0.05)
        client = Client(endpoint)

        def wait_warm(n: int) -> None:
            while client.status()[endpoint].pools[0]["warm"] < n:
                time.sleep(0.05)

        wait_warm(args.warm)
        print(f"agent up, {args.warm} warm in {time.monotonic() - t_start:.1f}s")

        # --- claim latency from a warm pool
        claim_t, raw_t = [], []
        while len(claim_t) < args.claims:
            held = []
            for _ in range(min(args.warm, args.claims - len(claim_t))):
                t = time.perf_counter()
                held.append(client.claim("bb"))
                claim_t.append(time.perf_counter() - t)
            for sb in held:
                sb.release()
            wait_warm(args.warm)
        node = client.node(endpoint)
        while len(raw_t) < args.claims // 2:
            held = []
            for _ in range(min(args.warm, args.claims // 2 - len(raw_t))):
                t = time.perf_counter()
                reply = node.request(PoolClaim(pool="bb"), 10)
                raw_t.append(time.perf_counter() - t)
                held.append(reply.handle)
            for h in held:
                node.request(PoolRelease(handle=h), 10)
            wait_warm(args.warm)

        # --- exec: pool vs zentry exec vs runc exec, interleaved
        sb = client.claim("bb")
        runc = which("runc")
        zb = bundle_mod.make_bundle(os.path.join(work, "zb"), ["sleep", "1000000"])
        subprocess.run([*zentry, "--root", root, "run", "-d", "--bundle", str(zb), "zpb-zentry"], check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if runc:
            runc_id = "zpb-runc"
            rb = bundle_mod.make_bundle(os.path.join(work, "rb"), ["sleep", "1000000"])
            subprocess.run([runc, "--root", runc_root, "run", "-d", "--bundle", str(rb), runc_id], check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pool_t, zexec_t, runc_t = [], [], []
        for _ in range(args.execs):
            t = time.perf_counter()
            assert sb.exec(["/bin/true"]).exit_status == 0
            pool_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([*zentry, "--root", root, "exec", "zpb-zentry", "/bin/true"], check=True, stdin=subprocess.DEVNULL)
            zexec_t.append(time.perf_counter() - t)
            if runc:
                t = time.perf_counter()
                subprocess.run([runc, "--root", runc_root, "exec", runc_id, "/bin/true"], check=True, stdin=subprocess.DEVNULL)
                runc_t.append(time.perf_counter() - t)

        # --- memory of an idle warm sandbox; the pool's fixed cost (its template)
        import psutil

        status = client.status()[endpoint]
        with open(os.path.join(root, _template_id(root), "state.json")) as f:
            tmpl = json.load(f)
        spawner = psutil.Process(tmpl["pid"])  # the template's init
        pss, charged = [], []
        for child in spawner.children()[:10]:  # sandboxes' inits (one is the claimed one)
            pss.append(pss_kib(child.pid))
            charged.append(_cgroup_memory_kib(child.pid))
        fixed = sum(pss_kib(p) for p in {tmpl.get(k) for k in ("controller_pid", "gofer_pid", "sandbox_pid", "pid")} - {None, 0})
        sb.release()

        # --- sustained claims/s with refill
        wait_warm(args.warm)
        before = status.sandboxes
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.sustain:
            s = client.claim("bb", timeout=120)
            s.release()
            n += 1
        elapsed = time.perf_counter() - t0
        rate = n / elapsed
        # starts the agent made meanwhile: claims beyond the warm stock needed one each
        starts = max(0, n - args.warm)

        print()
        print(f"{'measure':<34} {'median':>9} {'p99':>9}   target")
        print(f"{'claim (Client.claim, warm) ms':<34} {ms(pct(claim_t, .5)):>9} {ms(pct(claim_t, .99)):>9}   <= 5 / <= 20")
        print(f"{'pool.claim round trip ms':<34} {ms(pct(raw_t, .5)):>9} {ms(pct(raw_t, .99)):>9}")
        print(f"{'exec /bin/true: pool ms':<34} {ms(pct(pool_t, .5)):>9} {ms(pct(pool_t, .99)):>9}   <= 10")
        print(f"{'exec /bin/true: zentry exec ms':<34} {ms(pct(zexec_t, .5)):>9} {ms(pct(zexec_t, .99)):>9}")
        if runc_t:
            print(f"{'exec /bin/true: runc exec ms':<34} {ms(pct(runc_t, .5)):>9} {ms(pct(runc_t, .99)):>9}")
        print(f"{'claims/s from warm (burst)':<34} {len(claim_t) / sum(claim_t):>9.1f} {'':>9}   >= 100")
        print(f"{'claims/s sustained (claim+release)':<34} {rate:>9.1f} {'':>9}   >= 100   ({n} in {elapsed:.1f}s; "
              f"~{starts / elapsed:.1f} starts/s after the {args.warm} warm)")
        if pss:
            med = sorted(p + c for p, c in zip(pss, charged))[len(pss) // 2]
            print(f"{'idle warm sandbox MiB':<34} {med / 1024:>9.2f} {'':>9}   <= 20   "
                  f"(init PSS {sorted(pss)[len(pss) // 2]} KiB + cgroup {sorted(charged)[len(charged) // 2]} KiB; "
                  f"{int((16 * 1024 * 1024 - fixed) / med)} fit in 16 GiB)")
            print(f"{'pool fixed cost (template) MiB':<34} {fixed / 1024:>9.1f}")
        print(f"\n{len(claim_t)} claims, {len(raw_t)} raw claims, {args.execs} interleaved exec rounds; sandboxes before the sustain run: {before}")
        return 0
    finally:
        subprocess.run([*zentry, "--root", root, "delete", "-f", "zpb-zentry"], capture_output=True)
        if runc_id:
            subprocess.run(["runc", "--root", runc_root, "delete", "-f", runc_id], capture_output=True)
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(120)
            except subprocess.TimeoutExpired:
                agent.kill()
        shutil.rmtree(work, ignore_errors=True)


def _template_id(root: str) -> str:
    return next(name for name in os.listdir(root) if name.startswith("bb-"))


def _cgroup_memory_kib(pid: int) -> int:
    """What the memory cgroup of ``pid`` is charged (v1 usage_in_bytes), in KiB."""
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.split(":", 2)[2].strip() for line in f if ":memory:" in line)
    with open(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes") as f:
        return int(f.read()) // 1024


if __name__ == "__main__":
    sys.exit(main())
