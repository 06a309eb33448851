"""Fan-out bookkeeping in the store: subtask rows, their claims and results.

A fan-out stage keeps its stage row ``running`` under its runner while its
subtasks run. Starting a fan-out (in the same group commit as other work)
claims every subtask that has not completed yet, keeps the stored outputs of
those that have, and records subtasks that disappeared from the FanOut as
dropped. Subtask results are guarded on owner and attempt like stage results.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._crash import crash_point
from ..states import SubtaskState
from .records import FanOutPlan, FanOutStart, HistoryRow, Shape, SubRecord, SubResult
from .tx import Tx

RUNNING = SubtaskState.RUNNING.value
COMPLETED = SubtaskState.COMPLETED.value


def start_fanouts(tx: Tx, shape: Shape, owner: str, starts: Sequence[FanOutStart]
                  ) -> list[FanOutPlan]:
    """Claim the subtasks of started fan-outs, and record each one's plan (to resume it
    after a crash); a stage no longer ours is refused."""
    plans = []
    recipes: list[tuple[str, str, int, str | None]] = []
    for s in starts:
        row = tx.rows(shape.name, s.item_id).get(s.stage)
        if row is None or row.state != "running" or row.attempt != s.attempt or \
                tx.owner_of(shape.name, s.item_id, s.stage) != owner:
            plans.append(FanOutPlan(s.item_id, s.stage, s.attempt, [], {}, [], refused=True))
            continue
        existing = tx.subtask_rows(shape.name, s.item_id, s.stage)
        kept = {n: existing[n].output for n in s.names
                if n in existing and existing[n].state == COMPLETED}
        run = [(n, (existing[n].attempt if n in existing else 0) + 1)
               for n in s.names if n not in kept]
        dropped = [n for n in existing if n not in s.names]
        tx.upsert_subtasks(shape.name, s.item_id, s.stage, [(n, RUNNING, a, owner) for n, a in run])
        tx.delete_subtasks(shape.name, s.item_id, s.stage, dropped)
        crash_point("mid-fanout-start")
        tx.append_history(shape.name, [
            *(HistoryRow(s.item_id, s.stage, RUNNING, a, owner, subtask=n) for n, a in run),
            *(HistoryRow(s.item_id, s.stage, "dropped", existing[n].attempt, owner, subtask=n,
                         details='{"reason":"no longer in the FanOut"}') for n in dropped),
        ])
        plans.append(FanOutPlan(s.item_id, s.stage, s.attempt, run, kept, dropped))
        if s.plan is not None or s.attempt > 1:  # a first claim has no older plan to replace
            recipes.append((s.item_id, s.stage, s.attempt, s.plan))
    tx.save_plans(shape.name, recipes)
    return plans


def resumable(tx: Tx, shape: Shape, claims: Sequence[tuple[str, str, int]]
              ) -> dict[tuple[str, str], str]:
    """The stored plans of fan-outs these new claims resume: a claim whose earlier
    attempt was cut short mid fan-out (recovered or released) rebuilds its subtasks
    from the plan instead of calling the stage function. A first attempt resumes
    nothing, so the common claim reads no plan."""
    again = [c for c in claims if c[2] > 1]
    return tx.plans_to_resume(shape.name, again) if again else {}


def apply_subtasks(tx: Tx, shape: Shape, owner: str, results: Sequence[SubResult]
                   ) -> tuple[list[SubResult], list[SubResult]]:
    """Apply guarded subtask results: (accepted, refused)."""
    if not results:
        return [], []
    flags = tx.apply_subtasks(shape.name, owner, results)
    accepted = [r for r, ok in zip(results, flags) if ok]
    tx.append_history(shape.name, [
        HistoryRow(r.item_id, r.stage, r.logged_as or r.state, r.attempt, owner, r.error,
                   r.traceback, r.details, subtask=r.name)
        for r in accepted
    ])
    return accepted, [r for r, ok in zip(results, flags) if not ok]


def restart_subtasks(tx: Tx, shape: Shape, owner: str,
                     restarts: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, int]]:
    """Claim pending subtasks again (a retry after its wait): (item, stage, name, attempt)."""
    out = []
    for item_id, stage, name in restarts:
        if tx.owner_of(shape.name, item_id, stage) != owner:
            continue  # the stage's claim was lost meanwhile
        row = tx.subtask_rows(shape.name, item_id, stage).get(name)
        if row is None or row.state != SubtaskState.PENDING.value:
            continue
        tx.upsert_subtasks(shape.name, item_id, stage, [(name, RUNNING, row.attempt + 1, owner)])
        out.append((item_id, stage, name, row.attempt + 1))
    tx.append_history(shape.name, [HistoryRow(i, s, RUNNING, a, owner, subtask=n)
                                   for i, s, n, a in out])
    return out


__all__ = ["FanOutPlan", "FanOutStart", "SubRecord", "SubResult", "apply_subtasks",
           "restart_subtasks", "resumable", "start_fanouts"]
