"""Helpers for the web console's tests: a filled store, a logged-in client, a live server."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.web_pipeline import pipeline
from treadle import Runner, open_store

TOKEN = "test-token"


def waiting_store(url: str, n: int, **extra: Any) -> Runner:
    """A store at ``url`` with ``n`` items waiting at the ``review`` stage (d00, d01, ...)."""
    runner = Runner(pipeline, open_store(url), workers=4)
    runner.submit(*[{"id": f"d{i:02d}", **extra} for i in range(n)])
    runner.run()
    return runner


def client(app: Any, *, login: bool = True) -> Any:
    from starlette.testclient import TestClient

    c = TestClient(app, follow_redirects=False)
    if login:
        assert c.get(f"/?token={TOKEN}").status_code == 303
    return c


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def stage_of(runner: Runner, item_id: str, stage: str = "review") -> Any:
    return runner.status(item_id).stages[stage]


def decisions(runner: Runner, stage: str = "review") -> list[tuple[str, str, str | None]]:
    """Every review decision in the history: (item, decision, reviewer)."""
    out = []
    for s in runner.items(limit=None):
        for h in runner.history(s.item_id):
            if h.stage == stage and isinstance(h.details, dict) and h.details.get("decision"):
                out.append((h.item_id, h.details["decision"], h.details.get("reviewer")))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free local port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start within 10 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
