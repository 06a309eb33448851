"""What ``run`` says at its end: totals over its passes, the next step, and its stop signals."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..engine.report import Counters
from ..status import RunReport


class Tally(Counters):
    """This command's stage runs, added up over the passes of ``run --watch``."""

    def add(self, report: RunReport) -> RunReport:
        """Count one pass; returns the report."""
        self.add_counts(report)
        return report

    def describe(self) -> str:
        """One line saying what was counted, so it agrees with the progress display.

        ``executed`` counts every run of a stage function or a subtask: besides
        the stage outcomes, failed attempts that are retried and subtask runs.
        """
        other = self.executed - self.completed - self.failed - self.skipped - self.awaiting_review
        text = (f"this run executed {self.executed} stage and subtask run(s): "
                f"{self.completed} stage(s) completed, {self.failed} failed, "
                f"{self.skipped} skipped, {self.awaiting_review} sent to review")
        if other > 0:
            text += f"; the other {other} were attempts to be retried or subtask runs"
        return text


def failure_hint(failures: Sequence[tuple[str, str, str | None]], *, target: str, memory: bool) -> str:
    """The next step for failed items: only one that can work.

    A ``SerializationError`` fails again on retry (the same code returns the
    same value): the stage's output must be fixed first. On ``memory://`` the
    items are gone when the process ends: no command can retry them.
    """
    unstorable = sorted({stage for _, stage, error in failures
                         if (error or "").startswith("SerializationError")})
    lines = []
    if unstorable:
        lines.append(f"the output of {', '.join(unstorable)} cannot be stored as JSON: fix what the "
                     "stage returns (plain dicts, lists, str, int, float, bool, None); a retry of the "
                     "same code fails again")
    if memory:
        lines.append("memory:// keeps nothing once this run ends: run with a sqlite:/// or "
                     "postgresql:// store to retry failed items later")
    elif unstorable:
        lines.append(f"then retry them with: python -m treadle retry {target} --all-failed")
    else:
        lines.append(f"retry them with: python -m treadle retry {target} --all-failed")
    return "\n".join(lines)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (main thread only).

    ``Runner.advance`` installs its own handlers for the time it runs and puts
    these back afterwards; these catch a signal between two passes of ``--watch``.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):
            pass
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
