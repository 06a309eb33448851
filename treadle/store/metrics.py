"""Stage metrics from the history: in SQL for the SQL stores, in Python for the memory store.

A *run* is a ``running`` history row followed, for the same item and stage,
by a ``completed`` / ``failed`` / ``skipped`` / ``awaiting_review`` row of the
same attempt (subtask rows are not stage runs). Both versions read only the
store's newest ``sample`` history rows (every pipeline's: the bound is on
history ids, so finding it costs one primary-key lookup) and compute the
same numbers: the SQL version pairs the rows with ``LAG`` and ranks the
durations with ``ROW_NUMBER`` inside the database, so only one row per stage
comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..metrics import RunSample, StageMetrics, build, percentile
from .records import AWAITING, COMPLETED, FAILED, RUNNING, SKIPPED, Shape

ENDS = (COMPLETED, FAILED, SKIPPED, AWAITING)

# The newest history rows of the pipeline (bounded by id: ``pipeline || ''`` keeps
# SQLite from scanning the pipeline's whole history through its index instead),
# each run's end paired
# with the row before it of the same item and stage; durations ranked per stage.
RUNS_SQL = f"""
WITH h AS (
  SELECT stage, state, attempt, at,
         LAG(state) OVER w AS prev_state, LAG(attempt) OVER w AS prev_attempt,
         LAG(at) OVER w AS prev_at
  FROM treadle_history
  WHERE id > ? AND id <= ? AND pipeline || '' = ? AND subtask IS NULL AND stage IS NOT NULL
  WINDOW w AS (PARTITION BY item_id, stage ORDER BY id)
), runs AS (
  SELECT stage, state, attempt, at, prev_at, at - prev_at AS took FROM h
  WHERE prev_state = '{RUNNING}' AND prev_attempt = attempt
    AND state IN ({", ".join(f"'{s}'" for s in ENDS)})
), ranked AS (
  SELECT stage, state, attempt, at, prev_at, took,
         ROW_NUMBER() OVER (PARTITION BY stage ORDER BY took) AS rn,
         COUNT(*) OVER (PARTITION BY stage) AS n
  FROM runs
)
SELECT stage, count(*),
       sum(CASE WHEN state = '{FAILED}' THEN 1 ELSE 0 END),
       sum(CASE WHEN attempt > 1 THEN 1 ELSE 0 END),
       sum(CASE WHEN at >= ? THEN 1 ELSE 0 END),
       max(CASE WHEN rn = (n * 50 + 99) / 100 THEN took END),
       max(CASE WHEN rn = (n * 95 + 99) / 100 THEN took END),
       min(prev_at)
FROM ranked GROUP BY stage
"""


def sql_stage_metrics(store: Any, shape: Shape, *, window: float, sample: int
                      ) -> dict[str, StageMetrics]:
    """Metrics of every stage of ``shape`` from an SQL store (see the module's doc)."""
    cur = store._connection().cursor()
    now = store._now(cur)
    top = store._read("SELECT max(id) FROM treadle_history")[0][0] or 0
    samples = {
        r[0]: RunSample(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]),
                        None if r[5] is None else float(r[5]), None if r[6] is None else float(r[6]),
                        None if r[7] is None else float(r[7]))
        for r in store._read(RUNS_SQL, (top - sample, top, shape.name, now - window))
    }
    counts = store.counts(shape)  # one grouped query for done and waiting
    out = {}
    for stage in shape.order:
        c = counts.get(stage, {})
        waiting = c.get(AWAITING, 0)
        oldest = store._read(  # an index lookup: (pipeline, stage, state, updated_at)
            "SELECT min(updated_at) FROM treadle_stage WHERE pipeline=? AND stage=? "
            f"AND state='{AWAITING}'", (shape.name, stage))[0][0] if waiting else None
        out[stage] = build(stage, samples.get(stage), done=c.get(COMPLETED, 0) + c.get(SKIPPED, 0),
                           waiting=waiting, oldest_review=oldest, now=now, window=window)
    return out


def memory_stage_metrics(tables: Any, shape: Shape, *, now: float, window: float, sample: int
                         ) -> dict[str, StageMetrics]:
    """The same metrics from the memory store's tables (the caller holds its lock)."""
    history: Sequence[tuple[int, str, float, Any]] = tables.history
    top = history[-1][0] if history else 0
    lo = len(history)
    while lo > 0 and history[lo - 1][0] > top - sample:
        lo -= 1
    last: dict[tuple[str, str], tuple[str, int, float]] = {}
    runs: dict[str, list[tuple[str, int, float, float]]] = {}
    for _, pipeline, at, row in history[lo:]:
        if pipeline != shape.name or row.subtask is not None or row.stage is None:
            continue
        key = (row.item_id, row.stage)
        prev = last.get(key)
        last[key] = (row.state, row.attempt, at)
        if prev is not None and prev[0] == RUNNING and prev[1] == row.attempt and row.state in ENDS:
            runs.setdefault(row.stage, []).append((row.state, row.attempt, at, prev[2]))
    done: dict[str, int] = {}
    waiting: dict[str, int] = {}
    oldest: dict[str, float] = {}
    for (p, _, s), r in tables.stages.items():
        if p != shape.name:
            continue
        if r.state in (COMPLETED, SKIPPED):
            done[s] = done.get(s, 0) + 1
        elif r.state == AWAITING:
            waiting[s] = waiting.get(s, 0) + 1
            oldest[s] = min(oldest.get(s, r.updated_at), r.updated_at)
    out = {}
    for stage in shape.order:
        mine = runs.get(stage, [])
        took = sorted(at - start for _, _, at, start in mine)
        sampled = RunSample(
            stage, len(mine), sum(1 for st, _, _, _ in mine if st == FAILED),
            sum(1 for _, a, _, _ in mine if a > 1), sum(1 for _, _, at, _ in mine if at >= now - window),
            percentile(took, 50), percentile(took, 95),
            min((start for _, _, _, start in mine), default=None)) if mine else None
        out[stage] = build(stage, sampled, done=done.get(stage, 0), waiting=waiting.get(stage, 0),
                           oldest_review=oldest.get(stage), now=now, window=window)
    return out
