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
- named limits (``Pipeline(limits=...)``, row ``limit:<name>``): a rate is a
  bucket every stage taking it draws ``units`` tokens a run from; a
  concurrency limit counts ``units`` for each running row of every stage
  taking it, like a stage's global limit.
- fan-out subtask keys (``FanOut(rate=...)``): a subtask starts only with a
  token of its key's bucket (``limit:<key>``, shared with a named rate limit
  of that name); the others stay pending and the seconds until the next
  token come back (``CommitResult.sub_waits``).

Priorities order the claim itself (``ORDER BY priority DESC, id``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from ..limits import NamedLimit, Rate, StageLimit
from .records import HistoryRow, Shape, dumps
from .tx import Tx


@attrs.frozen
class LimitStatus:
    """One shared limit as the store sees it now (``Runner.limits()``): a stage's own
    (``stage`` set) or a named limit of the Pipeline (``limit`` set, with the
    ``stages`` that take it)."""

    stage: str | None         #: the limited stage (None for a named limit)
    rate: str | None          #: e.g. "5/s"
    concurrency: int | None   #: the global limit (units, for a named limit)
    tokens: float | None      #: starts allowed right now (rate only)
    waiting: int              #: ready runs of the stage(s) not yet claimed
    in_use: int               #: runs running now in every runner (units, for a named limit)
    limit: str | None = None  #: the named limit's name
    stages: tuple[str, ...] = ()  #: the stages that take the named limit


@attrs.frozen
class SubtaskWant:
    """A fan-out subtask that may start once its key's bucket has a token."""

    item_id: str
    stage: str
    name: str
    attempt: int   #: the attempt it starts as
    key: str       #: its bucket's key in the limit table (``limit:<key>``)
    rate: Rate


@attrs.frozen
class Claimed:
    """What the limits phase of one commit took."""

    rows: list[tuple[str, str, int]]
    #: rate-limited stages left without a token -> seconds until the next is due
    waits: dict[str, float]
    granted: list[SubtaskWant]
    #: subtasks left without a token: (item, stage, name) -> seconds until one is due
    sub_waits: dict[tuple[str, str, str], float]


def limits_of(shape: Shape) -> Mapping[str, StageLimit]:
    """The shape's store-enforced limits (none for a shape that declares none)."""
    limits: Mapping[str, StageLimit] = getattr(shape, "limits", None) or {}
    return limits


def named_of(shape: Shape) -> Mapping[str, NamedLimit]:
    """The shape's named limits (``Pipeline(limits=...)``)."""
    named: Mapping[str, NamedLimit] = getattr(shape, "named_limits", None) or {}
    return named


def refill(rate: Rate, bucket: tuple[float, float] | None, now: float) -> float:
    """Tokens in a rate's bucket at ``now`` (a bucket never used starts full)."""
    if bucket is None:
        return rate.burst
    tokens, at = bucket
    return min(rate.burst, tokens + max(0.0, now - at) * rate.per_second)


class Book:
    """The limit rows one transaction locked (in key order), and their buckets' tokens."""

    def __init__(self, tx: Tx, pipeline: str, keys: set[str]) -> None:
        self.tx, self.pipeline, self.now = tx, pipeline, tx.now
        self.rows = tx.take_limits(pipeline, sorted(keys)) if keys else {}
        self.tokens: dict[str, float] = {}
        self.taken: set[str] = set()

    def level(self, key: str, rate: Rate) -> float:
        if key not in self.tokens:
            self.tokens[key] = refill(rate, self.rows.get(key), self.now)
        return self.tokens[key]

    def allow(self, key: str, rate: Rate, units: int) -> int:
        """Runs of ``units`` tokens each the bucket allows now."""
        return math.floor(self.level(key, rate) / units + 1e-9)

    def take(self, key: str, rate: Rate, units: float) -> None:
        self.tokens[key] = self.level(key, rate) - units
        self.taken.add(key)

    def wait(self, key: str, rate: Rate, units: int) -> float | None:
        """Seconds until the bucket holds ``units`` tokens (None: it does now)."""
        short = units - self.level(key, rate)
        return None if short < 1e-9 else short / rate.per_second

    def save(self) -> None:
        """Write back the buckets tokens were taken from (the others stay as they were)."""
        saves = []
        for key in sorted(self.taken):
            tokens, bucket = self.tokens[key], self.rows.get(key)
            # never move the bucket's clock back (a claim that waited for the lock
            # may have read the time before the one that held it): no token twice
            saves.append((key, tokens, self.now if bucket is None else max(self.now, bucket[1])))
        if saves:
            self.tx.save_limits(self.pipeline, saves)


def claim(tx: Tx, shape: Shape, owner: str, stages: Sequence[str], limit: int,
          only: Sequence[str] | None, wanted: Sequence[SubtaskWant] = ()) -> Claimed:
    """Claim up to ``limit`` rows of ``stages`` within the shape's limits, and grant
    the ``wanted`` subtasks the tokens their keys' buckets hold.

    Every limit row the claim needs is locked at once, in key order, and last
    in the transaction (no other lock is taken while they are held but the
    rows claimed): two claims never wait on each other crosswise.
    """
    limits, named = limits_of(shape), named_of(shape)
    limited = sorted(s for s in stages if s in limits) if limit > 0 else []
    free = [s for s in stages if s not in limits] if limit > 0 else []
    keys = {w.key for w in wanted}
    for s in limited:
        if limits[s].rate is not None or limits[s].concurrency is not None:
            keys.add(s)
        keys.update(named[n].key for n, _ in limits[s].uses)
    book = Book(tx, shape.name, keys)
    running, used = _in_use(tx, shape, limited)
    granted: list[SubtaskWant] = []
    sub_waits: dict[tuple[str, str, str], float] = {}
    for w in wanted:  # fan-outs already running go first
        if book.allow(w.key, w.rate, 1) >= 1:
            book.take(w.key, w.rate, 1)
            granted.append(w)
        else:
            sub_waits[(w.item_id, w.stage, w.name)] = book.wait(w.key, w.rate, 1) or 0.0
    rows: list[tuple[str, str, int]] = []
    waits: dict[str, float] = {}
    for s in limited:
        lim = limits[s]
        buckets: list[tuple[str, Rate | None, int]] = [(s, lim.rate, 1)] if lim.rate else []
        buckets += [(named[n].key, named[n].rate, u) for n, u in lim.uses
                    if named[n].rate is not None]
        allow = limit - len(rows)
        for key, rate, units in buckets:
            assert rate is not None
            allow = min(allow, book.allow(key, rate, units))
        if lim.concurrency is not None:
            allow = min(allow, lim.concurrency - running.get(s, 0))
        for n, units in lim.uses:
            cap = named[n].concurrency
            if cap is not None:
                allow = min(allow, (cap - used[n]) // units)
        got = tx.claim(shape.name, owner, [s], allow, only) if allow > 0 else []
        rows += got
        running[s] = running.get(s, 0) + len(got)
        for n, units in lim.uses:
            used[n] = used.get(n, 0) + units * len(got)
        due = []
        for key, rate, units in buckets:
            assert rate is not None
            if got:
                book.take(key, rate, units * len(got))
            wait = book.wait(key, rate, units)
            if wait is not None:
                due.append(wait)
        if due:
            waits[s] = max(due)
    book.save()
    if free and len(rows) < limit:
        rows += tx.claim(shape.name, owner, free, limit - len(rows), only)
    return Claimed(rows, waits, granted, sub_waits)


def _in_use(tx: Tx, shape: Shape, limited: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Running rows of the stages whose counts bind, and the units in use of each
    named concurrency limit those stages take (counted over every stage taking it)."""
    limits, named = limits_of(shape), named_of(shape)
    counted = {s for s in limited if limits[s].concurrency is not None}
    names = {n for s in limited for n, _ in limits[s].uses if named[n].concurrency is not None}
    takers = {s: lim.uses for s, lim in limits.items()
              if any(n in names for n, _ in lim.uses)}
    counted |= set(takers)
    running = tx.running_counts(shape.name, sorted(counted)) if counted else {}
    used = dict.fromkeys(names, 0)
    for s, uses in takers.items():
        for n, units in uses:
            if n in used:
                used[n] += units * running.get(s, 0)
    return running, used


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
    """Every limited stage's limits, then each named limit, read in one transaction."""
    limits, named = limits_of(shape), named_of(shape)
    names = [s for s in shape.order if s in limits]
    if not names and not named:
        return []
    own = [s for s in names if limits[s].rate is not None or limits[s].concurrency is not None]
    buckets = tx.take_limits(shape.name, [*own, *(n.key for n in named.values())], lock=False)
    running = tx.running_counts(shape.name, names) if names else {}
    ready = tx.ready_counts(shape.name, names) if names else {}
    out = []
    for s in own:
        lim = limits[s]
        rate = None if lim.rate is None else str(lim.rate)
        tokens = None if lim.rate is None else round(refill(lim.rate, buckets.get(s), tx.now), 2)
        out.append(LimitStatus(s, rate, lim.concurrency, tokens, ready[s], running[s]))
    for n, nl in named.items():
        takers = [(s, u) for s in names for m, u in limits[s].uses if m == n]
        tokens = None if nl.rate is None else round(refill(nl.rate, buckets.get(nl.key), tx.now), 2)
        in_use = sum(running[s] * (u if nl.concurrency is not None else 1) for s, u in takers)
        out.append(LimitStatus(None, None if nl.rate is None else str(nl.rate), nl.concurrency,
                               tokens, sum(ready[s] for s, _ in takers), in_use, limit=n,
                               stages=tuple(s for s, _ in takers)))
    return out


__all__ = ["Book", "Claimed", "LimitStatus", "SubtaskWant", "claim", "limits_of", "named_of",
           "prioritize", "refill", "set_priorities", "status"]
