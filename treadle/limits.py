"""Flow-control declarations: rate limits, global concurrency limits, priorities.

``@stage(rate="5/s")`` and ``@stage(concurrency=n, scope="global")`` declare
limits that every runner on the store shares (docs/flow-control.md). This
module parses and validates them; the store enforces them in its claim
transaction (``treadle.store.limits``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

#: Seconds per unit of a rate string ("1/s", "60/min", "1000/h", "5000/day").
UNITS: dict[str, float] = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}
SCOPES = ("runner", "global")
#: Priorities are stored as 32-bit integers.
PRIORITY_RANGE = (-(2**31), 2**31 - 1)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


@attrs.frozen
class Rate:
    """``count`` starts per ``per`` seconds; up to ``count`` may start at once (the burst)."""

    count: float
    per: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h", 86400.0: "day"}.get(self.per)
        return f"{self.count:g}/{unit or f'{self.per:g}s'}"

    @property
    def per_second(self) -> float:
        """Tokens added to the bucket each second."""
        return self.count / self.per

    @property
    def burst(self) -> float:
        """The bucket's size: starts allowed at once after a quiet spell."""
        return max(1.0, self.count)


def parse_rate(text: str) -> Rate:
    """``"5/s"``, ``"60/min"``, ``"1000/h"`` (also ``"10/5s"``) as a :class:`Rate`.

    Raises ``ValueError`` naming the accepted forms.
    """
    match = _RATE.match(text.lower()) if isinstance(text, str) else None
    unit = UNITS.get(match.group(3)) if match else None
    if match is None or unit is None:
        raise ValueError(f"rate {text!r} is not a rate; write COUNT/UNIT such as '1/s', "
                         "'60/min', '1000/h' (units: s, min, h, day)")
    count, span = float(match.group(1)), float(match.group(2) or 1)
    if count <= 0 or span <= 0:
        raise ValueError(f"rate {text!r} must allow more than nothing")
    return Rate(count, span * unit)


@attrs.frozen
class StageLimit:
    """What the store enforces for one stage across every runner."""

    rate: Rate | None = None
    #: Runs at once across every runner (``concurrency=n, scope="global"``).
    concurrency: int | None = None


def stage_limits(specs: Mapping[str, Any], order: Sequence[str]) -> dict[str, StageLimit]:
    """The store-enforced limits of the stages that have any, by stage name."""
    out = {}
    for name in order:
        spec = specs[name]
        conc = spec.concurrency if spec.scope == "global" else None
        if spec.rate is not None or conc is not None:
            out[name] = StageLimit(spec.rate, conc)
    return out


def check_priority(value: object, what: str = "priority") -> int:
    """``value`` if it is an int priority the store can hold; ``ValueError`` otherwise."""
    low, high = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what}={value!r} is invalid; expected an int between {low} and {high} "
                         "(higher runs first, 0 by default)")
    return value


__all__ = ["Rate", "StageLimit", "check_priority", "parse_rate", "stage_limits"]
