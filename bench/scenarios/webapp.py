"""The scenario suite's web application: a small service with a database, uploads, a
report job, static files and a lookup that runs a shell command (the way many real
applications shell out, and the hole the command-injection attack uses). The static files
are served by joining the URL's name to the folder unchecked: the path traversal the
credential-read attack uses.

    python3 webapp.py PORT ROOT

Serves 127.0.0.1:PORT until SIGTERM; keeps its database, uploads and access log in ROOT.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")
LOCK = threading.Lock()


def database() -> sqlite3.Connection:
    db = sqlite3.connect(ROOT / "app.db", timeout=10, check_same_thread=False)
    db.execute("create table if not exists items (id integer primary key, name text, "
               "price real, updated real)")
    if not db.execute("select count(*) from items").fetchone()[0]:
        db.executemany("insert into items (name, price, updated) values (?, ?, ?)",
                       [(f"item-{i}", i * 1.5, time.time()) for i in range(200)])
        db.commit()
    return db


class App(BaseHTTPRequestHandler):
    server_version = "scenario-app/1"
    db: sqlite3.Connection

    def log_message(self, fmt, *args) -> None:     # the access log, as a real app keeps
        with LOCK, (ROOT / "access.log").open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self.command} {self.path} "
                    f"{fmt % args}\n")

    def reply(self, code: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:   # noqa: N802 (http.server's naming)
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/":
            self.reply(200, b"<html><body><h1>scenario shop</h1></body></html>", "text/html")
        elif url.path == "/items":
            with LOCK:
                rows = self.db.execute("select id, name, price from items order by random() "
                                       "limit 20").fetchall()
            self.reply(200, json.dumps(rows).encode(), "application/json")
        elif url.path == "/lookup":
            user = query.get("user", ["nobody"])[0]
            # the hole: the name goes into a shell command unquoted
            out = subprocess.run(f"getent passwd {user}", shell=True, capture_output=True,
                                 timeout=20)
            self.reply(200, out.stdout or b"unknown\n")
        elif url.path.startswith("/static/"):
            # the hole: the name is joined unchecked, so ../ leaves the folder
            name = urllib.parse.unquote(url.path[len("/static/"):])
            try:
                body = open(os.path.join(ROOT, "static", name), "rb").read()
            except OSError:
                self.reply(404, b"not found\n")
                return
            self.reply(200, body)
        elif url.path == "/report":
            files = sorted((ROOT / "uploads").glob("*"))[-5:] or [ROOT / "app.db"]
            out = subprocess.run(["/usr/bin/sha256sum", *map(str, files)],
                                 capture_output=True, timeout=20)
            self.reply(200, out.stdout)
        else:
            self.reply(404, b"not found\n")

    def do_POST(self) -> None:  # noqa: N802
        n = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
        body = self.rfile.read(n)
        name = hashlib.sha1(body).hexdigest()[:12]
        path = ROOT / "uploads" / name
        with path.open("wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        with LOCK:
            self.db.execute("update items set updated = ? where id = ?",
                            (time.time(), int(name[:4], 16) % 200 + 1))
            self.db.commit()
        self.reply(201, name.encode())


def main() -> int:
    port = int(sys.argv[1])
    (ROOT / "uploads").mkdir(parents=True, exist_ok=True)
    (ROOT / "static").mkdir(exist_ok=True)
    for name, text in (("style.css", "h1 { color: #333; }\n"),
                       ("app.js", "console.log('shop');\n")):
        if not (ROOT / "static" / name).exists():
            (ROOT / "static" / name).write_text(text)
    App.db = database()
    server = ThreadingHTTPServer(("127.0.0.1", port), App)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("ready", flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
