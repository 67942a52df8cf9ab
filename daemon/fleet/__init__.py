"""Fleet mode (DReAM section III.G): agents on many hosts, one scoring server, ZeroMQ.

This room owns everything that crosses the network, and nothing else:

    protocol.py       the versioned wire schema: what each message holds, its limits, and
                      the checks every received message passes before anything acts on it
    keys.py           CurveZMQ key pairs (`sysdream keygen --curve`) and the agents'
                      allow-list
    agent.py          `Remote`: the agent's side, the scorer thread's remote inference (a
                      DEALER socket, a deadline per request, the local model when the
                      server does not answer) and its counters
    server.py         `sysdream server`: the broker (a CURVE ROUTER for the agents in front
                      of a ROUTER to the workers), the PUB socket for fleet events
    servermetrics.py  the server's metrics, read at scrape time
    roles.py          the server's fleet learning: baselines in, one model per role out
    worker.py         one inference worker process: batches requests across agents per
                      model

The agent is `sysdream run` with a [fleet] server: capture, windowing, the known-window
cache, evidence and alerts stay on the host (daemon/detect/); only the windows the cache
does not know cross the network. May import the root modules, metrics, service.runtime
and service.logs (its lines go through stdlib logging: `sysdream server: ...` on stderr,
or journald with their priority).
"""
