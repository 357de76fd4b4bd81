"""Prometheus metrics for every sandbox under a root: what the tap sees, and what state and cgroups say.

Two sources:

- :class:`TapMetrics` is fed every event of a :class:`zentry.bus.tap.Tap`
  that follows the whole root (a thread of ``zentry metrics-server``):
  counters of syscalls served by the sentry (by name; ``Syscall`` events
  flow only while strace is on for a sandbox), refused syscalls, a histogram of bus request latency (``RequestHandled``), events
  seen and events lost (seq gaps and ``Dropped`` reports).
- :class:`StateCollector` is read at scrape time: containers by status
  (``state.json``, a record whose controller is dead counts as stopped) and,
  for containers that have a cgroup, cpu, memory and pids from it.
"""

from __future__ import annotations

import errno as errno_mod
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from zentry.actors.state import CREATED, CREATING, PAUSED, RUNNING, STOPPED, Store, pid_alive
from zentry.bus.log import get_logger
from zentry.bus.tap import Filters, Gap, Tap, TapEvent

log = get_logger("zentry.metrics")

#: The errno a sentry answers for a trapped syscall it has no handler for.
REFUSED_ERRNO = errno_mod.errorcode[errno_mod.ENOSYS]
#: Bus latency buckets (seconds): a ZeroMQ round trip is ~110 us, a create ~100 ms.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STATUSES = (CREATING, CREATED, RUNNING, PAUSED, STOPPED)


class TapMetrics:
    """Counters and histograms fed from the tap's events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.syscalls = Counter("zentry_syscalls_trapped", "Syscalls served by the sentry (seen on the tap while strace is on)", ["syscall"], registry=registry)
        self.syscall_errors = Counter("zentry_syscall_errors", "Trapped syscalls answered with an errno", ["syscall", "errno"], registry=registry)
        self.refused = Counter("zentry_syscalls_refused", "Trapped syscalls refused (no handler: ENOSYS)", ["syscall"], registry=registry)
        self.requests = Histogram("zentry_bus_request_duration_seconds", "Time an actor spent answering a bus request", ["actor", "request"], buckets=LATENCY_BUCKETS, registry=registry)
        self.request_errors = Counter("zentry_bus_request_errors", "Bus requests answered with an error", ["actor", "request", "code"], registry=registry)
        self.events = Counter("zentry_events", "Events seen on the sandboxes' streams", ["actor", "kind"], registry=registry)
        self.dropped = Counter("zentry_events_dropped", "Events lost (seq gaps seen by the tap, and event.dropped reports)", ["actor"], registry=registry)
        self.exits = Counter("zentry_process_exits", "Container processes that exited, by status", ["status"], registry=registry)

    def observe(self, item: TapEvent | Gap) -> None:
        if isinstance(item, Gap):
            self.dropped.labels(item.actor).inc(item.count)
            return
        kind, body = item.kind, item.env.body
        self.events.labels(item.actor, kind).inc()
        if kind == "syscall":
            self.syscalls.labels(body.syscall).inc()
            if body.errno == REFUSED_ERRNO:
                self.refused.labels(body.syscall).inc()
            elif body.errno:
                self.syscall_errors.labels(body.syscall, body.errno).inc()
        elif kind == "request":
            self.requests.labels(item.actor, body.request).observe(body.duration_ns / 1e9)
            if body.error:
                self.request_errors.labels(item.actor, body.request, body.error).inc()
        elif kind == "dropped":
            self.dropped.labels(item.actor).inc(body.count)
        elif kind == "process_exit":
            self.exits.labels(str(body.exit_status)).inc()


class StateCollector:
    """Containers by status and their cgroup usage, read at every scrape."""

    def __init__(self, root: str) -> None:
        self.store = Store(root)

    def collect(self):
        from zentry.actors.sandbox.cgroups import Cgroup

        by_status = GaugeMetricFamily("zentry_containers", "Containers under the root by status", labels=["status"])
        cpu = CounterMetricFamily("zentry_container_cpu_seconds", "CPU time used by a container's cgroup", labels=["container", "sandbox"])
        mem = GaugeMetricFamily("zentry_container_memory_bytes", "Memory used by a container's cgroup", labels=["container", "sandbox"])
        mem_limit = GaugeMetricFamily("zentry_container_memory_limit_bytes", "Memory limit of a container's cgroup (absent when unlimited)", labels=["container", "sandbox"])
        pids = GaugeMetricFamily("zentry_container_pids", "Processes in a container's cgroup", labels=["container", "sandbox"])
        counts = dict.fromkeys(STATUSES, 0)
        for rec in self.store.records():
            status = rec.status
            if status != STOPPED and not pid_alive(rec.controller_pid):
                status = STOPPED
            counts[status] = counts.get(status, 0) + 1
            if status not in (CREATED, RUNNING, PAUSED):
                continue
            labels = [rec.id, rec.sandbox_id]
            try:
                stats = Cgroup.for_container((rec.config.get("linux") or {}).get("cgroupsPath"), rec.id).stats()
            except Exception as err:  # a cgroup going away under us: skip this container
                log.debug("no cgroup stats for %s: %s", rec.id, err)
                continue
            usage = (stats.get("cpu") or {}).get("usage") or {}
            if "total" in usage:
                cpu.add_metric(labels, usage["total"] / 1e9)
            memory = ((stats.get("memory") or {}).get("usage")) or {}
            if "usage" in memory:
                mem.add_metric(labels, memory["usage"])
            limit = memory.get("limit")
            if limit and limit < 2**62:
                mem_limit.add_metric(labels, limit)
            if "pids" in stats:
                pids.add_metric(labels, stats["pids"].get("current", 0))
        for status, n in counts.items():
            by_status.add_metric([status], n)
        return [by_status, cpu, mem, mem_limit, pids]


class MetricsFeeder(threading.Thread):
    """Follows every sandbox of the root and feeds :class:`TapMetrics` until stopped."""

    def __init__(self, root: str, metrics: TapMetrics) -> None:
        super().__init__(name="zentry-metrics-tap", daemon=True)
        self.root = root
        self.metrics = metrics
        self._halt = threading.Event()
        self._ready = threading.Event()
        self.tap: Tap | None = None

    def run(self) -> None:
        # backfill: a container that lived between two scans still counts
        with Tap(root=self.root, filters=Filters()) as tap:
            self.tap = tap
            self._ready.set()
            while not self._halt.is_set():
                for item in tap.poll(200):
                    self.metrics.observe(item)

    def wait_ready(self, timeout: float = 5.0) -> None:
        self._ready.wait(timeout)

    def stop(self) -> None:
        self._halt.set()


def make_registry(root: str) -> tuple[CollectorRegistry, TapMetrics]:
    registry = CollectorRegistry()
    metrics = TapMetrics(registry)
    registry.register(StateCollector(root))
    return registry, metrics
