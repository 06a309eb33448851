"""Blocking reads and decisions for the console's pages; every function here runs in a worker thread."""

from __future__ import annotations

import inspect
import json
from typing import Any

import attrs

from .._diff import json_diff
from ..errors import InvalidTransitionError
from ..states import ItemState, StageState

WAITING = StageState.AWAITING_REVIEW.value
#: Every stage state, in the order the overview shows them.
STATE_ORDER = [s.value for s in StageState]
CANCELLED = ItemState.CANCELLED.value
#: The items page's state filter: every stage state, and ``cancelled`` (an item state).
FILTER_STATES = [*STATE_ORDER, CANCELLED]
#: The columns of the counts: the same (a cancelled item's unfinished stages count as cancelled).
COUNT_STATES = FILTER_STATES


@attrs.frozen
class Waiting:
    """One (item, stage) awaiting review, as the inbox lists it."""

    item_id: str
    stage: str
    attempt: int
    message: str
    data: Any
    since: float | None
    #: Who may decide (empty: anyone), and what it asks beyond approve / reject.
    assignees: list[str] = attrs.field(factory=list)
    asks: str = ""


@attrs.frozen
class Page:
    rows: list[Any]
    page: int
    size: int
    total: int | None
    more: bool


def inbox(runner: Any, *, stage: str | None, text: str | None, page: int, size: int,
          mine: str | None = None) -> Page:
    """Reviews waiting, oldest first, one page; ``text`` filters on the message (case-insensitive),
    ``mine`` (a reviewer name) keeps the reviews that reviewer may decide."""
    if stage:
        runner.pipeline.check_stage(stage)
    ids = runner.store.item_ids(runner.pipeline, stage or None, WAITING, None)
    needle = (text or "").strip().lower()
    if not needle and not mine:
        counts = runner.counts()
        total = (counts.get(stage, {}).get(WAITING, 0) if stage
                 else sum(c.get(WAITING, 0) for c in counts.values()))
        chunk = ids[page * size:(page + 1) * size]
        rows = [w for i in chunk for w in _waiting(runner, i, stage)]
        return Page(rows, page, size, total, len(ids) > (page + 1) * size)
    matched = [w for i in ids for w in _waiting(runner, i, stage) if needle in w.message.lower()
               and (not mine or not w.assignees or mine in w.assignees)]
    return Page(matched[page * size:(page + 1) * size], page, size, len(matched),
                len(matched) > (page + 1) * size)


def _waiting(runner: Any, item_id: str, stage: str | None) -> list[Waiting]:
    out = []
    for rec in runner.store.stage_records(runner.pipeline, item_id):
        if rec.state != WAITING or (stage and rec.stage != stage):
            continue
        review = json.loads(rec.review) if rec.review else {}
        out.append(Waiting(item_id, rec.stage, rec.attempt, review.get("message") or "",
                           review.get("data"), rec.updated_at, review.get("assignees") or [],
                           asks(review)))
    return out


def asks(review: dict[str, Any]) -> str:
    """What a stored review asks beyond approve / reject, in a few words."""
    if review.get("options"):
        return "choose " + " / ".join(review["options"])
    if review.get("form"):
        return "form: " + ", ".join(f["name"] for f in review["form"]["fields"])
    return ""


def form_answer(runner: Any, item_id: str, stage: str, fields: dict[str, str]) -> dict[str, Any]:
    """A web form's text fields (``field:NAME``) as the typed answer of the review's form.

    Raises ``ValueError`` naming the field whose text does not fit its type.
    """
    from ..decisions import parse_field

    st = runner.status(item_id).stages[stage]
    answer = {}
    for field in (st.review.form if st.review else None) or []:
        text = fields.get(field["name"], "")
        if field["type"] == "bool":
            text = "yes" if text else "no"
        value = parse_field(text, field)
        if value is not None or text.strip():
            answer[field["name"]] = value
    return answer


def review_page(runner: Any, item_id: str, stage: str) -> dict[str, Any]:
    """An item's review at one stage: its data, message and the upstream outputs."""
    stage = runner.pipeline.check_stage(stage)
    status = runner.status(item_id)
    upstream = _upstream(runner.pipeline, stage)
    return {
        "status": status, "stage": stage, "st": status.stages[stage],
        "item": json.loads(runner.store.item_data(runner.pipeline, status.item_id)[0]),
        "upstream": [(n, status.stages[n]) for n in runner.pipeline.order if n in upstream],
    }


def _upstream(pipeline: Any, stage: str) -> set[str]:
    seen: set[str] = set()
    todo = list(pipeline.stages[stage].after)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(pipeline.stages[name].after)
    return seen


def check_current(runner: Any, item_id: str, stage: str, attempt: int | None) -> Any:
    """Refuse a decision on a review the reviewer did not see: decided meanwhile, or produced again.

    ``attempt`` is the stage's attempt number the page showed (None: not checked).
    """
    stage = runner.pipeline.check_stage(stage)
    st = runner.status(item_id).stages[stage]
    if st.state != WAITING:
        by = ""
        if st.review is not None and st.review.decision:
            by = f", {st.review.decision}" + (f" by {st.review.reviewer}" if st.review.reviewer else "")
        raise InvalidTransitionError(
            f"Stage {stage!r} of item {item_id!r} is no longer awaiting review (it is {st.state}{by}); "
            "nothing was changed.", item_id=item_id, stage=stage, state=str(st.state))
    if attempt is not None and st.attempts != attempt:
        raise InvalidTransitionError(
            f"Stage {stage!r} of item {item_id!r} was produced again since you opened it (you saw "
            f"attempt {attempt}, it is now at attempt {st.attempts}); nothing was changed. "
            "Reload the review to see the new data.", item_id=item_id, stage=stage, state=WAITING)
    return st


def _expect(method: Any, attempt: int | None) -> dict[str, Any]:
    """``expect=attempt`` when the runner's method takes it (the store then checks atomically)."""
    try:
        takes = "expect" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        takes = False
    return {"expect": attempt} if takes and attempt is not None else {}


def approve(runner: Any, item_id: str, stage: str, *, attempt: int | None, reviewer: str,
            data: Any = None, edited: bool = False, note: str | None = None,
            take: int | None = None, choice: Any = None) -> None:
    """Approve as it is, with edited ``data``, or (gated stage) the output of attempt ``take``."""
    check_current(runner, item_id, stage, attempt)
    kwargs = _expect(runner.approve, attempt)
    if edited:
        kwargs["data"] = data
    elif take is not None:
        kwargs["attempt"] = take
    if choice is not None:
        kwargs["choice"] = choice
    runner.approve(item_id, stage, note=note or None, reviewer=reviewer, **kwargs)


def reject(runner: Any, item_id: str, stage: str, *, attempt: int | None, reviewer: str,
           reason: str) -> None:
    check_current(runner, item_id, stage, attempt)
    runner.reject(item_id, stage, reason=reason, reviewer=reviewer, **_expect(runner.reject, attempt))


def request_changes(runner: Any, item_id: str, stage: str, *, attempt: int | None, reviewer: str,
                    feedback: str) -> None:
    check_current(runner, item_id, stage, attempt)
    runner.request_changes(item_id, stage, feedback=feedback, reviewer=reviewer,
                           **_expect(runner.request_changes, attempt))


def decide_many(runner: Any, selected: list[tuple[str, str, int | None]], reviewer: str,
                reason: str | None = None) -> tuple[list[str], list[str]]:
    """Approve each selected review as it is (or reject it, given a ``reason``); each decision is
    checked and recorded on its own. Returns (decided ids, refusal messages)."""
    done, refused = [], []
    for item_id, stage, attempt in selected:
        try:
            if reason is None:
                approve(runner, item_id, stage, attempt=attempt, reviewer=reviewer)
            else:
                reject(runner, item_id, stage, attempt=attempt, reviewer=reviewer, reason=reason)
        except InvalidTransitionError as exc:
            refused.append(str(exc))
        else:
            done.append(item_id)
    return done, refused


def diff(runner: Any, item_id: str, stage: str, data: Any) -> list[dict[str, Any]]:
    st = runner.status(item_id).stages[runner.pipeline.check_stage(stage)]
    return json_diff(st.review.data if st.review else None, data)


def items_page(runner: Any, *, stage: str | None, state: str | None, page: int, size: int,
               error: str | None = None) -> Page:
    """Items by stage and state, oldest first; ``error`` keeps those with a stage error containing it."""
    if stage:
        runner.pipeline.check_stage(stage)
    if state == CANCELLED:
        return _cancelled_page(runner, page, size)
    if state:
        state = StageState(state).value
    needle = (error or "").strip().lower()
    if needle:  # scans the candidates (by default the failed ones) until the page is full
        ids = runner.store.item_ids(runner.pipeline, stage or None, state or StageState.FAILED.value, None)
        found: list[Any] = []
        for item_id in ids:
            status = runner.status(item_id)
            stages = [status.stages[stage]] if stage else list(status.stages.values())
            if any(needle in (st.error or "").lower() for st in stages):
                found.append(status)
                if len(found) > (page + 1) * size:
                    break
        return Page(found[page * size:(page + 1) * size], page, size, None, len(found) > (page + 1) * size)
    limit = (page + 1) * size + 1
    ids = runner.store.item_ids(runner.pipeline, stage or None, state or None, limit)
    rows = [runner.status(i) for i in ids[page * size:(page + 1) * size]]
    return Page(rows, page, size, None, len(ids) > (page + 1) * size)


def _cancelled_page(runner: Any, page: int, size: int) -> Page:
    """Cancelled items (an item state, not a stage's), oldest first."""
    rows = runner.items(state=CANCELLED, limit=size + 1, offset=page * size)
    return Page(rows[:size], page, size, None, len(rows) > size)


def item_page(runner: Any, item_id: str) -> dict[str, Any]:
    status = runner.status(item_id)
    history = runner.history(status.item_id)
    return {
        "status": status, "history": history,
        "item": json.loads(runner.store.item_data(runner.pipeline, status.item_id)[0]),
        "retryable": any(s.state in ("failed", "rejected") or
                         any(t.state == "failed" for t in s.subtasks.values())
                         for s in status.stages.values()),
    }


def overview(runner: Any) -> dict[str, Any]:
    counts = runner.counts()
    shown = [s for s in COUNT_STATES if any(c.get(s) for c in counts.values())] or ["pending"]
    return {"counts": counts, "states": shown, "items": runner.item_counts(), "paused": runner.paused()}
