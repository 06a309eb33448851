"""A local HTTP endpoint and SMTP server that record what they receive, for notifier tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Endpoint:
    """Received POST bodies (JSON) and headers; answers ``status`` after ``delay`` seconds."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status, self.delay = status, delay
        self.posts: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.url = ""

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.posts


@contextmanager
def http_endpoint(status: int = 200, delay: float = 0.0) -> Iterator[Endpoint]:
    endpoint = Endpoint(status, delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(endpoint.delay)
            endpoint.posts.append(json.loads(body))
            endpoint.headers.append(dict(self.headers))
            self.send_response(endpoint.status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield endpoint
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def smtp_server() -> Iterator[tuple[int, list[str]]]:
    """A minimal SMTP server on a free port; yields (port, received message texts)."""
    messages: list[str] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    sock.settimeout(0.2)
    stop = threading.Event()

    def session(conn: socket.socket) -> None:
        f = conn.makefile("rb")

        def say(line: str) -> None:
            conn.sendall((line + "\r\n").encode())

        say("220 test ESMTP")
        while True:
            line = f.readline().decode().strip()
            if not line:
                return
            cmd = line.split(" ", 1)[0].upper()
            if cmd in ("EHLO", "HELO"):
                say("250 test")
            elif cmd == "DATA":
                say("354 end with .")
                lines = []
                while (row := f.readline().decode()) not in (".\r\n", ""):
                    lines.append(row)
                messages.append("".join(lines))
                say("250 queued")
            elif cmd == "QUIT":
                say("221 bye")
                return
            else:
                say("250 ok")

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                session(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], messages
    finally:
        stop.set()
        thread.join(2)
        sock.close()
