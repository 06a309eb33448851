"""Release desk: a person picks what happens to each track, fills in its release
details, and is told by webhook when something waits.

    python examples/releases.py       # run; a local HTTP receiver prints each notification
    python -m treadle reviews examples/releases.py:pipeline --db sqlite:///releases.db --mine --reviewer ana
    python -m treadle approve examples/releases.py:pipeline t1 triage --choice release --reviewer ana \\
        --db sqlite:///releases.db
    python examples/releases.py       # the details form now waits for t1
    python -m treadle review examples/releases.py:pipeline --db sqlite:///releases.db
    python examples/releases.py       # t1 is published with the details typed in

The ``triage`` review offers three options (choices), only ana or bo may
decide it (assigned reviewers), and ``treadle.chose`` sends the track down
the chosen branch. The ``details`` review is a form: its answer is checked
field by field and reaches ``publish`` as a ``ReleaseInfo``. Both notify a
webhook (``$RELEASES_WEBHOOK``; by default a receiver this script starts on a
free local port).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs

from treadle import Pipeline, Review, Runner, chose, open_store, stage
from treadle.contrib.notify import webhook


@attrs.frozen
class Track:
    id: str
    title: str
    artist: str


@attrs.frozen
class ReleaseInfo:
    isrc: str
    label: str
    year: int = 2026


TRACKS = [Track("t1", "Morning Tide", "Ana Lee"), Track("t2", "Static", "The Bo Band")]


def build(hook_url: str) -> Pipeline:
    """The pipeline, notifying ``hook_url`` of each review request."""
    notify = webhook(hook_url, attempts=2, wait=0.1, timeout=5, name="release desk")

    @stage()
    def check(track: Track) -> dict[str, Any]:
        return {"explicit": "static" in track.title.lower()}

    @stage(after=[check], reviewers=["ana", "bo"], notify=notify)
    def triage(track: Track, ctx: Any) -> Review:
        return Review({"title": track.title, "artist": track.artist, **ctx.outputs["check"]},
                      message="Release it, hold it, or send it to legal?",
                      options=["release", "hold", "legal"])

    @stage(after=[triage], when=chose("triage", "release"), notify=notify,
           output_type=ReleaseInfo)
    def details(track: Track) -> Review:
        return Review({"isrc": "", "label": "Treadle Records"}, form=ReleaseInfo,
                      message=f"Release details for {track.title!r}")

    @stage(after=[details], when=chose("triage", "release"))
    def publish(track: Track, ctx: Any) -> dict[str, Any]:
        info: ReleaseInfo = ctx.outputs["details"]
        return {"published": track.title, "isrc": info.isrc, "label": info.label,
                "year": info.year}

    @stage(after=[triage], when=chose("triage", "legal"))
    def legal(track: Track) -> dict[str, str]:
        return {"ticket": f"LEGAL-{track.id}"}

    return Pipeline("releases", [check, triage, details, publish, legal], item_type=Track,
                    source=lambda: iter(TRACKS))


#: For the command line (python -m treadle ... examples/releases.py:pipeline).
pipeline = build(os.environ.get("RELEASES_WEBHOOK", "http://127.0.0.1:8399/reviews"))


@contextmanager
def receiver() -> Iterator[str]:
    """A local HTTP endpoint that prints each review request it is sent; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            who = ", ".join(request["assignees"]) or "anyone"
            print(f"notified: {request['id']} ({request['kind']}) for {who}: "
                  f"{request['message']}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/reviews"
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///releases.db")
    with receiver() as local:
        runner = Runner(build(os.environ.get("RELEASES_WEBHOOK", local)), open_store(url))
        runner.run()
        runner.wait_notifications(10)
    for status in runner.items():
        stages = status.stages
        done = next((f"{name}: {json.dumps(stages[name].output)}" for name in ("publish", "legal")
                     if stages[name].state == "completed"), None)
        waiting = [n for n, st in stages.items() if st.state == "awaiting_review"]
        where = "waits at " + ", ".join(waiting) if waiting else status.state.value
        print(f"{status.item_id}: {done or where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
