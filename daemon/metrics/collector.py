"""Prometheus metrics of the daemon (prometheus-client, HTTP on 127.0.0.1 by default).

Counters the pipeline and the kernel keep as plain integers are read at scrape time: each
owner (the capture, the pipeline's counters, the alert path, the sinks, the process table,
the learner, the model slot, the retrainer) publishes a `stats()` snapshot, and one
collector per owner turns it into families (families.py), so a scrape always shows the
kernel's exact conservation counters. Nothing here reads the service itself. Histograms are
fed in bulk by the scorer and the alert path and exposed by their own collectors
(BulkHistogram). docs/metrics.md lists every
metric; tests/daemon/test_metrics_doc.py compares it with what this module registers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

import numpy as np
from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import families
from .server import serve_http
from .webconfig import tls_context

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
    evictions: Callable[[], dict]       # state dropped to stay bounded, by what
    behaviour: Callable[[], dict]       # the behaviour profiles


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
        self.inference = BulkHistogram("sysdream_inference_seconds", "Time of one "
                                       "inference (the distinct cache misses of a scorer "
                                       "cycle).", LATENCY_BUCKETS)
        self.batch_size = BulkHistogram("sysdream_inference_batch_windows", "Windows per "
                                        "inference (distinct cache misses of a scorer "
                                        "cycle).", (1, 4, 16, 64, 128, 256, 512, 1024, 4096))
        self.scores = BulkHistogram("sysdream_window_score", "Window scores (mean negative "
                                    "log-likelihood per syscall).", SCORE_BUCKETS)
        self.detection = BulkHistogram("sysdream_detection_latency_seconds", "From the "
                                       "newest syscall of an alert's window to the alert.",
                                       DETECTION_BUCKETS)
        for h in (self.inference, self.batch_size, self.scores, self.detection):
            self.registry.register(h)
        self.server = None
        self.add(lambda: _endpoint_families(self.server))

    def add(self, produce: Callable[[], Iterable]) -> None:
        """One more collector: `produce()` yields its families at each scrape (a fleet
        agent's, say)."""
        self.registry.register(Collector(produce))

    def observe(self, what: str, value, n: int) -> None:
        if what == "inference":
            self.inference.observe(value)
            self.batch_size.observe(n)
        elif what == "scores":
            self.scores.observe_many(value)

    def serve(self, address: str, port: int, health=None, web_config: str = "") -> int:
        """Start /metrics and /healthz (serve_http), over TLS when `web_config` names a
        Prometheus web configuration file; returns the port (useful with port 0); OSError
        when the port is taken, ConfigError (exit 12) for a bad web configuration."""
        tls = tls_context(web_config) if web_config else None
        self.server = serve_http(self.registry, address, port, health, tls)
        return 0 if isinstance(self.server.server_address, str) else \
            self.server.server_address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _endpoint_families(server):
    """What the endpoint itself turned away: a full queue of waiting requests (someone
    holding connections open), a failed or stalled TLS handshake."""
    c = CounterMetricFamily("sysdream_metrics_connections_refused", "Connections to "
                            "the metrics endpoint closed unserved: its queue of waiting "
                            "requests was full, or the TLS handshake failed or stalled.",
                            labels=["reason"])
    c.add_metric(["queue_full"], getattr(server, "refused", 0))
    c.add_metric(["tls"], getattr(server, "tls_refused", 0))
    yield c


def _families_of(build, stats):
    return build(stats())


class BulkHistogram:
    """A histogram that takes a whole array of observations in one step (a scorer cycle
    scores thousands of windows), exposed through prometheus-client's public collector
    API (HistogramMetricFamily) rather than by writing a Histogram's private fields."""

    def __init__(self, name: str, doc: str, buckets: tuple):
        self.name, self.doc = name, doc
        self.edges = np.array([*buckets, float("inf")], np.float64)
        self.counts = np.zeros(len(self.edges), np.int64)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        self.observe_many([value])

    def observe_many(self, values) -> None:
        values = np.asarray(values, np.float64).ravel()
        values = values[~np.isnan(values)]
        if not values.size:
            return
        idx = np.searchsorted(self.edges, values, side="left")    # le: value <= edge
        add = np.bincount(idx, minlength=len(self.edges))[:len(self.edges)]
        with self._lock:
            self.counts += add
            self.sum += float(values.sum())

    def describe(self):
        return []

    def collect(self):
        with self._lock:
            cumulative, total = np.cumsum(self.counts).tolist(), self.sum
        buckets = [(("+Inf" if e == float("inf") else floatToGoString(e)), n)
                   for e, n in zip(self.edges.tolist(), cumulative, strict=True)]
        yield HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)
