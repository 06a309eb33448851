"""Quality gates, on the worker side: judge an output, decide what happens next.

The decision uses the stage's earlier judged attempts, read from the history
when the stage is claimed (:func:`gate_history`), so it survives restarts: an
attempt whose verdict was never committed (a crash) does not count against
the budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .. import instrument
from ..errors import TreadleError
from ..stage import StageSpec
from ..states import StageState
from ..store.base import Transition
from ..verdicts import Accepted, Rejected, Uncertain, to_verdict, verdict_json
from .calls import resolve
from .failures import failure, retry_in

#: History states of judged attempts that did not complete the stage.
OUTPUT_REJECTED = "output_rejected"
CHANGES_REQUESTED = "changes_requested"
_RESETS = {"retry", "rerun"}


class GateRejection(TreadleError):
    """Handed to a retry policy when a gate rejected an output (not an exception of the stage)."""


@attrs.frozen
class GateHistory:
    """What earlier attempts of one gated (item, stage) left behind."""

    feedback: tuple[Any, ...] = ()
    attempts: tuple[dict[str, Any], ...] = ()
    judged: int = 0  # judged attempts since the budget was last reset


def gate_history(entries: Iterable[Mapping[str, Any]], stage: str) -> GateHistory:
    """Rebuild feedback, attempt records and the budget from history entries."""
    feedback: list[Any] = []
    attempts: list[dict[str, Any]] = []
    judged = 0
    for h in entries:
        if h["stage"] != stage or h.get("subtask"):
            continue
        details = h["details"]
        if isinstance(details, str):
            details = json.loads(details)
        details = details or {}
        if "verdict" in details:
            record = {"attempt": h["attempt"], "at": h["at"], **details}
            attempts.append(record)
            judged += 1
            verdict = details["verdict"]
            if verdict.get("verdict") in ("rejected", "uncertain"):
                feedback.append({"source": "gate", "attempt": h["attempt"],
                                 "message": verdict.get("message") or verdict.get("reason"),
                                 "details": verdict.get("details")})
        elif h["state"] == CHANGES_REQUESTED:
            feedback.append({"source": "reviewer", "attempt": h["attempt"],
                             "message": details.get("feedback"), "reviewer": details.get("reviewer")})
            judged = 0
        elif details.get("reason") in _RESETS:
            judged = 0
    return GateHistory(tuple(feedback), tuple(attempts), judged)


async def judge(spec: StageSpec, item: Any, ctx: Any, value: Any, output: str, policy: Any,
                history: GateHistory, sync: bool) -> tuple[Transition, Any]:
    """Apply the gate (awaited if it is async) and the review policy to one output."""
    item_id, stage, attempt = ctx.item_id, ctx.stage, ctx.attempt
    assert spec.gate is not None
    try:
        if instrument.active():
            execution = instrument.Execution("gate", ctx.pipeline, item_id, stage, attempt)
            with instrument.around(execution):
                verdict = to_verdict(await resolve(spec.gate(item, value, ctx), sync))
                execution.outcome = verdict_json(verdict)["verdict"]
        else:
            verdict = to_verdict(await resolve(spec.gate(item, value, ctx), sync))
    except Exception as exc:  # noqa: BLE001 - a broken gate fails this attempt only
        wrapped = TreadleError(f"the gate of stage {stage!r} raised {type(exc).__name__}: {exc}")
        wrapped.__traceback__ = exc.__traceback__
        return failure(item_id, stage, attempt, wrapped, policy), None
    plain = json.loads(output)
    kind = verdict_json(verdict)["verdict"]
    record = {"verdict": verdict_json(verdict), "output": plain}
    attempts = [*history.attempts, {"attempt": attempt, "at": time.time(), **record}]
    judged = history.judged + 1

    def review(message: str, escalated: bool = False) -> Transition:
        data = {"data": plain, "message": message, "escalated": escalated, "attempts": attempts}
        if spec.reviewers:
            data["assignees"] = list(spec.reviewers)
        return Transition(item_id, stage, attempt, StageState.AWAITING_REVIEW.value,
                          review=json.dumps(data, separators=(",", ":")),
                          verdict=kind, escalated=escalated,
                          details=json.dumps(record, separators=(",", ":")))

    if isinstance(verdict, Accepted):
        if spec.review == "always":
            return review("Accepted by the gate: confirm the output"), plain
        return Transition(item_id, stage, attempt, StageState.COMPLETED.value, output=output,
                          verdict=kind, details=json.dumps(record, separators=(",", ":"))), value
    if isinstance(verdict, Uncertain) and spec.review in ("on_uncertain", "on_escalation_or_uncertain"):
        return review(f"The gate is not sure: {verdict.reason}"), plain
    message = verdict.message if isinstance(verdict, Rejected) else verdict.reason
    delay = retry_in(policy, judged, GateRejection(message))
    if delay is not None:
        return Transition(item_id, stage, attempt, StageState.PENDING.value, delay=delay,
                          logged_as=OUTPUT_REJECTED, verdict=kind,
                          details=json.dumps({**record, "retry_in": round(delay, 3)},
                                             separators=(",", ":"))), plain
    if spec.on_exhausted == "escalate" or spec.review in ("on_escalation", "on_escalation_or_uncertain"):
        return review(f"Escalated after {judged} attempt(s): {message}", escalated=True), plain
    return Transition(item_id, stage, attempt, StageState.FAILED.value,
                      error=f"Output rejected by the gate after {judged} attempt(s): {message}",
                      verdict=kind,
                      details=json.dumps(record, separators=(",", ":"))), plain
