"""The sentry thread of a real sandbox actor runs under its own filter, and only it
(``sentry/confine.py``): its task is the one with a seccomp filter,
no_new_privs and only a few capabilities, while the actor's other threads,
which fork container inits, keep all of theirs; and the confined sentry
still serves the container.
"""

from __future__ import annotations

import json
import os

import pytest

from zentry.sentry.confine import KEEP_CAPS
from zentry.sentry.kernel import THREAD_NAME

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="zentry create needs root"),
]


def _tasks(pid: int) -> dict[int, dict]:
    """tid -> {comm, Seccomp, Seccomp_filters, NoNewPrivs} for every thread of ``pid``."""
    out = {}
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = {k: v.strip() for k, v in (line.split(":", 1) for line in f if ":" in line)}
        except FileNotFoundError:
            continue  # a thread that just ended
        out[tid] = {"comm": comm, "CapEff": int(status["CapEff"], 16), **{k: status[k] for k in ("Seccomp", "Seccomp_filters", "NoNewPrivs")}}
    return out


def test_the_sentry_thread_alone_is_confined_and_still_serves(zentry, busybox_bundle):
    bundle = busybox_bundle(["sleep", "30"], hostname="confined")
    cid = "conf1"
    r = zentry("create", "--bundle", bundle, cid)
    assert r.returncode == 0, r.stderr
    try:
        with open(os.path.join(zentry.root, cid, "state.json")) as f:
            sandbox = json.load(f)["sandbox_pid"]
        tasks = _tasks(sandbox)
        sentries = {tid: t for tid, t in tasks.items() if t["comm"] == THREAD_NAME.decode()}
        assert len(sentries) == 1, tasks
        (sentry,) = sentries.values()
        assert (sentry["Seccomp"], sentry["Seccomp_filters"], sentry["NoNewPrivs"]) == ("2", "1", "1"), tasks
        others = {tid: t for tid, t in tasks.items() if tid not in sentries}
        assert others and all((t["Seccomp"], t["NoNewPrivs"]) == ("0", "0") for t in others.values()), tasks
        # capabilities: the sentry thread kept only confine.KEEP_CAPS; the others, CAP_SYS_ADMIN (21) among all
        assert sentry["CapEff"] == sum(1 << n for n in KEEP_CAPS.values()), tasks
        assert all(t["CapEff"] & 1 << 21 for t in others.values()), tasks

        assert zentry("start", cid).returncode == 0
        # uname is trapped in every container: the confined sentry answers it (and sysinfo, busybox uptime)
        r = zentry("exec", cid, "sh", "-c", "uname -n; uname -v; uptime")
        assert r.returncode == 0, r.stderr
        nodename, version, uptime = r.stdout.splitlines()
        assert nodename == "confined" and "zentry" in version and "load average" in uptime, r.stdout
        assert _tasks(sandbox)[next(iter(sentries))]["Seccomp"] == "2"  # still alive, still confined
    finally:
        zentry("delete", "-f", cid)
