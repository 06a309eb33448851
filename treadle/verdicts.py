"""Quality-gate verdicts: what ``@stage(gate=check)`` returns about an output.

``check(item, output, ctx)`` returns :class:`Accepted`, :class:`Rejected`
(with feedback the next attempt sees in ``ctx.feedback``) or
:class:`Uncertain`; ``True``/``None`` mean accepted and ``False`` rejected.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs


@attrs.frozen
class Accepted:
    """The output is good enough."""

    note: str = ""


@attrs.frozen
class Rejected:
    """The output is not good enough; ``message`` and ``details`` are the feedback."""

    message: str
    details: Any = None


@attrs.frozen
class Uncertain:
    """The gate cannot tell; a human may decide (``review="on_uncertain"``)."""

    reason: str


Verdict: TypeAlias = Accepted | Rejected | Uncertain


def to_verdict(value: Any) -> Verdict:
    """Normalise what a gate returned."""
    if isinstance(value, (Accepted, Rejected, Uncertain)):
        return value
    if value is True or value is None:
        return Accepted()
    if value is False:
        return Rejected("rejected by the gate")
    raise TypeError(
        f"A gate returned {value!r}; return treadle.Accepted(), Rejected(message) or Uncertain(reason)"
    )


def verdict_json(verdict: Verdict) -> dict[str, Any]:
    """A verdict as plain data for the store."""
    if isinstance(verdict, Accepted):
        return {"verdict": "accepted", "note": verdict.note}
    if isinstance(verdict, Rejected):
        return {"verdict": "rejected", "message": verdict.message, "details": verdict.details}
    return {"verdict": "uncertain", "reason": verdict.reason}
