"""Prometheus metrics: what each owner counts, served over HTTP.

    collector.py  the collectors read at scrape time and the histograms
    labels.py     bounded label values for metrics keyed by executable
    server.py     the HTTP endpoint: /metrics and /healthz

Imports the root modules only (version, config).
"""
