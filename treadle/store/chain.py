"""Chained claims: a successor claimed in the commit that completes its predecessor.

When a group commit completes stage ``p`` of an item and ``p`` is the only
dependency of ``d``, the ordinary path marks ``d`` ready (one ``UPDATE``) and
a claim scan of the ready index picks it up later (another ``UPDATE`` per
commit, plus a read of the item's completed outputs). Claiming ``d`` directly,
in the same transaction, does the work of both in one ``UPDATE`` per row, and
the runner already holds ``d``'s inputs: the outputs ``p`` ran with, plus
``p``'s own.

A successor is chained only when nothing would be claimed before it by the
ordinary path: it is of a stage the runner may claim now (not paused, not
behind a store-enforced limit), of an item the run is restricted to (if any),
due, and of a priority no lower than the highest ready row's (claims stay
highest priority first). Everything else is marked ready as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .limits import limits_of
from .records import COMPLETED, Shape, Transition
from .tx import Tx

#: (item, stage) -> the outputs that run was given (stage -> JSON); passed by the runner
Inputs = Mapping[tuple[str, str], Mapping[str, "str | None"]]


def claim_successors(tx: Tx, shape: Shape, owner: str, accepted: Sequence[Transition],
                     ready: Sequence[tuple[str, str]], limit: int,
                     only: Sequence[str] | None, stages: Sequence[str] | None
                     ) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    """Claim up to ``limit`` of the ``ready`` rows whose single dependency was just
    completed; returns (claimed (item, stage, attempt), rows still to mark ready)."""
    if limit <= 0 or not ready:
        return [], list(ready)
    completed = {(t.item_id, t.stage) for t in accepted if t.state == COMPLETED}
    allowed = None if stages is None else set(stages)
    shared = limits_of(shape)
    items = None if only is None else set(only)
    deps = shape.deps
    wanted: list[tuple[str, str]] = []
    left: list[tuple[str, str]] = []
    for item_id, stage in ready:
        d = deps[stage]
        if (len(wanted) < limit and len(d) == 1 and (item_id, d[0]) in completed
                and (allowed is None or stage in allowed) and stage not in shared
                and (items is None or item_id in items)):
            wanted.append((item_id, stage))
        else:
            left.append((item_id, stage))
    if not wanted:
        return [], left
    claimed = tx.claim_rows(shape.name, owner, wanted, tx.top_ready_priority(shape.name))
    if len(claimed) < len(wanted):  # lower priority than other ready work, or not due
        got = {(i, s) for i, s, _ in claimed}
        left.extend(r for r in wanted if r not in got)
    return claimed, left


def chained_outputs(claims: Sequence[tuple[str, str, int]], shape: Shape,
                    accepted: Sequence[Transition], inputs: Inputs | None
                    ) -> dict[tuple[str, str], dict[str, str | None]]:
    """The inputs of each chained claim that the runner knows without a read, by
    (item, stage): what the predecessor ran with plus its output (claims whose
    predecessor's inputs were not passed are left out)."""
    if not inputs or not claims:
        return {}
    output = {(t.item_id, t.stage): t.output for t in accepted if t.state == COMPLETED}
    known: dict[tuple[str, str], dict[str, str | None]] = {}
    for item_id, stage, _ in claims:
        (dep,) = shape.deps[stage]
        ran_with = inputs.get((item_id, dep))
        if ran_with is not None:
            known[(item_id, stage)] = {**ran_with, dep: output[(item_id, dep)]}
    return known


__all__ = ["Inputs", "chained_outputs", "claim_successors"]
