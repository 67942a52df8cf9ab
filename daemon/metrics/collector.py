"""Prometheus metrics of the daemon (prometheus-client, HTTP on 127.0.0.1 by default).

Counters the pipeline and the kernel keep as plain integers are read at scrape time: each
owner (the capture, the pipeline's counters, the alert path, the sinks, the process table,
the learner, the model slot, the retrainer) publishes a `stats()` snapshot, and one
collector per owner turns it into families (families.py), so a scrape always shows the
kernel's exact conservation counters. Nothing here reads the service itself. Histograms are
prometheus-client objects fed by the scorer and the alert path. docs/metrics.md lists every
metric; tests/daemon/test_metrics_doc.py compares it with what this module registers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from . import families
from .server import serve_http

SCORE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


DETECTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class Collector:
    """A collector of the families `produce()` yields at each scrape."""

    def __init__(self, produce):
        self.produce = produce

    def describe(self):
        return []

    def collect(self):
        return self.produce()


@dataclass(frozen=True)
class Sources:
    """Where each owner's snapshot comes from, read at every scrape: a callable per owner
    returning its `stats()` (families.py says which snapshot each takes)."""
    capture: Callable[[], object]       # the kernel's counters and the reader's
    counters: Callable[[], object]      # the pipeline's counters
    pipeline: Callable[[], object]      # the pipeline's tables and alert bounds
    alerts: Callable[[], object]        # the alert path
    deliveries: Callable[[], list]      # the sinks
    processes: Callable[[], object]     # the process table
    learner: Callable[[], object]
    model: Callable[[], object]         # the model slot
    retraining: Callable[[], object]
    exe_labels: Callable[[], int]       # the executable labels' evictions


class Metrics:
    """The registry: one collector per owner's snapshot, process CPU/memory and the
    histograms."""

    def __init__(self, sources: Sources):
        disable_created_metrics()  # no *_created series: they only double the cardinality
        self.registry = CollectorRegistry(auto_describe=False)
        self.add(families.build)
        for name in (f.name for f in fields(Sources)):
            self.add(functools.partial(_families_of, getattr(families, name),
                                       getattr(sources, name)))
        ProcessCollector(registry=self.registry)
        self.inference = Histogram("sysdream_inference_seconds", "Time of one inference "
                                   "(the distinct cache misses of a scorer cycle).",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("sysdream_inference_batch_windows", "Windows per "
                                    "inference (distinct cache misses of a scorer cycle).",
                                    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096),
                                    registry=self.registry)
        self.scores = Histogram("sysdream_window_score", "Window scores (mean negative "
                                "log-likelihood per syscall).", buckets=SCORE_BUCKETS,
                                registry=self.registry)
        self.detection = Histogram("sysdream_detection_latency_seconds", "From the newest "
                                   "syscall of an alert's window to the alert.",
                                   buckets=DETECTION_BUCKETS, registry=self.registry)
        self.server = None

    def add(self, produce: Callable[[], Iterable]) -> None:
        """One more collector: `produce()` yields its families at each scrape (a fleet
        agent's, say)."""
        self.registry.register(Collector(produce))

    def observe(self, what: str, value, n: int) -> None:
        if what == "inference":
            self.inference.observe(value)
            self.batch_size.observe(n)
        elif what == "scores":
            _observe_many(self.scores, value)

    def serve(self, address: str, port: int, health=None) -> int:
        """Start /metrics and /healthz (serve_http); returns the port (useful with port
        0); OSError when the port is taken."""
        self.server = serve_http(self.registry, address, port, health)
        return self.server.server_address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _families_of(build, stats):
    return build(stats())


def _observe_many(hist: Histogram, values) -> None:
    """Observe a numpy array into a histogram in bulk: one increment per bucket, not per
    value (prometheus-client 0.26's own observe() does the same per value; pinned)."""
    import numpy as np

    values = np.asarray(values, np.float64)
    if not values.size:
        return
    edges = np.array(hist._upper_bounds)
    idx = np.searchsorted(edges, values, side="left")
    counts = np.bincount(idx, minlength=len(edges))
    for i, n in enumerate(counts.tolist()):
        if n:
            hist._buckets[i].inc(n)
    hist._sum.inc(float(values.sum()))
