"""Prometheus metrics: what each owner counts, served over HTTP.

    collector.py  the registry: one collector per owner's snapshot, and the histograms
    families.py   the families of each owner's stats() snapshot, built at a scrape
    labels.py     bounded label values for metrics keyed by executable
    server.py     the HTTP endpoint: /metrics and /healthz
    webconfig.py  TLS and client certificates from a Prometheus web configuration file

Imports the root modules (version, config) and context.printable only: the owners hand
in their snapshots, nothing here reads the service.
"""
