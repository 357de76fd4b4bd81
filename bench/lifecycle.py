"""Container lifecycle cost of zentry against runc and crun, in one interleaved run.

    python bench/lifecycle.py [--runs N] [--no-rss] [--budget SECONDS]

Every runtime gets its own private --root under one short temp dir and runs
the same busybox bundle (tests/helpers/bundle.py, config from `zentry spec`,
process ["/bin/true"], ociVersion set to 1.0.2 so crun 1.8.1 accepts it).
For i in range(N), for rt in (zentry, runc, crun), it measures:

  run            `RT --root R run --bundle B ID`, wall time fork -> reaped
  c+s+poll+d     `create`, `start`, `state` every 10 ms until "stopped", `delete`
  c+s+wait+d     zentry only: `create`, `start`, `wait`, `delete`
  (per command)  the same steps one by one (create, start, one `state`, delete)
  peak RSS       a separate `run` sampled every ~2 ms: the peak of the summed RSS
                 (and PSS) of the runtime's whole process tree (zentry's actors
                 are forked children of the CLI); plus wait4's ru_maxrss (the
                 largest single process: what runc/crun are usually quoted by)
  CLI floor      `python -S -c pass`, `python -c pass` (zentry's interpreter),
                 `zentry --version`, `zentry list` on an empty root,
                 `python -c "import zentry.cmd.common"` (what every container
                 command imports), `runc list`, and zentry via its PATH shim
                 (pyenv) when that differs from the script beside the interpreter

A runtime that cannot run the bundle (crun on a hybrid-cgroup host: "cgroups
in hybrid mode not supported") is reported as failed with its error. Every
container is deleted (-f) and the temp dir removed, also on Ctrl-C.
Median and p90 (nearest rank) in ms; ratios are of medians. With the default
15 runs it takes ~2-2.5 min on a 2-core host; it stops early (and says so)
rather than pass --budget (170 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    Runner,
    fmt_ms,
    fmt_ratio,
    helpers_bundle,
    median,
    p90,
    which,
    zentry_argv,
)

RUNTIMES = ("zentry", "runc", "crun")
POLL = 0.010


class Runtime:
    def __init__(self, name: str, argv: list[str] | None, root: str) -> None:
        self.name = name
        self.argv = argv
        self.root = root
        self.error = "" if argv else "not installed"
        self.live: set[str] = set()  # ids that may exist: delete -f at the end

    @property
    def ok(self) -> bool:
        return not self.error

    def cmd(self, *args: str) -> list[str]:
        return [*self.argv, "--root", self.root, *args]


class Bench:
    def __init__(self, workdir: str, runs: int, rss: bool, budget: float) -> None:
        self.dir = workdir
        self.runs = runs
        self.budget = budget
        self.done = 0
        self.rss = rss
        self.runner = Runner(workdir)
        self.bundle = os.path.join(workdir, "b")
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.mem: dict[tuple[str, str], list[float]] = {}
        self.failures: dict[tuple[str, str], str] = {}
        self.polls: dict[str, list[int]] = {}
        self.seq = 0
        za = zentry_argv()
        self.rts = {
            "zentry": Runtime("zentry", za, os.path.join(workdir, "z")),
            "runc": Runtime("runc", [which("runc")] if which("runc") else None, os.path.join(workdir, "r")),
            "crun": Runtime("crun", [which("crun")] if which("crun") else None, os.path.join(workdir, "c")),
        }
        self.python = None
        if za:
            with open(za[0], "rb") as f:  # the console script's interpreter
                first = f.readline().decode().strip()
            # "#!/path/python3 -IS" for the fast launcher (cmd/launcher.py)
            self.python = first[2:].split()[0] if first.startswith("#!") else sys.executable
        # The pyenv shim (a bash script that execs `pyenv exec zentry`) is what
        # an engine finds on PATH when the runtime is configured as "zentry".
        shims = [which("zentry"), os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "shims", "zentry")]
        self.shim = next((s for s in shims if s and os.access(s, os.X_OK) and za
                          and os.path.realpath(s) != os.path.realpath(za[0])), None)

    # --- bookkeeping -------------------------------------------------------------
    def add(self, rt: str, row: str, seconds: float) -> None:
        self.samples.setdefault((rt, row), []).append(seconds)

    def new_id(self, rt: Runtime, tag: str) -> str:
        self.seq += 1
        cid = f"{tag}{self.seq}"
        rt.live.add(cid)
        return cid

    def must(self, rt: Runtime, row: str, res) -> bool:
        if not res.ok:
            self.failures.setdefault((rt.name, row), res.why())
        return res.ok

    # --- setup -------------------------------------------------------------------
    def build_bundle(self) -> None:
        bundle = helpers_bundle()
        bundle.make_bundle(self.bundle, ["/bin/true"])
        path = os.path.join(self.bundle, "config.json")
        with open(path) as f:
            config = json.load(f)
        # crun 1.8.1 refuses ociVersion 1.2.0 ("unknown version specified"),
        # which `zentry spec` writes; 1.0.2 is what runc 1.1 writes.
        config["ociVersion"] = "1.0.2"
        with open(path, "w") as f:
            json.dump(config, f, indent=2)

    def preflight(self) -> None:
        """One `run` per runtime (also a warm-up); a failure marks it failed."""
        for rt in self.rts.values():
            if not rt.ok:
                continue
            cid = self.new_id(rt, "pf")
            res = self.runner.run(rt.cmd("run", "--bundle", self.bundle, cid), cwd=self.bundle)
            if not res.ok:
                rt.error = res.why()
            self.delete_quietly(rt, cid)

    def delete_quietly(self, rt: Runtime, cid: str) -> None:
        self.runner.run(rt.cmd("delete", "-f", cid), timeout=30)
        if not os.path.exists(os.path.join(rt.root, cid)):
            rt.live.discard(cid)

    # --- scenarios -----------------------------------------------------------------
    def scenario_run(self, rt: Runtime) -> None:
        cid = self.new_id(rt, "r")
        res = self.runner.run(rt.cmd("run", "--bundle", self.bundle, cid), cwd=self.bundle)
        if self.must(rt, "run", res):
            self.add(rt.name, "run", res.seconds)
            self.mem.setdefault((rt.name, "maxrss"), []).append(res.maxrss_kib)
            rt.live.discard(cid)
        else:
            self.delete_quietly(rt, cid)

    def scenario_lifecycle(self, rt: Runtime, use_wait: bool) -> None:
        row = "c+s+wait+d" if use_wait else "c+s+poll+d"
        cid = self.new_id(rt, "w" if use_wait else "l")
        t0 = time.perf_counter()
        steps = {}
        res = self.runner.run(rt.cmd("create", "--bundle", self.bundle, cid), cwd=self.bundle)
        steps["create"] = res.seconds
        ok = self.must(rt, row, res)
        if ok:
            res = self.runner.run(rt.cmd("start", cid))
            steps["start"] = res.seconds
            ok = self.must(rt, row, res)
        if ok and use_wait:
            res = self.runner.run(rt.cmd("wait", cid))
            steps["wait"] = res.seconds
            ok = self.must(rt, row, res)
        elif ok:
            polls = 0
            deadline = time.perf_counter() + 30
            while True:
                res = self.runner.run(rt.cmd("state", cid))
                polls += 1
                if polls == 1:
                    steps["state"] = res.seconds
                if not self.must(rt, row, res):
                    ok = False
                    break
                try:
                    status = json.loads(res.out).get("status")
                except ValueError:
                    status = None
                if status == "stopped":
                    break
                if time.perf_counter() > deadline:
                    self.failures.setdefault((rt.name, row), "container not stopped within 30 s")
                    ok = False
                    break
                time.sleep(POLL)
            self.polls.setdefault(rt.name, []).append(polls)
        if ok:
            res = self.runner.run(rt.cmd("delete", cid))
            steps["delete"] = res.seconds
            ok = self.must(rt, row, res)
        t1 = time.perf_counter()
        if ok:
            rt.live.discard(cid)
            self.add(rt.name, row, t1 - t0)
            if not use_wait:
                for step, secs in steps.items():
                    self.add(rt.name, step, secs)
            else:
                self.add(rt.name, "wait", steps["wait"])
        else:
            self.delete_quietly(rt, cid)

    def scenario_rss(self, rt: Runtime) -> None:
        cid = self.new_id(rt, "m")
        res, peak = self.runner.run_sampled(rt.cmd("run", "--bundle", self.bundle, cid))
        if self.must(rt, "rss", res):
            rt.live.discard(cid)
            self.mem.setdefault((rt.name, "tree_rss"), []).append(peak.rss_kib)
            self.mem.setdefault((rt.name, "tree_pss"), []).append(peak.pss_kib)
            self.mem.setdefault((rt.name, "procs"), []).append(peak.max_procs)
            self.mem.setdefault((rt.name, "samples"), []).append(peak.samples)
        else:
            self.delete_quietly(rt, cid)

    def startup(self) -> None:
        z = self.rts["zentry"]
        empty = os.path.join(self.dir, "e")
        os.makedirs(empty, exist_ok=True)
        rows = []
        if self.python:
            rows += [
                ("python -S -c pass", [self.python, "-S", "-c", "pass"]),
                ("python -IS -c pass (the launcher's start)", [self.python, "-IS", "-c", "pass"]),
                ("python -c pass", [self.python, "-c", "pass"]),
                ("python -c 'import zentry.cmd.common'", [self.python, "-c", "import zentry.cmd.common"]),
            ]
        if z.argv:
            rows += [("zentry --version", [*z.argv, "--version"]),
                     ("zentry list (empty root)", [*z.argv, "--root", empty, "list"])]
        if self.shim:
            rows.append(("zentry --version via PATH shim", [self.shim, "--version"]))
        if self.rts["runc"].argv:
            rows.append(("runc list (empty root)", [*self.rts["runc"].argv, "--root", empty, "list"]))
        if self.rts["crun"].argv:
            rows.append(("crun list (empty root)", [*self.rts["crun"].argv, "--root", empty, "list"]))
        for name, argv in rows:
            res = self.runner.run(argv)
            if res.ok:
                self.add("floor", name, res.seconds)
            else:
                self.failures.setdefault(("floor", name), res.why())

    # --- the run -------------------------------------------------------------------
    def main(self) -> None:
        t0 = time.perf_counter()
        self.build_bundle()
        self.preflight()
        live = [rt for rt in self.rts.values() if rt.ok]
        for i in range(self.runs):
            spent = time.perf_counter() - t0
            if i and spent + spent / i > self.budget:
                print(f"  stopping after {i} iterations: the next would pass the {self.budget:g} s budget", file=sys.stderr)
                break
            for rt in live:
                self.scenario_run(rt)
            for rt in live:
                self.scenario_lifecycle(rt, use_wait=False)
            if self.rts["zentry"].ok:
                self.scenario_lifecycle(self.rts["zentry"], use_wait=True)
            if self.rss:
                for rt in live:
                    self.scenario_rss(rt)
            self.startup()
            self.done = i + 1
            print(f"  iteration {i + 1}/{self.runs} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        self.elapsed = time.perf_counter() - t0

    def cleanup(self) -> None:
        for rt in self.rts.values():
            if not rt.argv:
                continue
            ids = set(rt.live)
            try:
                ids.update(e for e in os.listdir(rt.root) if not e.startswith("."))
            except OSError:
                pass
            for cid in sorted(ids):
                self.runner.run(rt.cmd("delete", "-f", cid), timeout=30)

    # --- report ----------------------------------------------------------------------
    def report(self) -> None:
        def cell(rt: str, row: str) -> str:
            r = self.rts.get(rt)
            if r is not None and not r.ok:
                return "failed"
            xs = self.samples.get((rt, row))
            if not xs:
                return "failed" if (rt, row) in self.failures else "n/a"
            return f"{fmt_ms(median(xs))} / {fmt_ms(p90(xs))}"

        def ratio(a: str, b: str, row: str) -> str:
            xa, xb = self.samples.get((a, row)), self.samples.get((b, row))
            if not xa or not xb or not self.rts[b].ok:
                return "-"
            return fmt_ratio(median(xa), median(xb))

        rows = [
            ("run -b B (/bin/true)", "run"),
            ("create+start+poll state+delete", "c+s+poll+d"),
            ("create+start+wait+delete", "c+s+wait+d"),
            ("  create", "create"),
            ("  start", "start"),
            ("  state (one call)", "state"),
            ("  wait", "wait"),
            ("  delete", "delete"),
        ]
        w = 33
        head = f"{'scenario (median / p90 ms)':<{w}} | {'zentry':>15} | {'runc':>13} | {'crun':>13} | {'zentry/runc':>11} | {'zentry/crun':>11}"
        print()
        print(head)
        print("-" * len(head))
        for label, row in rows:
            print(f"{label:<{w}} | {cell('zentry', row):>15} | {cell('runc', row):>13} | {cell('crun', row):>13} | "
                  f"{ratio('zentry', 'runc', row):>11} | {ratio('zentry', 'crun', row):>11}")

        def mcell(rt: str, key: str) -> str:
            r = self.rts[rt]
            if not r.ok:
                return "failed"
            xs = self.mem.get((rt, key))
            return f"{median(xs) / 1024:.1f} / {p90(xs) / 1024:.1f}" if xs else "n/a"

        def mratio(a: str, b: str, key: str) -> str:
            xa, xb = self.mem.get((a, key)), self.mem.get((b, key))
            if not xa or not xb or not self.rts[b].ok:
                return "-"
            return fmt_ratio(median(xa), median(xb))

        mrows = [("peak RSS of run, tree sum (MiB)", "tree_rss"),
                 ("peak PSS of run, tree sum (MiB)", "tree_pss"),
                 ("ru_maxrss of run (MiB)", "maxrss")]
        if not self.rss:
            mrows = mrows[2:]
        for label, key in mrows:
            print(f"{label:<{w}} | {mcell('zentry', key):>15} | {mcell('runc', key):>13} | {mcell('crun', key):>13} | "
                  f"{mratio('zentry', 'runc', key):>11} | {mratio('zentry', 'crun', key):>11}")
        if self.rss:
            procs = {rt: int(median(self.mem[(rt, 'procs')])) for rt in RUNTIMES if self.mem.get((rt, "procs"))}
            samples = {rt: int(median(self.mem[(rt, 'samples')])) for rt in RUNTIMES if self.mem.get((rt, "samples"))}
            print(f"  (tree = the runtime process and every live descendant; max processes seen {procs}, samples per run {samples})")

        print()
        print(f"{'CLI / interpreter floor':<{w + 8}} | {'median ms':>9} | {'p90 ms':>8}")
        print("-" * (w + 32))
        for (rt, name), xs in self.samples.items():
            if rt == "floor":
                print(f"{name:<{w + 8}} | {fmt_ms(median(xs)):>9} | {fmt_ms(p90(xs)):>8}")

        print()
        for name, rt in self.rts.items():
            if not rt.ok:
                print(f"{name}: FAILED: {rt.error}")
        for (rt, row), why in sorted(self.failures.items()):
            if self.rts.get(rt) is None or self.rts[rt].ok:
                print(f"{rt} {row}: some runs failed: {why}")
        for name, ps in self.polls.items():
            print(f"{name}: `state` calls per poll loop: median {median(ps):g}, max {max(ps)}")
        z = self.rts["zentry"]
        print(f"zentry command: {' '.join(z.argv) if z.argv else 'not found'}")
        print(f"runs: {self.done} of {self.runs}, interleaved zentry/runc/crun; elapsed {getattr(self, 'elapsed', 0):.0f} s; "
              f"load average {os.getloadavg()[0]:.2f} (2-core host, shared: expect noise)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--budget", type=float, default=170.0, help="stop iterating when the next iteration would pass this many seconds")
    ap.add_argument("--no-rss", dest="rss", action="store_false", help="skip the sampled peak-RSS runs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/lifecycle.py needs root (runtimes mount and create cgroups)", file=sys.stderr)
        return 2
    workdir = tempfile.mkdtemp(prefix="lc", dir="/tmp")  # short: runtimes put sockets under --root
    bench = Bench(workdir, args.runs, args.rss, args.budget)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.main()
    except KeyboardInterrupt:
        print("interrupted: cleaning up, partial results below", file=sys.stderr)
    finally:
        bench.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    bench.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
