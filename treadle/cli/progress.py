"""Live progress for ``run``: redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import threading
import time
from typing import Any, TextIO

from .. import signals
from ..pipeline import Pipeline

_EVENTS = {
    "stage_completed": "completed", "stage_failed": "failed", "stage_skipped": "skipped",
    "review_required": "review",
}


class Progress:
    """Counts transitions from the signals and shows them while a run goes on."""

    def __init__(self, pipeline: Pipeline, out: TextIO, *, tty: bool, interval: float | None = None) -> None:
        self.pipeline = pipeline
        self.out = out
        self.tty = tty
        self.interval = interval if interval is not None else (0.2 if tty else 2.0)
        self.per_stage: dict[str, dict[str, int]] = {s: {} for s in pipeline.order}
        self.totals: dict[str, int] = dict.fromkeys(("completed", "failed", "skipped", "review"), 0)
        self.items_done = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = 0
        self._last: dict[str, int] = {}
        self._receivers: list[tuple[Any, Any]] = []

    def _on(self, kind: str) -> Any:
        def receive(sender: Any, **data: Any) -> None:
            if kind == "failed" and data.get("final") is False:  # another attempt is coming
                if not self.tty:
                    self.out.write(f"retrying: {data.get('item_id')} {data.get('stage')} after attempt "
                                   f"{data.get('attempt')}: {data.get('error')}\n")
                    self.out.flush()
                return
            with self._lock:
                if kind == "item_finished":
                    self.items_done += 1
                    return
                stage = str(data.get("stage"))
                bucket = self.per_stage.setdefault(stage, {})
                bucket[kind] = bucket.get(kind, 0) + 1
                self.totals[kind] += 1
            if kind == "failed" and not self.tty:
                self.out.write(f"failed: {data.get('item_id')} {stage}: {data.get('error')}\n")
                self.out.flush()
        return receive

    def __enter__(self) -> Progress:
        for name, kind in [*_EVENTS.items(), ("item_finished", "item_finished")]:
            receiver = self._on(kind)
            signals.ALL[name].connect(receiver, sender=self.pipeline, weak=False)
            self._receivers.append((signals.ALL[name], receiver))
        self._thread = threading.Thread(target=self._loop, name="treadle-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for sig, receiver in self._receivers:
            sig.disconnect(receiver)
        self._draw(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return sum(self.totals.values()) / elapsed

    def _draw(self, final: bool = False) -> None:
        with self._lock:
            t = dict(self.totals)
            lines = [
                f"{stage:<20} " + "  ".join(f"{k} {v}" for k, v in sorted(c.items()))
                for stage, c in self.per_stage.items() if c
            ]
        head = (f"stages: {t['completed']} completed, {t['failed']} failed, {t['skipped']} skipped, "
                f"{t['review']} to review | items finished {self.items_done} | {self.rate():.0f}/s")
        if self.tty:
            block = [head, *lines]
            clear = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.out.write(clear + "".join(f"\x1b[2K{line}\n" for line in block))
            self._drawn = len(block)
        elif final or (any(t.values()) and t != self._last):
            self.out.write(("done: " if final else "progress: ") + head + "\n")
        self._last = t
        self.out.flush()
