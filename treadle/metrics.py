"""Stage metrics: how long each stage takes, how often it fails, how fast it goes.

Returned by :meth:`treadle.Runner.stage_metrics` and shown by
``python -m treadle status``. They are computed in the store from the
history, which records every stage run as a ``running`` row when it was
claimed and a ``completed`` / ``failed`` / ``skipped`` / ``awaiting_review``
row (same item, stage and attempt) when its result was committed. To stay
fast on a large store they read a bounded sample: the store's last
``sample`` history rows (20,000 by default: some 8,000 stage runs), not
the whole history; see docs/observability.md, "Stage metrics".
"""

from __future__ import annotations

import attrs

#: How many of the store's newest history rows the metrics read, at most.
DEFAULT_SAMPLE = 20_000
#: Seconds over which throughput is measured.
DEFAULT_WINDOW = 300.0


@attrs.frozen
class StageMetrics:
    """One stage's metrics (durations in seconds; rates are fractions of 0..1).

    ``done``, ``oldest_review_age`` and ``waiting_reviews`` describe the whole
    store now; the others describe the finished runs of this stage among the
    sampled history rows (``runs`` of them), and are None when there is none.
    """

    stage: str
    #: Items whose stage is completed or skipped (the whole store).
    done: int = 0
    #: Finished runs of this stage in the sample (every attempt counts).
    runs: int = 0
    #: Median and 95th percentile of a run's duration, claim to committed result
    #: (nearest rank: the value below which 50 % / 95 % of the runs fall).
    p50: float | None = None
    p95: float | None = None
    #: Share of the runs that ended failed (including attempts that were retried).
    failure_rate: float | None = None
    #: Share of the runs that were a repeat attempt (attempt 2 or later).
    retry_rate: float | None = None
    #: Runs finished per minute over the last ``window`` seconds (or since the
    #: sample's first run, if that is later).
    throughput: float = 0.0
    #: Stages of this stage waiting for review now, and how long (seconds) the
    #: oldest of them has waited.
    waiting_reviews: int = 0
    oldest_review_age: float | None = None


@attrs.frozen
class RunSample:
    """What a store counts for one stage (an internal record; see ``StageMetrics``)."""

    stage: str
    runs: int
    failed: int
    retried: int
    recent: int
    p50: float | None
    p95: float | None
    first_start: float | None


def build(stage: str, sample: RunSample | None, *, done: int, waiting: int,
          oldest_review: float | None, now: float, window: float) -> StageMetrics:
    """A stage's :class:`StageMetrics` from what the store counted (at the store's ``now``)."""
    age = None if oldest_review is None else max(0.0, now - oldest_review)
    if sample is None or sample.runs == 0:
        return StageMetrics(stage, done=done, waiting_reviews=waiting, oldest_review_age=age)
    start = max(now - window, sample.first_start if sample.first_start is not None else now - window)
    span = max(now - start, 1.0)
    return StageMetrics(
        stage, done=done, runs=sample.runs, p50=sample.p50, p95=sample.p95,
        failure_rate=sample.failed / sample.runs, retry_rate=sample.retried / sample.runs,
        throughput=sample.recent * 60.0 / span, waiting_reviews=waiting, oldest_review_age=age,
    )


def percentile(sorted_values: list[float], pct: int) -> float | None:
    """Nearest-rank percentile of sorted values: the one at rank ceil(n * pct / 100)."""
    n = len(sorted_values)
    if not n:
        return None
    return sorted_values[max(1, (n * pct + 99) // 100) - 1]


__all__ = ["DEFAULT_SAMPLE", "DEFAULT_WINDOW", "StageMetrics"]
