"""The metric families of each owner's snapshot, built at every scrape.

One function per owner; each takes the owner's `stats()` snapshot (plain numbers, see the
owner's module) and yields its families. Names, labels and help texts are docs/metrics.md's
(tests/daemon/test_metrics_doc.py holds the two equal).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from ..context.printable import printable
from ..version import build_info

Family = CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily
LOSS_REASONS = {"lost_syscalls": "ring_buffer_full", "lost_nostorage": "no_thread_storage"}
SHED_REASONS = ("queue_full", "model_change", "shutdown")
SET_ASIDE_REASONS = ("own_alert_delivery",)
PHASES = ("starting", "learning", "training", "detecting")
RETRAINING_STATES = ("off", "waiting", "recording", "training", "shadow")
NAN = float("nan")


def _by_label(name: str, doc: str, label: str, values: dict[str, int], gauge: bool = False):
    fam = (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, labels=[label])
    for k, v in sorted(dict(values).items()):
        fam.add_metric([k], v)
    return fam


def _one_of(name: str, doc: str, label: str, names: tuple[str, ...], current: str):
    fam = GaugeMetricFamily(name, doc, labels=[label])
    for n in names:
        fam.add_metric([n], 1.0 if current == n else 0.0)
    return fam


def trained_timestamp(value) -> float:
    """A bundle's trained_at (ISO 8601, or seconds since the epoch) as Unix time."""
    import datetime

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        when = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return float("nan")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def build() -> Iterator[Family]:
    yield InfoMetricFamily("sysdream_build", "The running sysdream and what it runs on.",
                           value=build_info())


def capture(s) -> Iterator[Family]:
    """The kernel's counters and the reader's (service/loop.py CaptureStats)."""
    k = s.kernel
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
    yield CounterMetricFamily("sysdream_acts_lost", "Act records lost to a full acts "
                              "ring buffer.", value=k.get("act_lost", 0))
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
    yield CounterMetricFamily("sysdream_context_records", "Process context records "
                              "the kernel emitted.", value=k.get("ctx_records", 0))
    yield CounterMetricFamily("sysdream_context_records_lost", "Process context "
                              "records lost to a full context ring buffer.",
                              value=k.get("ctx_lost", 0))
    runs = CounterMetricFamily("sysdream_bpf_program_runs", "BPF program runs (counted "
                               "by the kernel while kernel.bpf_stats_enabled=1).",
                               labels=["program"])
    secs = CounterMetricFamily("sysdream_bpf_program_run_seconds", "BPF program run "
                               "time (while kernel.bpf_stats_enabled=1).",
                               labels=["program"])
    for prog, (n, ns) in sorted(s.programs.items()):
        runs.add_metric([prog], n)
        secs.add_metric([prog], ns / 1e9)
    yield runs
    yield secs


def counters(c) -> Iterator[Family]:
    """The pipeline's counters (detect/queue.py CounterStats)."""
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
                    dict.fromkeys(SHED_REASONS, 0) | c.windows_shed)
    yield _by_label("sysdream_anomalous_windows", "Windows above the bound, by "
                    "executable.", "exe", c.anomalous)
    yield _by_label("sysdream_windows_set_aside", "Windows above the bound not taken "
                    "as evidence, by reason (own_alert_delivery: journald handling "
                    "this daemon's alerts).", "reason",
                    dict.fromkeys(SET_ASIDE_REASONS, 0) | c.set_aside)


def pipeline(p) -> Iterator[Family]:
    """The pipeline's tables and the alert bounds in force (service/loop.py
    PipelineStats)."""
    yield GaugeMetricFamily("sysdream_threads_tracked", "Threads with a stream in the "
                            "thread table.", value=p.threads_tracked)
    yield GaugeMetricFamily("sysdream_cache_windows", "Windows in the known-window "
                            "cache.", value=p.cache_windows)
    yield GaugeMetricFamily("sysdream_queue_windows", "Windows waiting for inference.",
                            value=p.queue_windows)
    yield GaugeMetricFamily("sysdream_queue_capacity_windows", "Most windows that may "
                            "wait before shedding.", value=p.queue_capacity)
    yield GaugeMetricFamily("sysdream_alert_bound", "What a process's evidence (the "
                            "weight of its last windows) must reach to alert, for a "
                            "program without a bound of its own.", value=p.alert_bound)
    own = GaugeMetricFamily("sysdream_program_alert_bound", "The alert bound of each "
                            "program with one of its own.", labels=["program"])
    for prog, b in sorted(p.program_bounds.items()):
        own.add_metric([printable(prog)], b)
    yield own


def alerts(a) -> Iterator[Family]:
    """The alert path (alerting/path.py AlertStats)."""
    sent = CounterMetricFamily("sysdream_alerts", "Alerts raised, by executable and "
                               "severity.", labels=["exe", "severity"])
    for sev, counts in sorted(a.sent_by_severity.items()):
        for exe, n in sorted(counts.items()):
            sent.add_metric([exe, sev], n)
    yield sent
    yield _by_label("sysdream_incidents_opened", "Incidents opened, by severity (low "
                    "ones go to journald alone).", "severity", a.incidents_opened)
    yield _by_label("sysdream_incident_alerts", "Incident alerts sent (an opening or a "
                    "rise: in severity, or a high event of a new kind of evidence), by "
                    "severity.", "severity", a.incident_alerts)
    yield GaugeMetricFamily("sysdream_incidents_open", "Incidents open (not closed yet).",
                            value=a.incidents_open)
    yield CounterMetricFamily("sysdream_allow_list_refused", "Allow lists that could not "
                              "be used (unreadable or damaged): each also an "
                              "allow-list-refused event.", value=a.allow_errors)
    yield _by_label("sysdream_alerts_suppressed", "Alerts held back by the rate "
                    "limits (per fingerprint, and the ceiling per minute), by "
                    "executable.", "exe", a.suppressed)
    yield _by_label("sysdream_alerts_allowed", "Alerts not sent because an operator's "
                    "allow entry matched them (sysdream allow), by executable.", "exe",
                    a.allowed)


def evictions(dropped: dict[str, int]) -> Iterator[Family]:
    """State the detection needed, dropped to stay bounded (the pipeline's counters and
    the rate limiter's, joined by service/loop.py)."""
    yield _by_label("sysdream_state_evictions", "State dropped to stay bounded while "
                    "it still held something: a process's evidence, an episode, "
                    "pending lineage events, a fingerprint's held-back alerts "
                    "(rate_limits).", "what",
                    {"evidence": 0, "episodes": 0, "lineage_events": 0, "rate_limits": 0,
                     **dropped})


def behaviour(b: dict) -> Iterator[Family]:
    """The behaviour profiles (service/behaviour.py): programs, settled ones, acts taken."""
    yield GaugeMetricFamily("sysdream_profiles_programs", "Programs with a behaviour "
                            "profile.", value=b.get("programs", 0))
    yield GaugeMetricFamily("sysdream_profiles_settled", "Programs whose behaviour "
                            "profile has settled.", value=b.get("settled", 0))
    yield CounterMetricFamily("sysdream_acts", "Act records the behaviour profiles "
                              "took.", value=b.get("acts", 0))
    yield CounterMetricFamily("sysdream_acts_unresolved_reads", "Reads of a file named "
                              "like a sensitive one by a relative path that could not be "
                              "resolved (a directory descriptor, or the process gone).",
                              value=b.get("unresolved_reads", 0))


def exe_labels(evictions: int) -> Iterator[Family]:
    """The label budget shared by every family keyed by executable (labels.py)."""
    yield CounterMetricFamily("sysdream_exe_labels_evicted", "Executables whose metric "
                              "label went to one that raised an alert.", value=evictions)


def deliveries(sinks) -> Iterator[Family]:
    """Each output's deliveries (alerting/sinks.py SinkStats, one per sink)."""
    sent = CounterMetricFamily("sysdream_alert_deliveries", "Alerts and events handed "
                               "to each output, by result (sent, failed after its "
                               "retries, dropped from a full queue, retried).",
                               labels=["sink", "result"])
    waiting = GaugeMetricFamily("sysdream_alert_queue", "Alerts waiting for a network "
                                "output (syslog, webhook).", labels=["sink"])
    for sink in sinks:
        for result, n in sink.counts.items():     # sent, failed, dropped, retried
            sent.add_metric([sink.name, result], n)
        waiting.add_metric([sink.name], sink.pending)
    yield sent
    yield waiting


def processes(p) -> Iterator[Family]:
    """The process table (context/processes.py ProcessStats)."""
    yield GaugeMetricFamily("sysdream_processes_tracked", "Processes in the process "
                            "table.", value=p.tracked)
    yield CounterMetricFamily("sysdream_processes_evicted", "Processes forgotten "
                              "because the process table was full.", value=p.evicted)
    yield CounterMetricFamily("sysdream_processes_from_procfs", "Processes the kernel "
                              "had not described, read from /proc instead.",
                              value=p.from_procfs)
    yield CounterMetricFamily("sysdream_context_records_unreadable", "Process context "
                              "records the process table could not use.",
                              value=p.unreadable)


def learner(s) -> Iterator[Family]:
    """Learning this host (service/learner.py LearnerStats)."""
    yield _one_of("sysdream_phase", "1 for the daemon's current phase.", "phase", PHASES,
                  s.phase)
    yield GaugeMetricFamily("sysdream_learning_progress_ratio", "Progress of learning "
                            "this host (0-1): recording the baseline, then training.",
                            value=s.progress)
    yield CounterMetricFamily("sysdream_learning_syscalls", "Syscalls recorded into "
                              "the learning baseline.", value=s.baseline_syscalls)
    yield CounterMetricFamily("sysdream_state_write_errors", "Writes the state "
                              "directory refused (full, read-only): the baseline so far "
                              "is kept, capture goes on.", value=s.write_errors)


def model(s) -> Iterator[Family]:
    """The model in use, its reloads and lineage novelty (service/modelslot.py
    SlotStats)."""
    yield _by_label("sysdream_model_reloads", "Model loads after start, by result.",
                    "result", s.reloads)
    yield _by_label("sysdream_lineage_events", "Lineage novelty events (an exec, a "
                    "syscall or a run of 6-syscall sequences the learnt profile never "
                    "saw), by kind.", "kind", s.lineage_events)
    m = s.model
    yield GaugeMetricFamily("sysdream_lineage_heldout_evidence_per_hour", "Evidence (in "
                            "windows above the bound) that lineage novelty gave per hour "
                            "in the held-out last quarter of the baseline (NaN: no "
                            "lineage profile).",
                            value=m.lineage_heldout_per_hour if m is not None else NAN)
    yield GaugeMetricFamily("sysdream_heldout_alerts_per_hour", "Alerts an hour the "
                            "alert rule raised when replayed on the baseline's held-out "
                            "last quarter at training time (NaN: not replayed).",
                            value=m.heldout_alerts_per_hour if m is not None else NAN)
    yield GaugeMetricFamily("sysdream_expected_false_alerts_per_hour", "False alerts "
                            "an hour the model's alert bound, at the configured "
                            "confidence, is expected to raise on activity like the "
                            "baseline's held-out part (NaN: no alert bound).",
                            value=m.expected_false_alerts_per_hour if m is not None
                            else NAN)
    info = InfoMetricFamily("sysdream_model", "The model in use.")
    if m is None:
        yield info
        return
    info.add_metric([], {"model_id": m.model_id, "arch": m.arch, "task": m.task,
                         "window": str(m.window)})
    yield info
    yield GaugeMetricFamily("sysdream_model_trained_timestamp_seconds", "When the model "
                            "in use was trained (Unix time; NaN when its bundle does not "
                            "say).", value=trained_timestamp(m.trained_at))
    yield GaugeMetricFamily("sysdream_model_vocabulary_size", "Syscall names the model "
                            "knows (with the padding and unknown tokens).",
                            value=m.vocabulary)
    yield GaugeMetricFamily("sysdream_model_bound", "The alarm bound (mean NLL per "
                            "syscall).", value=m.bound)
    yield GaugeMetricFamily("sysdream_model_confidence", "Confidence of the interval "
                            "whose upper end is the bound.", value=m.confidence)


def retraining(s) -> Iterator[Family]:
    """Scheduled retraining (service/retrainer.py RetrainerStats)."""
    yield _by_label("sysdream_retrainings", "Scheduled retrainings, by outcome: the "
                    "candidate swapped in, rejected after its shadow, or failed.",
                    "outcome", s.outcomes)
    yield _one_of("sysdream_retraining_state", "1 for where scheduled retraining stands.",
                  "state", RETRAINING_STATES if s.shown else (), s.state)
    yield GaugeMetricFamily("sysdream_retraining_next_timestamp_seconds", "When the "
                            "next candidate trains (Unix time; 0 when off).",
                            **({"value": s.next_at} if s.shown else {}))
