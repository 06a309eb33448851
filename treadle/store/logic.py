"""Pure functions over one item's stage states, shared by every store.

``states`` maps stage name -> ``(state, ready)``; a stage without a row is
treated as ``("pending", False)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..states import DONE_STATES, ItemState, StageState

StageRow = tuple[str, bool]
_PENDING: StageRow = (StageState.PENDING.value, False)


def deps_done(deps: Iterable[str], states: Mapping[str, StageRow]) -> bool:
    """True when every dependency is completed or skipped."""
    return all(states.get(d, _PENDING)[0] in DONE_STATES for d in deps)


def item_state(order: Iterable[str], states: Mapping[str, StageRow]) -> ItemState:
    """The item-level state implied by its stages (see docs/concepts.md).

    A stage claimed by a runner makes the item ``running``; a stage ready for
    the next runner makes it ``pending``; otherwise a review wait, a
    rejection, a failure or a rollback decides, in that order; all stages done
    means ``completed``.
    """
    seen = [states.get(s, _PENDING) for s in order]
    values = {st for st, _ in seen}
    if values <= DONE_STATES:
        return ItemState.COMPLETED
    if StageState.ROLLED_BACK.value in values:
        return ItemState.ROLLED_BACK
    if StageState.RUNNING.value in values:
        return ItemState.RUNNING
    if any(st == StageState.PENDING.value and ready for st, ready in seen):
        return ItemState.PENDING  # waiting for a runner to take its next stage
    if StageState.WAITING.value in values:
        return ItemState.RUNNING  # its children are under way (docs/nested.md)
    if StageState.AWAITING_REVIEW.value in values:
        return ItemState.AWAITING_REVIEW
    if StageState.REJECTED.value in values:
        return ItemState.REJECTED
    if StageState.FAILED.value in values:
        return ItemState.FAILED
    return ItemState.PENDING
