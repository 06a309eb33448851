"""Rate-limited work the runner holds back until its next token is due.

The store tells each commit which rate-limited stages it left without a
token and when the next one is due (``CommitResult.waits``). Until then the
runner does not ask for those stages (no lock on their bucket, no claim that
cannot succeed), and it sleeps no longer than until the first one is due, so
it neither polls nor holds a worker while it waits.

Fan-out subtasks whose key has a rate wait the same way, in a queue per key
(:class:`KeyQueue`): when the key's next token is due, the first few of them
(at most the rate's burst) ask for a token again; the rest keep their place.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence

from ..limits import NAMED, Rate
from .tasks import StageTask


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


class KeyQueue:
    """Fan-out subtasks waiting for a token of their key, first come first served per key."""

    def __init__(self) -> None:
        self.waiting: dict[str, collections.deque[tuple[StageTask, str]]] = {}
        self.due: dict[str, float] = {}       # monotonic time the key's next token is due
        self.burst: dict[str, int] = {}
        self.waited: dict[str, float] = {}    # seconds each key was held back (the report)

    def __len__(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    def defer(self, key: str, rate: Rate, parent: StageTask, name: str,
              seconds: float | None = None) -> None:
        """Queue a subtask: a new one (``seconds`` None) at the back, due with its key;
        one the store just refused a token at the front, due in ``seconds``."""
        queue = self.waiting.setdefault(key, collections.deque())
        self.burst[key] = max(1, int(rate.burst))
        if seconds is None:
            queue.append((parent, name))
            self.due.setdefault(key, time.monotonic())
            return
        queue.appendleft((parent, name))
        now = time.monotonic()
        due, was = now + seconds, self.due.get(key)
        if was is None or was < due:  # count each second held back once, however many wait
            self.waited[NAMED + key] = self.waited.get(NAMED + key, 0.0) + due - max(now, was or now)
            self.due[key] = due

    def take_due(self, now: float) -> list[tuple[StageTask, str]]:
        """The subtasks whose key's token is due now (at most the burst of each key)."""
        out = []
        for key in [k for k, t in self.due.items() if t <= now]:
            del self.due[key]
            queue = self.waiting[key]
            for _ in range(min(self.burst[key], len(queue))):
                out.append(queue.popleft())
        return out

    def settle(self) -> None:
        """After a commit: a key with subtasks left and no token due asks again at once
        (every token its last requests asked for was granted)."""
        now = time.monotonic()
        for key in list(self.waiting):
            if not self.waiting[key]:
                del self.waiting[key]
                self.due.pop(key, None)
            elif key not in self.due:
                self.due[key] = now

    def next_due(self) -> float | None:
        return min(self.due.values()) if self.due else None

    def forget(self, drop: Callable[[StageTask], bool]) -> list[StageTask]:
        """Remove the subtasks of the fan-outs ``drop`` says; returns their fan-outs."""
        gone = []
        for key, queue in self.waiting.items():
            kept = collections.deque(e for e in queue if not drop(e[0]))
            gone += [e[0] for e in queue if drop(e[0])]
            self.waiting[key] = kept
        self.settle()
        return gone


__all__ = ["KeyQueue", "Throttle"]
