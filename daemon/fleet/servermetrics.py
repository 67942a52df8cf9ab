"""The fleet server's metrics: agents, workers, requests and models, read at scrape time."""

from __future__ import annotations

import time

import numpy as np

INFER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
UNKNOWN = "unknown"     # an agent or role label before the agent is known


class ServerCollector:
    """The server's metrics (docs/metrics.md, "Fleet server"), read at scrape time."""

    def __init__(self, server):     # fleet/server.py's Server
        self.s = server

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        from ..version import build_info
        s = self.s
        with s.lock:
            requests, windows = dict(s.requests), dict(s.windows)
            bytes_in, refused = dict(s.bytes_in), dict(s.refused)
            rejected = dict(s.rejected)
            infer, latency = np.cumsum(s.infer).tolist(), np.cumsum(s.latency).tolist()
            infer_sum, latency_sum = s.infer_sum, s.latency_sum
            seen = dict(s.last_seen)
        fam = CounterMetricFamily("sysdream_server_requests", "Agents' requests, by agent "
                                  "(its key's name) and result.", labels=["agent", "result"])
        for (agent, result), v in sorted(requests.items()):
            fam.add_metric([agent, result], v)
        yield fam
        for name, doc, values in (
                ("sysdream_server_windows_scored", "Windows scored for each agent.",
                 windows),
                ("sysdream_server_received_bytes", "Bytes received from each agent.",
                 bytes_in)):
            fam = CounterMetricFamily(name, doc, labels=["agent"])
            for agent, v in sorted(values.items()):
                fam.add_metric([agent], v)
            yield fam
        fam = CounterMetricFamily("sysdream_server_refused_peers", "Connections refused, by "
                                  "reason (unknown-key: not in the allow-list; handshake: "
                                  "not CurveZMQ with this server's key).", labels=["reason"])
        for k, v in sorted(refused.items()):
            fam.add_metric([k], v)
        yield fam
        fam = CounterMetricFamily("sysdream_server_rejected_messages", "Messages refused, "
                                  "by code (docs/fleet.md).", labels=["code"])
        for k, v in sorted(rejected.items()):
            fam.add_metric([k], v)
        yield fam
        now = time.monotonic()
        yield GaugeMetricFamily("sysdream_server_agents_active", "Agents heard from in the "
                                "last minute.", value=sum(1 for a, t in seen.items()
                                                          if now - t < 60 and a != UNKNOWN))
        yield GaugeMetricFamily("sysdream_server_agent_keys", "Agent keys in the "
                                "allow-list.", value=len(s.allowed))
        yield GaugeMetricFamily("sysdream_server_inflight_requests", "Requests with the "
                                "workers (the broker's queue).", value=len(s.inflight))
        yield GaugeMetricFamily("sysdream_server_workers", "Workers alive and ready "
                                "(connected, model code loaded), local and remote.",
                                value=s._alive())
        yield GaugeMetricFamily("sysdream_server_remote_workers", "Of those, `sysdream "
                                "worker`s on other machines ([server] worker_bind).",
                                value=s._alive(remote=True))
        yield CounterMetricFamily("sysdream_server_worker_restarts", "Workers started again "
                                  "after they exited.", value=s.worker_restarts)
        yield CounterMetricFamily("sysdream_server_workers_lost", "Remote workers "
                                  "forgotten: not heard from in 10 s, or unreachable.",
                                  value=s.workers_lost)
        with s.lock:
            dispatched = dict(s.dispatched)
        fam = CounterMetricFamily("sysdream_server_worker_requests", "Requests handed to "
                                  "each worker (local-N, or a remote worker's key name).",
                                  labels=["worker"])
        for name, v in sorted(dispatched.items()):
            fam.add_metric([name], v)
        yield fam
        r = s.roles
        yield CounterMetricFamily("sysdream_server_baselines_stored", "Agents' baselines "
                                  "received whole and checked.", value=r.baselines_stored)
        fam = CounterMetricFamily("sysdream_server_models_trained", "Role models trained, "
                                  "by result.", labels=["result"])
        fam.add_metric(["ok"], r.trained)
        fam.add_metric(["failed"], r.failed)
        yield fam
        yield GaugeMetricFamily("sysdream_server_roles_training", "Roles whose model is "
                                "being trained now.", value=len(r.training))
        for name, doc, cum, total in (
                ("sysdream_server_inference_seconds", "The worker inference that scored "
                 "each request (one inference scores every request it batched, and is "
                 "observed once for each).", infer, infer_sum),
                ("sysdream_server_request_seconds", "From a request's arrival to its "
                 "verdict leaving the broker.", latency, latency_sum)):
            buckets = [(f"{b:g}", c) for b, c in zip(INFER_BUCKETS, cum, strict=False)]
            buckets.append(("+Inf", cum[-1]))
            yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)
        yield InfoMetricFamily("sysdream_build", "The running sysdream and what it runs "
                               "on.", value={**build_info(), "device": s.device})
