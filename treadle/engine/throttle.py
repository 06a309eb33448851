"""Rate-limited stages the runner leaves out of its claims until their next token is due.

The store tells each commit which rate-limited stages it left without a
token and when the next one is due (``CommitResult.waits``). Until then the
runner does not ask for those stages (no lock on their bucket, no claim that
cannot succeed), and it sleeps no longer than until the first one is due, so
it neither polls nor holds a worker while it waits.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence


class Throttle:
    """When each throttled stage may be claimed again (monotonic clock), and the
    seconds each was held back, for the run's report."""

    def __init__(self, order: Sequence[str]) -> None:
        self.order = tuple(order)
        self.until: dict[str, float] = {}
        self.waited: dict[str, float] = {}

    def note(self, waits: Mapping[str, float]) -> None:
        """Record the waits a commit reported (seconds until the next token)."""
        if not waits:
            return
        now = time.monotonic()
        for stage, seconds in waits.items():
            self.until[stage] = now + seconds
            self.waited[stage] = self.waited.get(stage, 0.0) + seconds

    def stages(self, allowed: Sequence[str] | None) -> Sequence[str] | None:
        """``allowed`` (None: every stage) without the stages still waiting for a token."""
        if not self.until:
            return allowed
        now = time.monotonic()
        for stage in [s for s, t in self.until.items() if t <= now]:
            del self.until[stage]
        if not self.until:
            return allowed
        return [s for s in (self.order if allowed is None else allowed) if s not in self.until]

    def wait(self, longest: float) -> float:
        """Seconds to sleep at most: ``longest``, or less when a token is due sooner."""
        if not self.until:
            return longest
        return min(longest, max(0.0, min(self.until.values()) - time.monotonic()))


__all__ = ["Throttle"]
