"""The metrics HTTP endpoint (/metrics and /healthz), on TCP or a unix socket.

Any local user can connect to a TCP port on 127.0.0.1, so the endpoint must not be a
lever: a few worker threads serve every connection (an idle client is cut after
READ_TIMEOUT_S), a short queue waits for them, and a connection beyond that is closed at
once. Holding many connections open costs the daemon sockets, never threads. With TLS
(webconfig.py) the handshake runs in the worker, under the same read timeout: a client
that stalls it or fails it is cut and counted (`tls_refused`), and the server goes on.
"""

from __future__ import annotations

WORKERS = 4             # threads that serve requests
BACKLOG = 16            # connections accepted and waiting for one of them
READ_TIMEOUT_S = 5.0    # an idle or slow client is cut after this
UNIX = "unix:"


def serve_http(registry, address: str, port: int, health=None, tls=None):
    """An HTTP endpoint in a thread of its own: /metrics (and any other path but one) the
    registry's exposition, /healthz the health (`health`: () -> dict with "healthy") as
    JSON, 200 when healthy, 503 when not. `address` "unix:/PATH" listens on a unix socket
    (mode 0660) instead of a TCP port. `tls`: an ssl.SSLContext (webconfig.tls_context)
    to serve HTTPS with. Returns the server; OSError when the port is taken."""
    import json
    import os
    import queue
    import socket
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

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

    unix = address.startswith(UNIX)
    path = address[len(UNIX):]
    family = socket.AF_UNIX if unix else \
        socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]

    class Server(WSGIServer):
        """Requests handed to WORKERS threads through a queue of BACKLOG."""
        address_family = family
        request_queue_size = 128    # the kernel's backlog: accepted (and cut) promptly

        def __init__(self, *args, **kw):
            self.waiting: queue.Queue = queue.Queue(BACKLOG)
            self.refused = 0
            self.tls_refused = 0        # handshakes failed or timed out
            super().__init__(*args, **kw)

        def server_bind(self):
            if not unix:
                return super().server_bind()
            try:
                os.unlink(path)          # a stale socket of a previous run
            except FileNotFoundError:
                pass
            socketserver.TCPServer.server_bind(self)
            os.chmod(path, 0o660)
            self.server_name, self.server_port = "localhost", 0
            self.setup_environ()

        def get_request(self):
            request, peer = self.socket.accept()
            return request, ("unix", 0) if unix else peer    # wsgiref wants (host, port)

        def process_request(self, request, client_address):
            try:
                self.waiting.put_nowait((request, client_address))
            except queue.Full:
                self.refused += 1
                self.shutdown_request(request)

        def work(self):
            while (item := self.waiting.get()) is not None:
                request, client_address = item
                if tls is not None and (request := self.handshake(request)) is None:
                    continue
                try:
                    self.finish_request(request, client_address)
                except Exception:       # one client's broken request
                    self.handle_error(request, client_address)
                finally:
                    self.shutdown_request(request)

        def handshake(self, request):
            """The TLS socket of an accepted one, or None (closed) when the client's
            handshake fails or stalls past READ_TIMEOUT_S."""
            request.settimeout(READ_TIMEOUT_S)
            try:
                return tls.wrap_socket(request, server_side=True)
            except OSError:         # ssl.SSLError, a timeout or a reset: this client only
                self.tls_refused += 1
                request.close()
                return None

        def server_close(self):
            super().server_close()
            for _ in range(WORKERS):
                try:
                    self.waiting.put_nowait(None)
                except queue.Full:
                    break
            if unix:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    class Quiet(WSGIRequestHandler):
        timeout = READ_TIMEOUT_S

        def log_message(self, *args):     # scrapes are not worth a log line each
            pass

        def handle(self):
            try:
                super().handle()
            except OSError:              # a timed-out or vanished client
                self.close_connection = True

    server = Server(path if unix else (address, port), Quiet)
    server.set_app(app)
    for i in range(WORKERS):
        threading.Thread(target=server.work, name=f"sysdream-metrics-{i}",
                         daemon=True).start()
    threading.Thread(target=server.serve_forever, name="sysdream-metrics",
                     daemon=True).start()
    return server
