"""Async enrichment: ``async def`` stages calling a web service with httpx.

    python examples/async_enrich.py        # needs httpx (pip install httpx)

It starts a small local HTTP service (standing in for a real API: it fails
one call in five with a 503, and answers slowly now and then), then runs
200 records through ``lookup`` (async, 20 calls at once at most, retried on
errors, 2 s timeout) and ``tag`` (plain sync). Coroutines wait on the network
without holding a worker thread: all 200 lookups can be in flight with the
default 4 workers. Items are stored in ./async_enrich.db (or $TREADLE_DB).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from treadle import Pipeline, Runner, open_store, stage


class FlakyAPI(BaseHTTPRequestHandler):
    """GET /records/<n> -> {"n": n, "square": n*n}; 1 call in 5 fails, some are slow."""

    def do_GET(self) -> None:
        n = int(self.path.rsplit("/", 1)[-1])
        if random.random() < 0.2:
            self.send_response(503)
            self.end_headers()
            return
        time.sleep(random.choice([0.01, 0.05, 0.3]))
        body = json.dumps({"n": n, "square": n * n}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # keep the output quiet
        pass


def serve() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


API = os.environ.get("TREADLE_EXAMPLE_API") or serve()


_client: httpx.AsyncClient | None = None


def client() -> httpx.AsyncClient:
    """One client (one connection pool) for every call: coroutines all run on the
    runner's one event loop, so they can share it."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(base_url=API, timeout=5.0)
    return _client


@stage(concurrency=20, retry=6, timeout=2.0)
async def lookup(record):
    """One API call per record; a 503 raises, and the retry policy tries again."""
    response = await client().get(f"/records/{record['id']}")
    response.raise_for_status()
    return response.json()


@stage(after=[lookup])
def tag(record, ctx):
    square = ctx.outputs["lookup"]["square"]
    return {"big": square > 10_000}


pipeline = Pipeline("async_enrich", [lookup, tag])

if __name__ == "__main__":
    runner = Runner(pipeline, open_store(os.environ.get("TREADLE_DB", "sqlite:///async_enrich.db")))
    runner.submit(*({"id": i} for i in range(200)))
    report = runner.run()
    print(f"completed {report.items.get('completed', 0)} of 200 records; "
          f"failed {report.items.get('failed', 0)}")
