"""Nested pipelines in the store: spawning child items, settling their parent.

A stage that returns ``Spawn`` is committed as ``waiting`` together with its
children (items and stage rows in the child pipeline, and one link row per
child) in the same transaction, so a crash leaves either all of the spawn or
none of it. Spawning an id that is already stored adds its link only: a
spawn committed twice never doubles a child.

When a child item finishes, the same transaction locks its parent's item row,
then reads the states of the parent's other children: once every child has
settled, the parent stage completes (its output: ``{child id: {stage:
output}}``, or what the stage's ``collect`` makes of it) or fails naming the
children that did not complete, and its dependents are advanced as after any
result. Any runner's commit does it, as long as it knows the parent pipeline
(``Pipeline.parents``); ``settle_waiting`` catches up on the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .._crash import crash_point
from ..errors import InvalidTransitionError
from ..serialization import to_json
from ..states import FINISHED_ITEM_STATES
from .records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    REJECTED,
    WAITING,
    HistoryRow,
    Shape,
    Transition,
    dumps,
)
from .tx import Tx

#: The actor of the history rows written when children settle their parent.
ACTOR = "children"


def children_of(shape: Shape) -> dict[str, Any]:
    """Child pipelines (by name) of a pipeline; empty for a plain Shape."""
    return dict(getattr(shape, "children", None) or {})


def spawn(tx: Tx, shape: Shape, owner: str, accepted: Sequence[Transition]) -> list[tuple[str, str]]:
    """Submit the children of accepted ``waiting`` transitions and link them; returns
    the (item, stage) of parents whose children had all settled already."""
    children = children_of(shape)
    settled: list[tuple[str, str]] = []
    for t in accepted:
        if t.state != WAITING:
            continue
        by_pipeline: dict[str, list[tuple[str, str]]] = {}
        for child_pipeline, child_id, data in t.children:
            by_pipeline.setdefault(child_pipeline, []).append((child_id, data))
        details = dumps({"parent": t.item_id, "parent_pipeline": shape.name,
                         "parent_stage": t.stage}, what="parent link")
        for name, rows in by_pipeline.items():
            child = children[name]
            new = tx.insert_items(name, rows, getattr(child, "version", None))
            roots = {s for s in child.order if not child.deps[s]}
            tx.insert_stage_rows(name, ((i, s, s in roots) for i in new for s in child.order))
            crash_point("mid-spawn")
            tx.append_history(name, [HistoryRow(i, None, "submitted", 0, owner, details=details)
                                     for i in new])
            tx.insert_links([(shape.name, t.item_id, t.stage, name, i) for i, _ in rows])
        settled.append((t.item_id, t.stage))
    # children that existed already may all be settled: check now, not never
    return [key for key in settled if settle(tx, shape, *key)]


def children_finished(tx: Tx, shape: Shape, finished: Iterable[tuple[str, str]]) -> None:
    """Children of ``shape`` finished: settle each parent whose children all have."""
    parents = getattr(shape, "parents", None) or {}
    ids = [i for i, _ in finished]
    if not ids or not parents:
        return
    seen: set[tuple[str, str, str]] = set()
    for _, pipeline, item_id, stage in tx.parents_of(shape.name, ids):
        key = (pipeline, item_id, stage)
        parent = parents.get(pipeline)
        if key in seen or parent is None:
            continue  # an unknown parent pipeline: settle_waiting catches up
        seen.add(key)
        settle(tx, parent, item_id, stage)


def settle(tx: Tx, shape: Shape, item_id: str, stage: str) -> bool:
    """Complete or fail a waiting stage once all its children have settled.

    Locks the parent's item row first (PostgreSQL), so that two transactions
    finishing its last two children cannot both miss the other's. Returns
    True if the stage moved.
    """
    from . import flow  # flow calls back into this module when items finish

    tx.lock_items(shape.name, [item_id])
    row = tx.rows(shape.name, item_id).get(stage)
    if row is None or row.state != WAITING:
        return False
    links = tx.links_of(shape.name, item_id, stage)
    states: dict[tuple[str, str], str] = {}
    by_pipeline: dict[str, list[str]] = {}
    for _, child_pipeline, child_id in links:
        by_pipeline.setdefault(child_pipeline, []).append(child_id)
    for child_pipeline, ids in by_pipeline.items():
        for child_id, state in tx.item_states(child_pipeline, ids).items():
            states[(child_pipeline, child_id)] = state
    if any(states.get((p, c)) not in FINISHED_ITEM_STATES for _, p, c in links):
        return False
    spec = getattr(shape, "stages", {}).get(stage)
    failed = [(p, c, states[(p, c)]) for _, p, c in links if states[(p, c)] != COMPLETED]
    error: str | None = None
    output: str | None = None
    if failed and getattr(spec, "on_child_failure", "fail") != "ignore":
        error = _failure_message(tx, failed, len(links))
    else:
        value = _outputs(tx, [(p, c) for _, p, c in links if states[(p, c)] == COMPLETED])
        collect = getattr(spec, "collect", None)
        try:
            if collect is not None:
                value = collect(value)
            output = to_json(value, what="output", item_id=item_id, stage=stage)
        except Exception as exc:  # noqa: BLE001 - the collect function's error fails the stage
            error = f"collect failed: {type(exc).__name__}: {exc}"
    state = FAILED if error is not None else COMPLETED
    if not tx.cas(shape.name, item_id, stage, WAITING, state, output=output, review=row.review,
                  attempt=row.attempt):
        return False
    if error is not None:
        tx.set_error(shape.name, item_id, stage, FAILED, error)
    tx.append_history(shape.name, [HistoryRow(
        item_id, stage, state, row.attempt, ACTOR, error,
        details=dumps({"children": len(links), "failed": len(failed)}, what="details"))])
    t = Transition(item_id, stage, row.attempt, state, output=output, error=error)
    _, check = flow.advance(tx, shape, ACTOR, [t])
    flow.finish(tx, shape, check)
    return True


def _outputs(tx: Tx, children: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``{child id: {stage: output}}`` of completed children, in spawn order."""
    by_pipeline: dict[str, list[str]] = {}
    for p, c in children:
        by_pipeline.setdefault(p, []).append(c)
    raw: dict[tuple[str, str], dict[str, str | None]] = {}
    for p, ids in by_pipeline.items():
        for c, outputs in tx.completed_outputs(p, ids).items():
            raw[(p, c)] = outputs
    return {c: {s: (None if o is None else json.loads(o)) for s, o in raw.get((p, c), {}).items()}
            for p, c in children}


def _failure_message(tx: Tx, failed: Sequence[tuple[str, str, str]], total: int) -> str:
    """``2 of 5 children did not complete: a/t3 rejected at review (reason: ...); ...``."""
    parts = []
    for p, c, state in failed[:10]:
        why = ""
        for stage, rec in tx.rows(p, c).items():
            if rec.state == REJECTED:
                review = json.loads(rec.review) if rec.review else {}
                reason = review.get("note") or review.get("reason")
                why = f" at {stage}" + (f" ({reason})" if reason else "")
                break
            if rec.state == FAILED:
                why = f" at {stage}" + (f": {rec.error}" if rec.error else "")
                break
        parts.append(f"{c} {state}{why}")
    more = f"; and {len(failed) - 10} more" if len(failed) > 10 else ""
    return (f"{len(failed)} of {total} children did not complete: {'; '.join(parts)}{more}. "
            "Retry the parent to retry only those children.")


def retry_children(tx: Tx, shape: Shape, moved: Sequence[tuple[str, str]], actor: str
                   ) -> list[tuple[str, str]]:
    """After a retry of the parent: its spawn stages wait again and only their failed
    (or rejected) children are retried; returns the (item, stage) put back to waiting."""
    from . import human

    children = children_of(shape)
    back = []
    for item_id, stage in moved:
        links = tx.links_of(shape.name, item_id, stage)
        if not links:
            continue  # never spawned (it failed before): run the stage again
        tx.set_state(shape.name, [(item_id, stage)], WAITING, (PENDING,), ready=False)
        tx.append_history(shape.name, [HistoryRow(item_id, stage, WAITING, 0, actor,
                                                  details='{"reason":"retry children"}')])
        back.append((item_id, stage))
        for _, child_pipeline, child_id in links:
            child = children.get(child_pipeline)
            if child is None or tx.item_states(child_pipeline, [child_id]).get(child_id) in (
                    COMPLETED, CANCELLED):
                continue
            try:
                moved_child = human.retry(tx, child, child_id, None, actor)
            except InvalidTransitionError:
                continue  # rolled back: it stays as it is, and the parent fails again
            retry_children(tx, child, moved_child, actor)
    from .logic import item_state

    states = tx.stage_states(shape.name, [i for i, _ in back])
    tx.set_item_states(shape.name, [(i, item_state(shape.order, states.get(i, {})).value)
                                    for i in dict.fromkeys(i for i, _ in back)])
    for item_id, stage in back:
        settle(tx, shape, item_id, stage)  # nothing could be retried: it fails again
    return back


def cancel_children(tx: Tx, shape: Shape, item_ids: Sequence[str], reason: str, actor: str
                    ) -> None:
    """Cancel the unfinished children (at any depth) of cancelled items."""
    from . import control
    from .logic import item_state

    children = children_of(shape)
    for item_id in item_ids:
        links = tx.links_of(shape.name, item_id)
        stages = {s for s, _, _ in links}
        tx.set_state(shape.name, [(item_id, s) for s in stages], PENDING, (WAITING,), ready=False)
        by_pipeline: dict[str, list[str]] = {}
        for _, p, c in links:
            by_pipeline.setdefault(p, []).append(c)
        for p, ids in by_pipeline.items():
            child = children.get(p)
            if child is None:
                continue
            stored = tx.item_states(p, ids)
            rows = tx.stage_states(p, ids)
            live = [c for c in ids if stored.get(c) != CANCELLED and not str(
                stored.get(c, "")).startswith("rolling_back") and item_state(
                child.order, rows.get(c, {})).value not in FINISHED_ITEM_STATES]
            if live:
                control.cancel(tx, child, live, reason or f"parent {item_id} cancelled", actor)
                cancel_children(tx, child, live, reason, actor)


def tree_rows(tx: Tx, shape: Shape, item_id: str) -> list[tuple[str, str, str, str]]:
    """(stage, child pipeline, child id, child item state) of one item's children."""
    out = []
    for stage, p, c in tx.links_of(shape.name, item_id):
        out.append((stage, p, c, tx.item_states(p, [c]).get(c, PENDING)))
    return out


def settle_waiting(tx: Tx, shape: Shape) -> int:
    """Settle every waiting stage whose children have all settled (a catch-up for
    children finished by runners that did not know this pipeline); returns how many."""
    stages = [s for s, spec in getattr(shape, "stages", {}).items() if getattr(spec, "spawns", ())]
    if not stages:
        return 0
    rows = tx.find(shape.name, stages, None, None, (WAITING,))
    return sum(settle(tx, shape, i, s) for i, s in rows)


__all__ = ["ACTOR", "cancel_children", "children_finished", "children_of",
           "retry_children", "settle", "settle_waiting", "spawn", "tree_rows"]
