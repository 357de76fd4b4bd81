"""zentry metrics-server scraped over HTTP while a traced container runs (root)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from helpers.bundle import zentry_command
from test_tap import delete_and_reap, wait_for

pytestmark = pytest.mark.root


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_after_a_container_run(zentry, busybox_bundle):
    err = tempfile.TemporaryFile()
    server = subprocess.Popen([*zentry_command(), "--root", str(zentry.root), "metrics-server", "--listen", "127.0.0.1:0", "--timeout", "120"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def url():
            err.seek(0)
            m = re.search(rb"serving (http://\S+)", err.read())
            return m.group(1).decode() if m else None

        endpoint = wait_for(url, timeout=15)
        assert endpoint, "metrics-server did not start"
        before = scrape(endpoint)
        assert before['zentry_containers{status="running"}'] == 0
        bundle = busybox_bundle(["sh", "-c", "cat /etc/hostname /proc/meminfo /proc/uptime > /dev/null; sleep 30"])
        assert zentry("--strace", "run", "--detach", "--bundle", bundle, "met1").returncode == 0
        assert zentry("exec", "met1", "cat", "/nonexistent").returncode != 0

        def traced():
            m = scrape(endpoint)
            return m if m.get('zentry_syscalls_trapped_total{syscall="openat"}', 0) >= 2 and m.get('zentry_containers{status="running"}') == 1 else None

        m = wait_for(traced, timeout=10, step=0.2)
        assert m, scrape(endpoint)
        assert "zentry_mediated_opens_total" not in m  # every open is the kernel's (the views are a filesystem)
        # the failed open of /nonexistent was continued: its errno is the kernel's, not counted as the sentry's
        assert m.get('zentry_syscall_errors_total{errno="ENOENT",syscall="openat"}', 0) == 0
        assert m['zentry_bus_request_duration_seconds_count{actor="controller",request="container.create"}'] == 1
        assert m['zentry_bus_request_duration_seconds_count{actor="controller",request="container.start"}'] == 1
        assert m['zentry_bus_request_duration_seconds_sum{actor="controller",request="container.create"}'] > 0
        assert m['zentry_events_total{actor="controller",kind="status"}'] >= 2
        assert m['zentry_container_pids{container="met1",sandbox="met1"}'] >= 1
        assert m['zentry_container_memory_bytes{container="met1",sandbox="met1"}'] > 0
        assert 'zentry_container_cpu_seconds_total{container="met1",sandbox="met1"}' in m
        assert m.get('zentry_events_dropped_total{actor="sentry"}', 0) == 0
        assert zentry("kill", "met1", "KILL").returncode == 0
        assert wait_for(lambda: scrape(endpoint).get('zentry_containers{status="stopped"}') == 1, timeout=10)
        after = scrape(endpoint)
        assert after['zentry_process_exits_total{status="137"}'] == 1
        assert 'zentry_container_pids{container="met1",sandbox="met1"}' not in after
    finally:
        delete_and_reap(zentry, "met1")
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(15) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
