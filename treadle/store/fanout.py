"""Fan-out bookkeeping in the store: subtask rows, their claims and results.

A fan-out stage keeps its stage row ``running`` under its runner while its
subtasks run. Starting a fan-out (in the same group commit as other work)
claims every subtask that has not completed yet, keeps the stored outputs of
those that have, and records subtasks that disappeared from the FanOut as
dropped. Subtask results are guarded on owner and attempt like stage results.

A subtask whose key has a rate (``FanOut(rate=...)``; ``rates`` below, by
(item, stage, name)) starts only with a token of its key's bucket: its row
is written pending, and the limits phase of the commit (``limits.claim``,
then :func:`grant`) starts it if the bucket holds a token; otherwise a
restart asks again when the next one is due.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._crash import crash_point
from ..limits import NAMED, Rate
from ..states import SubtaskState
from .limits import SubtaskWant
from .records import FanOutPlan, FanOutStart, HistoryRow, Shape, SubRecord, SubResult
from .tx import Tx

RUNNING = SubtaskState.RUNNING.value
COMPLETED = SubtaskState.COMPLETED.value
PENDING = SubtaskState.PENDING.value
#: (item, stage, subtask name) -> (its rate key, the key's rate)
Rates = Mapping[tuple[str, str, str], tuple[str, Rate]]


def start_fanouts(tx: Tx, shape: Shape, owner: str, starts: Sequence[FanOutStart],
                  rates: Rates | None = None) -> tuple[list[FanOutPlan], list[SubtaskWant]]:
    """Claim the subtasks of started fan-outs, and record each one's plan (to resume it
    after a crash); a stage no longer ours is refused. Subtasks with a rate are
    written pending (not in the plan's ``run``) and returned: they start if
    :func:`grant` gives them a token."""
    plans = []
    wanted = []
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
        later = [(n, a - 1) for n, a in run if rates and (s.item_id, s.stage, n) in rates]
        if later:
            assert rates is not None
            run = [(n, a) for n, a in run if (s.item_id, s.stage, n) not in rates]
            wanted += [want(s.item_id, s.stage, n, a + 1, rates[(s.item_id, s.stage, n)])
                       for n, a in later]
        dropped = [n for n in existing if n not in s.names]
        tx.upsert_subtasks(shape.name, s.item_id, s.stage,
                           [(n, RUNNING, a, owner) for n, a in run]
                           + [(n, PENDING, a, None) for n, a in later])
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
    return plans, wanted


def want(item_id: str, stage: str, name: str, attempt: int, rated: tuple[str, Rate]
         ) -> SubtaskWant:
    """A subtask that starts as ``attempt`` once its key (``rated``) gives it a token."""
    return SubtaskWant(item_id, stage, name, attempt, NAMED + rated[0], rated[1])


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


def restart_subtasks(tx: Tx, shape: Shape, owner: str, restarts: Sequence[tuple[str, str, str]],
                     rates: Rates | None = None
                     ) -> tuple[list[tuple[str, str, str, int]], list[SubtaskWant]]:
    """Claim pending subtasks again (a retry after its wait, or a start that waited
    for a token): (item, stage, name, attempt), and the subtasks with a rate,
    which start only if :func:`grant` gives them a token."""
    out = []
    wanted = []
    for item_id, stage, name in restarts:
        if tx.owner_of(shape.name, item_id, stage) != owner:
            continue  # the stage's claim was lost meanwhile
        row = tx.subtask_rows(shape.name, item_id, stage).get(name)
        if row is None or row.state != PENDING:
            continue
        rated = rates.get((item_id, stage, name)) if rates else None
        if rated is not None:
            wanted.append(want(item_id, stage, name, row.attempt + 1, rated))
            continue
        tx.upsert_subtasks(shape.name, item_id, stage, [(name, RUNNING, row.attempt + 1, owner)])
        out.append((item_id, stage, name, row.attempt + 1))
    tx.append_history(shape.name, [HistoryRow(i, s, RUNNING, a, owner, subtask=n)
                                   for i, s, n, a in out])
    return out, wanted


def grant(tx: Tx, shape: Shape, owner: str, granted: Sequence[SubtaskWant]
          ) -> list[tuple[str, str, str, int]]:
    """Start the subtasks that got a token: (item, stage, name, attempt)."""
    out = [(w.item_id, w.stage, w.name, w.attempt) for w in granted]
    for i, s, n, a in out:
        tx.upsert_subtasks(shape.name, i, s, [(n, RUNNING, a, owner)])
    tx.append_history(shape.name, [HistoryRow(i, s, RUNNING, a, owner, subtask=n)
                                   for i, s, n, a in out])
    return out


__all__ = ["FanOutPlan", "FanOutStart", "Rates", "SubRecord", "SubResult", "apply_subtasks",
           "grant", "restart_subtasks", "resumable", "start_fanouts"]
