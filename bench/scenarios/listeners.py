"""The suite's own network ends on 127.0.0.1: where a reverse shell or a miner connects,
and an HTTP server that serves a payload and takes uploads. They run in the suite's
process, outside the traced cgroups."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAYLOAD = b"#!/bin/sh\nid\nuname -a\ncat /etc/hostname\n"


class ShellListener:
    """Accepts one connection, sends `script`, keeps what comes back until it closes."""

    def __init__(self, script: bytes, timeout: float = 30):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(timeout)
        self.port = self.sock.getsockname()[1]
        self.script, self.data = script, bytearray()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(20)
                if self.script:
                    conn.sendall(self.script)
                while chunk := conn.recv(65536):
                    self.data += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
            self.done.set()

    def result(self, timeout: float) -> bytes:
        self.done.wait(timeout)
        return bytes(self.data)


class HttpEnd:
    """GET /payload: a small program; POST anything: counted as received."""

    def __init__(self):
        end = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:   # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                with end.lock:
                    end.bytes += len(self.rfile.read(n))
                self.send_response(204)
                self.end_headers()

        self.lock, self.bytes = threading.Lock(), 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> int:
        with self.lock:
            n, self.bytes = self.bytes, 0
        return n

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
