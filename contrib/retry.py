"""Retry policies built from tenacity's strategy objects.

    from tenacity import retry_if_exception_type, stop_after_attempt, wait_exponential
    from treadle.contrib.retry import RetryPolicy

    @stage(retry=RetryPolicy(stop=stop_after_attempt(5),
                             wait=wait_exponential(multiplier=1, max=60),
                             retry=retry_if_exception_type(ConnectionError)))
    def fetch(item): ...

A retry policy is any callable ``(attempt, error) -> seconds | None``: after
attempt number ``attempt`` (from 1) failed with ``error``, return how long to
wait before the next attempt, or ``None`` to give up. treadle never sleeps in
a worker: the stage goes back to ``pending`` with a stored not-before time,
so the wait frees the pool thread and survives a restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
from tenacity import (
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

#: The shape of every retry policy.
RetryDecider = Callable[[int, BaseException], "float | None"]


@attrs.frozen
class RetryPolicy:
    """Decide retries with tenacity's ``stop``, ``wait`` and ``retry`` strategies.

    Defaults: 3 attempts in all, exponential wait 0.1 s, 0.2 s, ... up to 5 s,
    retry on any ``Exception``.
    """

    stop: Any = attrs.field(factory=lambda: stop_after_attempt(3))
    wait: Any = attrs.field(factory=lambda: wait_exponential(multiplier=0.1, max=5))
    retry: Any = attrs.field(factory=lambda: retry_if_exception_type(Exception))

    def __call__(self, attempt: int, error: BaseException, elapsed: float = 0.0) -> float | None:
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        state.start_time = time.monotonic() - elapsed
        state.set_exception((type(error), error, error.__traceback__))
        if not self.retry(state) or self.stop(state):
            return None
        return max(0.0, float(self.wait(state)))


def attempts(n: int) -> RetryPolicy:
    """``@stage(retry=n)``: n attempts in all with a short exponential wait."""
    return RetryPolicy(stop=stop_after_attempt(n))


def resolve(retry: Any) -> RetryDecider | None:
    """The policy for a stage's ``retry=`` option (None, an int, or a callable)."""
    if retry is None:
        return None
    if isinstance(retry, int):
        return attempts(retry) if retry > 1 else None
    decider: RetryDecider = retry
    return decider
