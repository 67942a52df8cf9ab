"""The metrics HTTP endpoint (/metrics and /healthz).
"""

from __future__ import annotations


def serve_http(registry, address: str, port: int, health=None):
    """An HTTP endpoint in a thread of its own: /metrics (and any other path but one) the
    registry's exposition, /healthz the health (`health`: () -> dict with "healthy") as
    JSON, 200 when healthy, 503 when not. Returns the server; OSError when the port is
    taken."""
    import json
    import socket
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from prometheus_client import make_wsgi_app

    exposition = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz" and health is not None:
            h = health()
            body = (json.dumps(h, sort_keys=True) + "\n").encode()
            start_response("200 OK" if h.get("healthy") else "503 Service Unavailable",
                           [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
            return [body]
        return exposition(environ, start_response)

    family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = family

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):     # scrapes are not worth a log line each
            pass

    server = make_server(address, port, app, Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="sysdream-metrics",
                     daemon=True).start()
    return server
