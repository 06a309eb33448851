"""The group-commit steps and lease recovery, as functions over :class:`Tx`.

One group commit applies finished stages (each guarded on owner and attempt),
marks the dependents that became ready, records which items finished, and
claims the next batch of ready work; ``BaseStore.commit`` runs these steps in
one transaction. Human decisions reuse ``advance`` and ``finish``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from ..serialization import storable_text
from ..states import DONE_STATES, FINISHED_ITEM_STATES
from .logic import deps_done, item_state
from .records import CANCELLED, PENDING, ROLLING_BACK, SKIPPED, HistoryRow, Shape, Transition
from .rollback import recover_rollbacks, wants_rollback
from .tx import Tx

#: Seconds after its lease lapsed that a runner's registration is deleted (a
#: runner that was only paused registers again at its next heartbeat).
RUNNER_GC = 60.0
RECOVERED = "claim recovered: its runner died or its lease lapsed"


def apply(tx: Tx, shape: Shape, owner: str, transitions: Sequence[Transition]
          ) -> tuple[list[Transition], list[Transition]]:
    """Apply guarded stage results and record the accepted ones: (accepted, refused)."""
    if not transitions:
        return [], []
    transitions = [_storable(t) for t in transitions]
    flags = tx.apply(shape.name, owner, transitions, getattr(shape, "stamps", None))
    accepted = [t for t, ok in zip(transitions, flags) if ok]
    refused = [t for t, ok in zip(transitions, flags) if not ok]
    tx.append_history(shape.name, [
        HistoryRow(t.item_id, t.stage, t.logged_as or t.state, t.attempt, owner, t.error,
                   t.traceback, t.details)
        for t in accepted
    ])
    return accepted, refused


def _storable(t: Transition) -> Transition:
    """Error text and tracebacks escaped so that any database can hold them."""
    error = None if t.error is None else storable_text(t.error)
    tb = None if t.traceback is None else storable_text(t.traceback)
    if error is t.error and tb is t.traceback:
        return t
    return attrs.evolve(t, error=error, traceback=tb)


def advance(tx: Tx, shape: Shape, owner: str, accepted: Sequence[Transition],
            chain: Callable[[list[tuple[str, str]]], list[tuple[str, str]]] | None = None,
            ) -> tuple[list[tuple[str, str]], set[str]]:
    """Mark newly ready dependents; skip downstream of propagating skips.

    Returns the skipped (item, stage) rows and the items that may have
    finished (those where nothing became ready). ``chain`` (a group commit's)
    claims some of the newly ready rows itself and returns the rest to mark
    ready (``chain.py``).
    """
    ready: list[tuple[str, str]] = []
    need_states: set[str] = set()
    check: set[str] = set()
    to_skip: list[tuple[str, str]] = []
    for t in accepted:
        if t.state == SKIPPED and t.propagate:
            to_skip.extend((t.item_id, d) for d in shape.descendants[t.stage])
            check.add(t.item_id)
        elif t.state in DONE_STATES:
            dependents = shape.dependents[t.stage]
            if not dependents:
                check.add(t.item_id)
            for d in dependents:
                if len(shape.deps[d]) == 1:
                    ready.append((t.item_id, d))
                else:
                    need_states.add(t.item_id)
        else:
            check.add(t.item_id)
    if need_states or check:
        tx.lock_items(shape.name, need_states | check)
    skipped: list[tuple[str, str]] = []
    if to_skip:
        skipped = tx.set_state(shape.name, to_skip, SKIPPED, (PENDING,), ready=False, error=None)
        tx.append_history(shape.name, [
            HistoryRow(i, s, SKIPPED, 0, owner, details='{"reason":"upstream skipped"}')
            for i, s in skipped
        ])
    if need_states:
        states = tx.stage_states(shape.name, need_states)
        for t in accepted:
            if t.item_id not in need_states or t.state not in DONE_STATES:
                continue
            st = states.get(t.item_id, {})
            for d in shape.dependents[t.stage]:
                if len(shape.deps[d]) > 1:
                    row = st.get(d)
                    if row and row[0] == PENDING and deps_done(shape.deps[d], st):
                        ready.append((t.item_id, d))
                    else:
                        check.add(t.item_id)
    if ready and chain is not None:
        ready = chain(ready)
    if ready:
        tx.set_ready(shape.name, ready)
    return skipped, check


def finish(tx: Tx, shape: Shape, check: set[str]) -> list[tuple[str, str]]:
    """Record the item states of ``check``; returns the items that finished."""
    if not check:
        return []
    states = tx.stage_states(shape.name, check)
    settled, finished = [], []
    for item_id in sorted(check):
        state = item_state(shape.order, states.get(item_id, {})).value
        if wants_rollback(shape, state):
            settled.append((item_id, ROLLING_BACK))  # finished once rolled back
            continue
        settled.append((item_id, state))
        if state in FINISHED_ITEM_STATES:
            finished.append((item_id, state))
    tx.set_item_states(shape.name, settled)
    if finished and getattr(shape, "parents", None):
        from .nested import children_finished  # a child pipeline: settle its parents

        children_finished(tx, shape, finished)
    return finished


def recover(tx: Tx, shape: Shape, host: str, alive: Callable[[int], bool]
            ) -> list[tuple[str, str, int]]:
    """Put running rows of dead or lapsed owners back to pending; forget dead runners.

    An owner is dead when its lease expired, it is not registered, or it ran
    on ``host`` and ``alive(pid)`` says its process is gone. Reads only the
    running rows and the rolling-back items (both indexed), never the rest.
    """
    runners = {o: (h, p, exp) for o, h, p, exp in tx.runners()}
    gone = {o for o, (h, p, _) in runners.items() if h == host and not alive(p)}

    def dead(owner: str | None) -> bool:
        info = runners.get(owner or "")
        return info is None or info[2] < tx.now or owner in gone

    forget = sorted(gone | {o for o, (_, _, exp) in runners.items() if exp < tx.now - RUNNER_GC})
    if forget:
        tx.delete_runners(forget)
    owners = {state[len(ROLLING_BACK) + 1:] for state in tx.rolling_back(shape.name).values()
              if state != ROLLING_BACK}
    recover_rollbacks(tx, shape, sorted(o for o in owners if dead(o)))
    by_owner: dict[str, list[Transition]] = {}
    for item_id, stage, attempt, owner in tx.running_rows(shape.name):
        if dead(owner):
            by_owner.setdefault(owner or "", []).append(
                Transition(item_id, stage, attempt, PENDING, error=RECOVERED))
    stale: list[tuple[str, str, int]] = []
    for owner, back in by_owner.items():
        # guarded on owner and attempt: a claim re-taken meanwhile is left alone
        flags = tx.apply(shape.name, owner, back)
        stale += [(t.item_id, t.stage, t.attempt) for t, ok in zip(back, flags) if ok]
    if stale:
        tx.append_history(shape.name, [
            HistoryRow(i, s, PENDING, a, "recovery", error=RECOVERED) for i, s, a in stale])
        tx.reset_subtasks(shape.name, [(i, s) for i, s, _ in stale])
        tx.set_item_states(shape.name, [(i, PENDING) for i in {r[0] for r in stale}])
    return stale


def release(tx: Tx, shape: Shape, owner: str, keys: Sequence[tuple[str, str, int]],
            unstarted: Sequence[tuple[str, str, int]] = ()) -> None:
    """Give claims back as pending; those in ``unstarted`` keep their attempt number."""
    back = [Transition(i, s, a, PENDING, error="released at shutdown before it finished")
            for i, s, a in keys]
    accepted, _ = apply(tx, shape, owner, back)
    tx.reset_subtasks(shape.name, [(t.item_id, t.stage) for t in accepted])
    flags = tx.unclaim(shape.name, owner, unstarted)
    tx.append_history(shape.name, [
        HistoryRow(i, s, PENDING, a - 1, owner, details='{"reason":"released before it started"}')
        for (i, s, a), ok in zip(unstarted, flags) if ok])


def rename(tx: Tx, shape: Shape) -> bool:
    """Carry the records of renamed stages over to their new names (declared in
    ``Pipeline(renames=...)``); returns True if any row moved."""
    moved = False
    renames: dict[str, str] = getattr(shape, "renames", {})
    for old, new in renames.items():
        items = tx.rename_stage(shape.name, old, new)
        tx.append_history(shape.name, [
            HistoryRow(i, new, "renamed", 0, "definition", details=f'{{"renamed_from":{_q(old)}}}')
            for i in items])
        moved = moved or bool(items)
    return moved


def resettle(tx: Tx, shape: Shape) -> None:
    """Recompute every item's recorded state after the pipeline changed shape."""
    keep = set(tx.rolling_back(shape.name)) | set(tx.items_in_state(shape.name, CANCELLED, None))
    ids = [i for i in tx.items_in_state(shape.name, "", None, prefix=True) if i not in keep]
    states = tx.stage_states(shape.name, ids)
    tx.set_item_states(shape.name, [(i, item_state(shape.order, states.get(i, {})).value)
                                    for i in ids])


def _q(text: str) -> str:
    import json

    return json.dumps(text)


__all__ = ["advance", "apply", "finish", "recover", "release", "rename", "resettle"]
