"""Parallel lifecycle load: clients at once, each cycling create/start/wait/delete.

    python bench/load.py [--clients 8] [--cycles 1000]

--cycles is the total (split over the clients). Every step is checked
(tests/helpers/load.py); at the end the leak watch of the tests
(tests/helpers/leaks.py) looks for processes, mounts and cgroups naming the
run's private root or its container ids, and for anything left under the
root. Prints cycles, failures, leaks, wall time and cycle latency
(median/p90); exits 1 on any failure or leak. 1000 cycles with 8 clients
take ~5-8 min on a 2-core host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import helpers_bundle, median, p90, zentry_argv  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--cycles", type=int, default=1000, help="in total, over all clients")
    args = ap.parse_args()
    zentry = zentry_argv()
    if zentry is None:
        print("the zentry CLI cannot run", file=sys.stderr)
        return 2
    bundle_mod = helpers_bundle()
    from helpers.leaks import LeakWatch
    from helpers.load import run_load

    workdir = tempfile.mkdtemp(prefix="ld", dir="/tmp")  # short: sockets live under --root
    root = os.path.join(workdir, "r")
    prefix = f"ld{os.getpid()}x"
    watch = LeakWatch(needles=[workdir, prefix])
    watch.private_roots.append(root)
    before = watch.snapshot()
    try:
        bundle = bundle_mod.make_bundle(os.path.join(workdir, "b"), ["/bin/true"])
        per_client = -(-args.cycles // args.clients)
        result = run_load(zentry, root, str(bundle), clients=args.clients, cycles=per_client, prefix=prefix)
        leaks = watch.wait_for_leaks(before)
        report = leaks.report() if leaks else ""
        if leaks:
            watch.cleanup(leaks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"clients {args.clients}  cycles {result.cycles}  failures {len(result.failures)}  leaks {'yes' if report else 0}")
    print(f"wall {result.seconds:.1f} s  ({result.cycles / result.seconds:.1f} cycles/s)  "
          f"cycle median {median(result.cycle_seconds) * 1000:.0f} ms  p90 {p90(result.cycle_seconds) * 1000:.0f} ms")
    for failure in result.failures[:20]:
        print("  failure:", failure)
    if report:
        print("leaked:\n" + report)
    return 1 if result.failures or report else 0


if __name__ == "__main__":
    sys.exit(main())
