"""From a Detection to an alert that went out, or one held back and counted.

    path.py         the alert path: fields, allow list, rate limits, sinks
    fields.py       an alert's fields, fingerprint and message
    kinds.py        the kinds of alerts and events: MESSAGE_IDs, priorities
    incidents.py    incidents (open, raise, close) and severity from agreeing evidence
    ratelimit.py    per-fingerprint limits and the ceiling; the summary of what was held
    deliveries.py   the sinks the configuration enables; deliveries by sink and result
    sinks.py        one class per channel: journald, JSON lines, syslog, webhook
    formats.py      an alert's layout: sysdream's fields, ECS, OCSF or Falco's
    allow.py        `sysdream allow`: the operator's answer to a false alert
    origin.py       which journald entries sysdream wrote (trusted fields only)

May import context, metrics.labels, config and detect.evidence (its decay constant,
named in alert text).
"""
