"""Live progress for ``run``: a rich bar per stage on a terminal, plain lines otherwise.

The display reads the per-stage counts from the store (``Runner.counts``: one
grouped query, never a row per item) on a thread of its own, so it sees the
work of every runner sharing the store and costs the run nothing per stage
run: it connects to no signal. It reads at most every ``interval`` seconds,
and less often when the query is slow (at least 20 times the query's own
time apart, so it takes at most about 5% of one connection). Leaving the
block stops the thread and waits for it a bounded time: a slow or broken
store never keeps ``run`` from ending.

Per stage, *done* counts every row that is no longer ``pending`` or
``running`` (completed, skipped, failed, rejected, rolled back, or waiting
for review); *total* is the number of items. The rate is done rows per second
over the last 30 s, and the ETA the rows left at that rate.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, TextIO

import attrs

from ..runner import Runner
from .output import Look

#: Seconds of samples the rate is measured over.
RATE_WINDOW = 30.0
_OPEN = ("pending", "running")


@attrs.frozen
class StageProgress:
    """One stage's line: rows done of total, rows per second, seconds left (None: unknown)."""

    stage: str
    done: int
    total: int
    rate: float
    eta: float | None
    running: int
    failed: int
    review: int

    def plain(self) -> str:
        eta = f", ETA {_clock(self.eta)}" if self.eta is not None and self.done < self.total else ""
        extra = "".join(f", {n} {what}" for what, n in
                        (("running", self.running), ("failed", self.failed), ("to review", self.review))
                        if n)
        return f"{self.stage} {self.done}/{self.total} ({self.rate:.1f}/s{eta}{extra})"


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Rates:
    """Done counts sampled over time, per stage: the rate over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self.samples: dict[str, collections.deque[tuple[float, int]]] = {}

    def lines(self, counts: dict[str, dict[str, int]], now: float) -> list[StageProgress]:
        out = []
        for stage, c in counts.items():
            total = sum(c.values())
            done = total - sum(c.get(s, 0) for s in _OPEN)
            q = self.samples.setdefault(stage, collections.deque())
            q.append((now, done))
            while len(q) > 2 and q[1][0] <= now - self.window:
                q.popleft()
            t0, d0 = q[0]
            rate = (done - d0) / (now - t0) if now > t0 else 0.0
            eta = (total - done) / rate if rate > 0 else None
            out.append(StageProgress(stage, done, total, rate, eta, c.get("running", 0),
                                     c.get("failed", 0), c.get("awaiting_review", 0)))
        return out


class Progress:
    """Shows per-stage progress while the ``with`` block runs (see the module's doc)."""

    #: The thread's reads are at least this many times their own duration apart.
    COST_FACTOR = 20.0
    #: Seconds leaving the block waits at most for the final read.
    EXIT_WAIT = 10.0

    def __init__(self, runner: Runner, out: TextIO, *, look: Look | None = None,
                 interval: float | None = None) -> None:
        self.runner = runner
        self.out = out
        self.look = look if look is not None else Look.of(out)
        self.interval = interval if interval is not None else (5.0 if self.look.plain else 0.5)
        self.rates = Rates()
        self.last: list[StageProgress] = []
        self._wait = self.interval
        self._printed = ""
        self._closed = False  # the final lines are shown: nothing more is drawn
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> Progress:
        if not self.look.plain:
            self._bar = _rich_progress(self.look, self.out)
            self._bar.start()
        self._thread = threading.Thread(target=self._loop, name="treadle-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()  # the thread reads once more, shows the final lines and ends
        if self._thread is not None:
            self._thread.join(timeout=min(max(2.0, 2 * self._wait), self.EXIT_WAIT))
        with self._lock:
            if not self._closed:  # the store did not answer in time: show what we had
                self._closed = True
                self._show([attrs.evolve(p, eta=None) for p in self.last], final=True)
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    def _loop(self) -> None:
        try:
            while True:
                final = self._stop.is_set()
                started = time.monotonic()
                try:
                    counts = self.runner.counts()
                except Exception:  # noqa: BLE001 - a display never breaks a run
                    counts = None
                self._wait = max(self.interval, self.COST_FACTOR * (time.monotonic() - started))
                self._update(counts, final=final)
                if final or self._stop.wait(self._wait):
                    if not final:
                        continue  # stopped while waiting: one last read
                    return
        finally:
            close = getattr(self.runner.store, "close_thread_connection", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass

    def _update(self, counts: dict[str, dict[str, int]] | None, *, final: bool) -> None:
        with self._lock:
            if self._closed:
                return
            if counts is not None:
                self.last = self.rates.lines(counts, time.monotonic())
            if final:  # nothing more moves in this run: no time left to estimate
                self.last = [attrs.evolve(p, eta=None) for p in self.last]
                self._closed = True
            self._show(self.last, final=final)

    def _show(self, lines: list[StageProgress], *, final: bool) -> None:
        if self._bar is not None:
            for p in lines:
                task = self._tasks.get(p.stage)
                if task is None:
                    task = self._tasks[p.stage] = self._bar.add_task(p.stage, total=p.total, rate="",
                                                                    eta="-", extra="")
                eta = _clock(p.eta) if p.eta is not None and p.done < p.total else "-"
                extra = "  ".join(f"{n} {what}" for what, n in (
                    ("running", p.running), ("failed", p.failed), ("to review", p.review)) if n)
                self._bar.update(task, total=max(p.total, 1), completed=p.done,
                                 rate=f"{p.rate:.1f}/s", eta=eta, extra=extra)
            self._bar.refresh()
            return
        text = " | ".join(p.plain() for p in lines)
        if final or text != self._printed:
            self.out.write(("done: " if final else "progress: ") + text + "\n")
            self.out.flush()
            self._printed = text


def _rich_progress(look: Look, out: TextIO) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as RichProgress

    return RichProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
        TextColumn("{task.fields[extra]}"),
        console=look.console(out), auto_refresh=False, redirect_stdout=False,
        redirect_stderr=False, transient=False,
    )
