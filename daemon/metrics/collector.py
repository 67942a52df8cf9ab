"""Prometheus metrics of the daemon (prometheus-client, HTTP on 127.0.0.1 by default).

Counters the pipeline and the kernel keep as plain integers are read at scrape time by one
collector, so a scrape always shows the kernel's exact conservation counters. Histograms are
prometheus-client objects fed by the scorer and the alert path. docs/metrics.md lists every
metric; tests/daemon/test_metrics_doc.py compares it with what this module registers.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from ..context.printable import printable
from ..version import build_info
from .server import serve_http

LOSS_REASONS = {"lost_syscalls": "ring_buffer_full", "lost_nostorage": "no_thread_storage"}


SCORE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


DETECTION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


def _by_label(name: str, doc: str, label: str, values: dict[str, int], gauge: bool = False):
    fam = (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, labels=[label])
    for k, v in sorted(dict(values).items()):
        fam.add_metric([k], v)
    return fam


class Collector:
    """A collector of the families `produce()` yields at each scrape."""

    def __init__(self, produce):
        self.produce = produce

    def describe(self):
        return []

    def collect(self):
        return self.produce()


class ServiceCollector(Collector):
    """Everything read at scrape time from the running service and the owners it holds:
    its learner (phase, progress, baseline) and its model slot (model, reloads, lineage
    novelty counts)."""

    def __init__(self, service):
        super().__init__(self.families)
        self.s = service

    def families(self):
        s = self.s
        learner = s.learner
        k = dict(s.kernel_counters)
        yield InfoMetricFamily("sysdream_build", "The running sysdream and what it runs on.",
                               value=build_info())
        yield CounterMetricFamily("sysdream_syscalls_seen", "Syscall entries the capture "
                                  "program saw (every process).", value=k.get("seen", 0))
        yield CounterMetricFamily("sysdream_syscalls_filtered", "Syscalls of processes the "
                                  "filters exclude (not traced).", value=k.get("filtered", 0))
        yield CounterMetricFamily("sysdream_syscalls_traced", "Syscalls traced: delivered "
                                  "+ lost (ring buffer full) + pending, exactly.",
                                  value=k.get("traced", 0))
        yield GaugeMetricFamily("sysdream_syscalls_pending", "Traced syscalls waiting in "
                                "the kernel's partial chunks (sent within flush_age_s).",
                                value=k.get("pending", 0))
        yield CounterMetricFamily("sysdream_syscalls_delivered", "Syscalls the kernel "
                                  "delivered in ring-buffer records.",
                                  value=k.get("emitted_syscalls", 0))
        lost = CounterMetricFamily("sysdream_syscalls_lost", "Traced syscalls lost, by "
                                   "reason.", labels=["reason"])
        for field, reason in LOSS_REASONS.items():
            lost.add_metric([reason], k.get(field, 0))
        yield lost
        yield CounterMetricFamily("sysdream_records", "Ring-buffer records delivered "
                                  "(one per chunk of syscalls).",
                                  value=k.get("emitted_records", 0))
        yield CounterMetricFamily("sysdream_records_lost", "Records lost to a full ring "
                                  "buffer.", value=k.get("lost_records", 0))
        yield CounterMetricFamily("sysdream_syscalls_read", "Syscalls the daemon read from "
                                  "the ring buffer.", value=s.syscalls_read)
        c = s.counters
        yield GaugeMetricFamily("sysdream_threads_tracked", "Threads with a stream in the "
                                "thread table.", value=s.threads_tracked())
        yield CounterMetricFamily("sysdream_threads_evicted", "Threads forgotten because "
                                  "the thread table was full.", value=c.threads_evicted)
        yield CounterMetricFamily("sysdream_records_refused", "Records that claim more "
                                  "syscalls than a chunk holds (never from a kernel): "
                                  "dropped.", value=c.records_refused)
        yield CounterMetricFamily("sysdream_record_gaps", "Gaps in a thread's record "
                                  "sequence (records lost); windows restart after each.",
                                  value=c.record_gaps)
        yield CounterMetricFamily("sysdream_windows_cut", "Windows cut from thread streams.",
                                  value=c.windows_cut)
        yield CounterMetricFamily("sysdream_windows_scored", "Windows scored by the model "
                                  "(cache misses).", value=c.windows_scored)
        yield CounterMetricFamily("sysdream_windows_cached", "Windows whose score came from "
                                  "the known-window cache.", value=c.windows_cached)
        yield _by_label("sysdream_windows_shed", "Windows dropped unscored, by reason "
                        "(queue_full, model_change, shutdown).", "reason",
                        {"queue_full": 0, "model_change": 0, "shutdown": 0,
                         **c.windows_shed})
        looked = c.windows_scored + c.windows_cached
        yield GaugeMetricFamily("sysdream_cache_hit_ratio", "Share of windows answered by "
                                "the known-window cache since start.",
                                value=c.windows_cached / looked if looked else 0.0)
        yield GaugeMetricFamily("sysdream_cache_windows", "Windows in the known-window "
                                "cache.", value=s.cache_size())
        yield GaugeMetricFamily("sysdream_queue_windows", "Windows waiting for inference.",
                                value=s.queue.size if s.queue else 0)
        yield GaugeMetricFamily("sysdream_queue_capacity_windows", "Most windows that may "
                                "wait before shedding.", value=s.queue.capacity if s.queue
                                else 0)
        yield _by_label("sysdream_anomalous_windows", "Windows above the bound, by "
                        "executable.", "exe", c.anomalous.snapshot())
        yield _by_label("sysdream_alerts", "Alerts raised, by executable.", "exe",
                        s.alerting.sent.snapshot())
        yield _by_label("sysdream_alerts_suppressed", "Alerts held back by the rate "
                        "limits (per fingerprint, and the ceiling per minute), by "
                        "executable.", "exe", s.alerting.suppressed.snapshot())
        yield _by_label("sysdream_alerts_allowed", "Alerts not sent because an operator's "
                        "allow entry matched them (sysdream allow), by executable.", "exe",
                        s.alerting.allowed.snapshot())
        a = s.alerting
        yield _by_label("sysdream_incidents_opened", "Incidents opened, by severity (low "
                        "ones go to journald alone).", "severity", a.incidents.opened)
        yield _by_label("sysdream_incident_alerts", "Incident alerts sent (an opening or a "
                        "rise in severity), by severity.", "severity", a.by_severity)
        yield GaugeMetricFamily("sysdream_incidents_open", "Incidents open (not closed yet).",
                                value=len(a.incidents.open))
        prof = s.behaviour.profiles.counts() if s.behaviour is not None else {}
        yield GaugeMetricFamily("sysdream_profiles_programs", "Programs with a behaviour "
                                "profile.", value=prof.get("programs", 0))
        yield GaugeMetricFamily("sysdream_profiles_settled", "Programs whose behaviour "
                                "profile has settled.", value=prof.get("settled", 0))
        yield CounterMetricFamily("sysdream_acts", "Act records the behaviour profiles "
                                  "took.", value=s.behaviour.watch.acts
                                  if s.behaviour is not None else 0)
        yield CounterMetricFamily("sysdream_acts_lost", "Act records lost to a full acts "
                                  "ring buffer.", value=k.get("act_lost", 0))
        yield CounterMetricFamily("sysdream_exe_labels_evicted", "Executables whose metric "
                                  "label went to one that raised an alert.",
                                  value=s.labels.evictions)
        yield _by_label("sysdream_windows_set_aside", "Windows above the bound not taken "
                        "as evidence, by reason (own_alert_delivery: journald handling "
                        "this daemon's alerts).", "reason",
                        {"own_alert_delivery": 0, **c.set_aside})
        yield _by_label("sysdream_lineage_events", "Lineage novelty events (an exec, a "
                        "syscall or a run of 6-syscall sequences the learnt profile never "
                        "saw), by kind.", "kind",
                        {k: 0 for k in ("new_program", "new_edge", "fileless_exec",
                                        "new_syscall", "new_sequence")}
                        | dict(s.slot.lineage_events))
        m = s.slot.model
        held = (m.lineage.profile.heldout or {}) if m is not None and \
            m.lineage is not None else {}
        yield GaugeMetricFamily("sysdream_lineage_heldout_evidence_per_hour", "Evidence (in "
                                "windows above the bound) that lineage novelty gave per hour "
                                "in the held-out last quarter of the baseline (NaN: no "
                                "lineage profile).",
                                value=held.get("weight_per_hour", float("nan")))
        replay = m.det.training.get("heldout_alerts") if m is not None else None
        yield GaugeMetricFamily("sysdream_heldout_alerts_per_hour", "Alerts an hour the "
                                "alert rule raised when replayed on the baseline's held-out "
                                "last quarter at training time (NaN: not replayed).",
                                value=float(replay["per_hour"]) if isinstance(replay, dict)
                                and isinstance(replay.get("per_hour"), (int, float))
                                else float("nan"))
        alert = m.alert if m is not None else None
        yield GaugeMetricFamily("sysdream_expected_false_alerts_per_hour", "False alerts "
                                "an hour the model's alert bound, at the configured "
                                "confidence, is expected to raise on activity like the "
                                "baseline's held-out part (NaN: no alert bound).",
                                value=alert.expected_per_hour() if alert is not None
                                else float("nan"))
        yield GaugeMetricFamily("sysdream_alert_bound", "What a process's evidence (the "
                                "weight of its last windows) must reach to alert, for a "
                                "program without a bound of its own.",
                                value=s.scorer.evidence.k if s.scorer is not None
                                else float("nan"))
        own = GaugeMetricFamily("sysdream_program_alert_bound", "The alert bound of each "
                                "program with one of its own.", labels=["program"])
        for prog, b in sorted((s.scorer.evidence.bounds if s.scorer else {}).items()):
            own.add_metric([printable(prog)], b)
        yield own
        p = s.processes
        yield GaugeMetricFamily("sysdream_processes_tracked", "Processes in the process "
                                "table.", value=len(p))
        yield CounterMetricFamily("sysdream_processes_evicted", "Processes forgotten "
                                  "because the process table was full.", value=p.evicted)
        yield CounterMetricFamily("sysdream_processes_from_procfs", "Processes the kernel "
                                  "had not described, read from /proc instead.",
                                  value=p.from_procfs)
        yield CounterMetricFamily("sysdream_context_records", "Process context records "
                                  "the kernel emitted.", value=k.get("ctx_records", 0))
        yield CounterMetricFamily("sysdream_context_records_lost", "Process context "
                                  "records lost to a full context ring buffer.",
                                  value=k.get("ctx_lost", 0))
        yield CounterMetricFamily("sysdream_context_records_unreadable", "Process context "
                                  "records the process table could not use.",
                                  value=p.unreadable)
        journald = s.sink.get("journald")
        yield CounterMetricFamily("sysdream_journald_failures", "Alerts and events that "
                                  "could not reach journald (written to stderr instead).",
                                  value=journald.counts["failed"] if journald else 0)
        sent = CounterMetricFamily("sysdream_alert_deliveries", "Alerts and events handed "
                                   "to each output, by result (sent, failed after its "
                                   "retries, dropped from a full queue, retried).",
                                   labels=["sink", "result"])
        waiting = GaugeMetricFamily("sysdream_alert_queue", "Alerts waiting for a network "
                                    "output (syslog, webhook).", labels=["sink"])
        for sink in s.sink.sinks:
            for result in ("sent", "failed", "dropped", "retried"):
                sent.add_metric([sink.name, result], sink.counts[result])
            waiting.add_metric([sink.name], sink.pending())
        yield sent
        yield waiting
        phase = GaugeMetricFamily("sysdream_phase", "1 for the daemon's current phase.",
                                  labels=["phase"])
        for name in ("learning", "training", "detecting"):
            phase.add_metric([name], 1.0 if learner.phase == name else 0.0)
        yield phase
        yield GaugeMetricFamily("sysdream_learning_progress_ratio", "Progress of learning "
                                "this host (0-1): recording the baseline, then training.",
                                value=learner.progress)
        yield CounterMetricFamily("sysdream_learning_syscalls", "Syscalls recorded into "
                                  "the learning baseline.", value=learner.baseline_syscalls)
        yield CounterMetricFamily("sysdream_state_write_errors", "Writes the state "
                                  "directory refused (full, read-only): the baseline so far "
                                  "is kept, capture goes on.", value=learner.write_errors)
        yield _by_label("sysdream_model_reloads", "Model loads after start, by result.",
                        "result", {"ok": 0, "failed": 0, **s.slot.reloads})
        r = s.retrainer
        yield _by_label("sysdream_retrainings", "Scheduled retrainings, by outcome: the "
                        "candidate swapped in, rejected after its shadow, or failed.",
                        "outcome", {"swapped": 0, "rejected": 0, "failed": 0, **r.outcomes})
        state = GaugeMetricFamily("sysdream_retraining_state", "1 for where scheduled "
                                  "retraining stands.", labels=["state"])
        for name in ("off", "waiting", "recording", "training", "shadow"):
            state.add_metric([name], 1.0 if r.state == name else 0.0)
        yield state
        yield GaugeMetricFamily("sysdream_retraining_next_timestamp_seconds", "When the "
                                "next candidate trains (Unix time; 0 when off).",
                                value=r.next_at if r.state != "off" else 0.0)
        info = InfoMetricFamily("sysdream_model", "The model in use.")
        gauges = []
        if m is not None:
            t = m.det.training or {}
            info.add_metric([], {"model_id": m.model_id, "arch": m.det.cfg.arch,
                                 "task": m.task, "window": str(m.p),
                                 "trained_at": str(t.get("trained_at", ""))})
            gauges = [("sysdream_model_vocabulary_size", "Syscall names the model knows "
                       "(with the padding and unknown tokens).", len(m.det.vocab)),
                      ("sysdream_model_bound", "The alarm bound (mean NLL per syscall).",
                       m.bound.bound),
                      ("sysdream_model_confidence", "Confidence of the interval whose upper "
                       "end is the bound.", m.bound.confidence)]
        yield info
        for name, doc, v in gauges:
            yield GaugeMetricFamily(name, doc, value=v)
        runs = CounterMetricFamily("sysdream_bpf_program_runs", "BPF program runs (counted "
                                   "by the kernel while kernel.bpf_stats_enabled=1).",
                                   labels=["program"])
        secs = CounterMetricFamily("sysdream_bpf_program_run_seconds", "BPF program run "
                                   "time (while kernel.bpf_stats_enabled=1).",
                                   labels=["program"])
        for prog, (n, ns) in sorted(s.program_stats().items()):
            runs.add_metric([prog], n)
            secs.add_metric([prog], ns / 1e9)
        yield runs
        yield secs


class Metrics:
    """The registry: the service collector, process CPU/memory and the histograms."""

    def __init__(self, service):
        disable_created_metrics()  # no *_created series: they only double the cardinality
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ServiceCollector(service))
        if getattr(service, "remote", None) is not None:    # a fleet agent
            from ..fleet.agent import collect
            remote, control = service.remote, getattr(service, "control", None)
            self.registry.register(Collector(lambda: collect(remote, control)))
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
