"""Flow control in the claim transaction: rate limits, global concurrency, priorities.

A stage with a store-enforced limit (``@stage(rate=...)`` or
``@stage(concurrency=n, scope="global")``, collected in ``Pipeline.limits``)
is claimed on its own, after its limit row is locked (``Tx.take_limits``, in
key order, so two claims never wait on each other crosswise):

- rate: a token bucket per stage in ``treadle_limit`` (tokens as of
  ``updated_at``; refilled at ``count / per`` tokens a second up to ``count``).
  A claim takes one token per run; when too few are left, the time the next
  one is due comes back to the runner (``CommitResult.waits``), which leaves
  the stage out of its claims until then.
- global concurrency: the stage's running rows are counted (through the
  running rows' partial index) with the limit row locked. A run stops
  counting as soon as its row leaves ``running``, whichever way it leaves
  (result, failure, timeout, release, recovery of a dead runner's claims,
  cancel), so there is no counter to leak.

Priorities order the claim itself (``ORDER BY priority DESC, id``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from ..limits import StageLimit
from .records import HistoryRow, Shape, dumps
from .tx import Tx


@attrs.frozen
class LimitStatus:
    """One stage's shared limits as the store sees them now (``Runner.limits()``)."""

    stage: str
    rate: str | None          #: e.g. "5/s"
    concurrency: int | None   #: the global limit
    tokens: float | None      #: starts allowed right now (rate only)
    waiting: int              #: ready runs of the stage not yet claimed
    in_use: int               #: runs of the stage running now (every runner)


def limits_of(shape: Shape) -> Mapping[str, StageLimit]:
    """The shape's store-enforced limits (none for a shape that declares none)."""
    limits: Mapping[str, StageLimit] = getattr(shape, "limits", None) or {}
    return limits


def refill(limit: StageLimit, bucket: tuple[float, float] | None, now: float) -> float:
    """Tokens in a rate's bucket at ``now`` (a bucket never used starts full)."""
    rate = limit.rate
    assert rate is not None
    if bucket is None:
        return rate.burst
    tokens, at = bucket
    return min(rate.burst, tokens + max(0.0, now - at) * rate.per_second)


def claim(tx: Tx, shape: Shape, owner: str, stages: Sequence[str], limit: int,
          only: Sequence[str] | None) -> tuple[list[tuple[str, str, int]], dict[str, float]]:
    """Claim up to ``limit`` rows of ``stages`` within the shape's limits.

    Returns the claimed (item_id, stage, attempt) and, for each rate-limited
    stage left without a token, the seconds until its next token is due.
    """
    limits = limits_of(shape)
    limited = sorted(s for s in stages if s in limits)
    free = [s for s in stages if s not in limits]
    buckets = tx.take_limits(shape.name, limited)
    counted = [s for s in limited if limits[s].concurrency is not None]
    running = tx.running_counts(shape.name, counted) if counted else {}
    now = tx.now
    rows: list[tuple[str, str, int]] = []
    waits: dict[str, float] = {}
    saves: list[tuple[str, float, float]] = []
    for s in limited:
        lim = limits[s]
        allow = limit - len(rows)
        tokens = 0.0
        if lim.rate is not None:
            tokens = refill(lim, buckets.get(s), now)
            allow = min(allow, math.floor(tokens + 1e-9))
        if lim.concurrency is not None:
            allow = min(allow, lim.concurrency - running.get(s, 0))
        got = tx.claim(shape.name, owner, [s], allow, only) if allow > 0 else []
        rows += got
        if lim.rate is not None:
            tokens -= len(got)
            # never move the bucket's clock back (a claim that waited for the lock
            # may have read the time before the one that held it): no token twice
            bucket = buckets.get(s)
            if got:  # a bucket nothing was taken from stays as it was (no write)
                saves.append((s, tokens, now if bucket is None else max(now, bucket[1])))
            if tokens < 1 - 1e-9:
                waits[s] = (1 - tokens) / lim.rate.per_second
    if saves:
        tx.save_limits(shape.name, saves)
    if free and len(rows) < limit:
        rows += tx.claim(shape.name, owner, free, limit - len(rows), only)
    return rows, waits


def set_priorities(tx: Tx, shape: Shape, item_ids: Sequence[str], priority: int | None) -> None:
    """Priorities of items just submitted: ``priority`` for every stage, or each
    stage's default (``@stage(priority=...)``) when None."""
    defaults: Mapping[str, int] = getattr(shape, "priorities", None) or {}
    if priority is not None:
        tx.set_priority(shape.name, item_ids, priority)
        return
    by_priority: dict[int, list[str]] = {}
    for stage, p in defaults.items():
        by_priority.setdefault(p, []).append(stage)
    for p, stages in sorted(by_priority.items()):
        tx.set_priority(shape.name, item_ids, p, stages)


def prioritize(tx: Tx, shape: Shape, item_ids: Sequence[str], priority: int,
               actor: str) -> list[str]:
    """Set the priority of known items (every stage row); an unknown id raises
    ``ItemNotFoundError`` before anything changes. Returns the ids."""
    ids = list(dict.fromkeys(item_ids))
    known = tx.item_priorities(shape.name, ids)
    for item_id in ids:
        if item_id not in known:
            tx.require_item(shape.name, item_id)  # raises ItemNotFoundError
    tx.set_priority(shape.name, ids, priority)
    tx.append_history(shape.name, [
        HistoryRow(i, None, "prioritized", 0, actor, details=dumps(
            {"priority": priority, "was": known[i]}, what="priority"))
        for i in ids])
    return ids


def status(tx: Tx, shape: Shape) -> list[LimitStatus]:
    """The shared limits of every limited stage, read in one transaction."""
    limits = limits_of(shape)
    names = [s for s in shape.order if s in limits]
    if not names:
        return []
    buckets = tx.take_limits(shape.name, names, lock=False)
    running = tx.running_counts(shape.name, names)
    ready = tx.ready_counts(shape.name, names)
    out = []
    for s in names:
        lim = limits[s]
        rate = None
        tokens = None
        if lim.rate is not None:
            rate = str(lim.rate)
            tokens = round(refill(lim, buckets.get(s), tx.now), 2)
        out.append(LimitStatus(s, rate, lim.concurrency, tokens, ready[s], running[s]))
    return out


__all__ = ["LimitStatus", "claim", "limits_of", "prioritize", "refill", "set_priorities",
           "status"]
