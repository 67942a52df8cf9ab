"""Fleet mode (DReAM section III.G): agents on many hosts, one scoring server, ZeroMQ.

This sub-room owns everything that crosses the network, and nothing else:

- protocol.py  the versioned wire schema: what each message holds, its limits, and the
               checks every received message passes before anything acts on it;
- keys.py      CurveZMQ key pairs (`sysdream keygen --curve`) and the agents' allow-list;
- agent.py     `Remote`: the agent's side, the scorer thread's remote inference (a DEALER
               socket, a deadline per request, the local model when the server does not
               answer) and its counters;
- server.py    `sysdream server`: the broker (a CURVE ROUTER for the agents in front of a
               DEALER to the workers, ZeroMQ's standard pattern), the PUB socket for fleet
               events, its metrics;
- worker.py    one inference worker process: batches requests across agents per model.

The agent is `sysdream run` with a [fleet] server: capture, windowing, the known-window
cache, evidence and alerts stay on the host (daemon/pipeline.py); only the windows the
cache does not know cross the network.
"""
