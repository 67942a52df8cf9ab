"""The service: CLI, configuration, online pipeline, alerts, metrics, lifecycle."""
