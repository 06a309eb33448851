"""``python -m benchmarks.web``: the web console's figures that docs/web.md quotes.

- **inbox**: server time of the review inbox's first page (and page 100, the
  overview, the items list) with N reviews waiting, on SQLite (Starlette's
  ``TestClient``: the request handled in-process, rendering included);
  target: first page under 300 ms at 10,000 waiting.
- **live**: ``python -m treadle serve`` in a process of its own, 10 clients on
  its ``/events`` stream; this process decides reviews one by one and times,
  for each, from the start of the decision's commit to the moment every
  client has its event (target: under 1 s). Also the server's resident
  memory (``VmRSS``) before the clients connect, with the 10 clients, and
  after the decisions.

``--quick`` uses small sizes (the benchmarks smoke test runs it); figures are
printed and, with ``--json PATH``, written as JSON. ``--postgres URL`` runs
the same on PostgreSQL (in a schema of its own, dropped at the end), where
the console is woken by ``LISTEN``/``NOTIFY`` instead of polling. Requires
``treadle[web]`` and httpx.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from treadle import Pipeline, Review, Runner, open_store, stage

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "benchmark-token"
CLIENTS = 10


@stage()
def draft(item: dict[str, Any]) -> dict[str, Any]:
    return {"title": f"Title {item['id']}"}


@stage(after=[draft])
def review(item: dict[str, Any], ctx: Any) -> Review:
    return Review({"title": ctx.outputs["draft"]["title"], "tags": ["a", "b"]},
                  message=f"Check the title of {item['id']}")


@stage(after=[review])
def publish(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"published": ctx.outputs["review"]["title"]}


pipeline = Pipeline("web-bench", [draft, review, publish])


def fill(url: str, n: int) -> Runner:
    """A store with ``n`` reviews waiting."""
    runner = Runner(pipeline, open_store(url), workers=4)
    for start in range(0, n, 2000):
        runner.submit(*[{"id": f"r{i:05d}"} for i in range(start, min(n, start + 2000))])
    runner.run()
    return runner


def _timed(get: Any, path: str, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        r = get(path)
        times.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path}: {r.status_code}")
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def inbox(runner: Runner, n: int, repeat: int) -> dict[str, Any]:
    """Server times of the main pages with ``n`` reviews waiting."""
    from starlette.testclient import TestClient

    from treadle.web import create_app

    app = create_app(pipeline, runner.store, token=TOKEN)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        pages = {"inbox_first_page": "/inbox", "overview": "/", "items_first_page": "/items"}
        if n > 50 * 100:
            pages["inbox_page_100"] = "/inbox?page=99"
        out: dict[str, Any] = {"waiting": n}
        for name, path in pages.items():
            out[name] = _timed(c.get, path, repeat)
    return out


def rss_kb(pid: int) -> int:
    """Resident memory of a process (Linux), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Listener(threading.Thread):
    """One ``/events`` client: records when each item's first event arrived."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(daemon=True)
        self.base, self.token = base, token
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with httpx.Client(base_url=self.base, timeout=30, headers=headers) as http, \
                    http.stream("GET", "/events") as resp:
                resp.raise_for_status()
                self.ready.set()
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        item = json.loads(line[6:]).get("item_id")
                        if item is not None:
                            self.seen.setdefault(item, time.perf_counter())
        except httpx.HTTPError:
            if not self.stop:  # the server went away before the benchmark was done
                raise


def live(url: str, runner: Runner, decisions: int) -> dict[str, Any]:
    """Commit-to-client delay of events over ``/events`` with 10 clients; the server's memory."""
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "serve", "benchmarks.web:pipeline",
                             "--db", url, "--port", "0", "--read-only"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        base, token = lines[1].split("open: ", 1)[1].strip().split("/?token=")
        time.sleep(0.5)
        idle = rss_kb(proc.pid)
        clients = [Listener(base, token) for _ in range(CLIENTS)]
        for c in clients:
            c.start()
        for c in clients:
            if not c.ready.wait(10):
                raise RuntimeError("a client could not open /events within 10 s")
        time.sleep(1.0)
        with_clients = rss_kb(proc.pid)
        waiting = [s.item_id for s in runner.items(stage="review", state="awaiting_review",
                                                   limit=decisions)]
        delays = []
        for item in waiting:
            start = time.perf_counter()
            runner.approve(item, "review", reviewer="bench")
            deadline = time.monotonic() + 10
            while not all(item in c.seen for c in clients):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"an event of {item} did not reach every client in 10 s")
                time.sleep(0.005)
            delays.append(max(c.seen[item] for c in clients) - start)
            time.sleep(0.05)
        after = rss_kb(proc.pid)
        for c in clients:
            c.stop = True
    finally:
        proc.terminate()
        proc.wait(15)
    return {"clients": CLIENTS, "decisions": len(delays),
            "delay_median_s": round(statistics.median(delays), 3), "delay_max_s": round(max(delays), 3),
            "rss_idle_mb": round(idle / 1024, 1), "rss_10_clients_mb": round(with_clients / 1024, 1),
            "rss_after_mb": round(after / 1024, 1)}


@contextlib.contextmanager
def _store_url(postgres: str | None, tmp: str) -> Iterator[str]:
    """A fresh SQLite file, or a fresh schema on the PostgreSQL server (dropped afterwards)."""
    if postgres is None:
        yield f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        return
    from .postgres import fresh_schema

    with fresh_schema(postgres) as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300 waiting reviews, 5 decisions")
    p.add_argument("--waiting", type=int, help="reviews waiting (default 10,000; --quick 300)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--postgres", metavar="URL", help="measure on this PostgreSQL server instead of SQLite")
    args = p.parse_args(argv)
    n = args.waiting or (300 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="treadle-web-bench-") as tmp, \
            _store_url(args.postgres, tmp) as url:
        t = time.perf_counter()
        runner = fill(url, n)
        print(f"filled: {n} reviews waiting in {time.perf_counter() - t:.1f} s")
        results: dict[str, Any] = {
            "mode": "quick" if args.quick else "full",
            "store": "postgresql" if args.postgres else "sqlite",
            "inbox": inbox(runner, n, 3 if args.quick else 10),
            "live": live(url, runner, 5 if args.quick else 20)}
        runner.store.close()
    for name, value in results["inbox"].items():
        print(f"  {name}: {value}")
    print(f"  live: {results['live']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
