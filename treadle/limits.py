"""Flow-control declarations: rate limits, global concurrency limits, priorities.

``@stage(rate="5/s")`` and ``@stage(concurrency=n, scope="global")`` declare
limits that every runner on the store shares; ``Pipeline(limits={"openai": 8,
"discogs": "60/min"})`` declares named limits that stages take
(``@stage(limits={"openai": 1})``), and ``FanOut(..., rate={"musicbrainz":
"1/s"})`` rate-limits subtasks by key (docs/flow-control.md). This module
parses and validates them; the store enforces them in its claim transaction
(``treadle.store.limits``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .errors import InvalidLimitError, UnknownLimitError, did_you_mean

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


#: The prefix of a named limit's (or a subtask key's) row in the store's limit table;
#: a stage's own limit row is keyed by the stage name.
NAMED = "limit:"


@attrs.frozen
class NamedLimit:
    """A limit declared on the Pipeline (``limits={name: 8 or "60/min"}``), taken by
    the stages that name it (and by fan-out subtasks whose key it is, for a rate)."""

    name: str
    #: Units in use at once across every runner (an int in ``Pipeline(limits=...)``).
    concurrency: int | None = None
    #: A token bucket shared by every runner (a rate string in ``Pipeline(limits=...)``).
    rate: Rate | None = None

    @property
    def key(self) -> str:
        """Its row in the store's limit table."""
        return NAMED + self.name


@attrs.frozen
class StageLimit:
    """What the store enforces for one stage across every runner."""

    rate: Rate | None = None
    #: Runs at once across every runner (``concurrency=n, scope="global"``).
    concurrency: int | None = None
    #: The named limits the stage takes: (name, units per run), sorted by name.
    uses: tuple[tuple[str, int], ...] = ()


def stage_limits(specs: Mapping[str, Any], order: Sequence[str]) -> dict[str, StageLimit]:
    """The store-enforced limits of the stages that have any, by stage name."""
    out = {}
    for name in order:
        spec = specs[name]
        conc = spec.concurrency if spec.scope == "global" else None
        uses = tuple(sorted(spec.limits.items()))
        if spec.rate is not None or conc is not None or uses:
            out[name] = StageLimit(spec.rate, conc, uses)
    return out


def named_limits(pipeline: str, declared: Mapping[str, Any] | None) -> dict[str, NamedLimit]:
    """``Pipeline(limits=...)`` read: an int is a concurrency limit, a string a rate.

    Raises :class:`~treadle.InvalidLimitError` naming the limit at fault."""
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise InvalidLimitError(
            f"Pipeline {pipeline!r}: limits={declared!r} is invalid; pass a dict "
            "{name: capacity}, e.g. {'openai': 8, 'discogs': '60/min'}.", limit=None)
    out = {}
    for name, value in declared.items():
        check_limit_name(name, f"Pipeline {pipeline!r}")
        if isinstance(value, str):
            try:
                out[name] = NamedLimit(name, rate=parse_rate(value))
            except ValueError as exc:
                raise InvalidLimitError(f"Pipeline {pipeline!r}: limit {name!r}: {exc}.",
                                        limit=name) from None
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            out[name] = NamedLimit(name, concurrency=value)
        else:
            raise InvalidLimitError(
                f"Pipeline {pipeline!r}: limit {name!r} is {value!r}; give an int >= 1 (runs "
                "at once, across every runner) or a rate such as '60/min'.", limit=name)
    return out


def check_limit_name(name: object, where: str) -> None:
    """A limit name or subtask key must be a non-empty string."""
    if not isinstance(name, str) or not name:
        raise InvalidLimitError(f"{where}: limit names must be non-empty strings, got {name!r}.",
                                limit=None)


def stage_uses(stage: str, value: Any) -> dict[str, int]:
    """``@stage(limits=...)`` read: ``{"openai": 1}`` or ``["openai"]`` (1 unit each)."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [value]
    pairs = value.items() if isinstance(value, Mapping) else ((n, 1) for n in value)
    out = {}
    for name, units in pairs:
        check_limit_name(name, f"Stage {stage!r}")
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise InvalidLimitError(f"Stage {stage!r}: limits={{{name!r}: {units!r}}} is "
                                    "invalid; give the units each run takes, an int >= 1.",
                                    limit=name)
        out[name] = units
    return out


def check_uses(pipeline: str, stage: str, uses: Mapping[str, int],
               named: Mapping[str, NamedLimit]) -> None:
    """Every limit a stage takes is declared on the Pipeline, and a run fits in it."""
    for name, units in uses.items():
        lim = named.get(name)
        if lim is None:
            raise UnknownLimitError(
                f"Stage {stage!r} takes limit {name!r}, which Pipeline {pipeline!r} does not "
                f"declare; add Pipeline(..., limits={{{name!r}: N}}).{did_you_mean(name, named)}",
                limit=name)
        cap = lim.concurrency if lim.rate is None else lim.rate.burst
        if cap is not None and units > cap:
            raise InvalidLimitError(
                f"Stage {stage!r} takes {units} units of limit {name!r}, which holds only "
                f"{cap:g}: it could never run. Take fewer units or raise the limit.", limit=name)


#: ``FanOut(key=...)``: a subtask's name -> its rate key (None: no rate).
KeyFunction = Callable[[str], "str | None"]


def default_key(name: str) -> str:
    """A subtask's key by default: its name up to the first ``":"``
    (``"musicbrainz:recording"`` -> ``"musicbrainz"``)."""
    return name.partition(":")[0]


def fanout_rates(rate: Any) -> dict[str, Rate | None]:
    """``FanOut(rate=...)`` read: ``{key: "1/s"}`` (a rate of the fan-out's own), or
    ``["musicbrainz"]`` (the Pipeline's named rate limits; None until resolved)."""
    if rate is None:
        return {}
    if isinstance(rate, str):
        rate = [rate]
    out: dict[str, Rate | None] = {}
    if isinstance(rate, Mapping):
        for key, text in rate.items():
            check_limit_name(key, "FanOut")
            try:
                out[key] = text if isinstance(text, Rate) else parse_rate(text)
            except ValueError as exc:
                raise InvalidLimitError(f"FanOut: the rate of key {key!r}: {exc}.",
                                        limit=key) from None
        return out
    for key in rate:
        check_limit_name(key, "FanOut")
        out[key] = None
    return out


def subtask_rates(rates: Mapping[str, Rate | None], key: KeyFunction | None,
                  names: Sequence[str]) -> dict[str, str]:
    """Subtask name -> its key, for the subtasks whose key has a rate."""
    if not rates:
        return {}
    key_of = key or default_key
    out = {}
    for name in names:
        k = key_of(name)
        if k is not None and k in rates:
            out[name] = k
    return out


def resolve_rates(pipeline: str, rates: Mapping[str, Rate | None],
                  named: Mapping[str, NamedLimit]) -> dict[str, Rate]:
    """A fan-out's rates with the Pipeline's named ones filled in; a key that is a
    named limit shares its bucket, so its rate must be the named limit's."""
    out = {}
    for key, rate in rates.items():
        lim = named.get(key)
        if lim is not None and lim.rate is None:
            raise InvalidLimitError(
                f"FanOut rate key {key!r} names a concurrency limit of Pipeline "
                f"{pipeline!r}; subtask keys take rates only.", limit=key)
        if rate is None:
            if lim is None:
                raise UnknownLimitError(
                    f"FanOut(rate=[{key!r}]) names no limit of Pipeline {pipeline!r}; declare "
                    f"Pipeline(..., limits={{{key!r}: '1/s'}}) or give the rate: "
                    f"FanOut(..., rate={{{key!r}: '1/s'}}).{did_you_mean(key, named)}",
                    limit=key)
            rate = lim.rate
        elif lim is not None and lim.rate != rate:
            raise InvalidLimitError(
                f"FanOut rate {key!r}: {rate} differs from Pipeline {pipeline!r}'s limit "
                f"{key!r}: {lim.rate}; they share one bucket. Write FanOut(..., "
                f"rate=[{key!r}]) to use the Pipeline's.", limit=key)
        assert rate is not None
        out[key] = rate
    return out


def check_priority(value: object, what: str = "priority") -> int:
    """``value`` if it is an int priority the store can hold; ``ValueError`` otherwise."""
    low, high = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what}={value!r} is invalid; expected an int between {low} and {high} "
                         "(higher runs first, 0 by default)")
    return value


__all__ = ["NAMED", "KeyFunction", "NamedLimit", "Rate", "StageLimit", "check_priority",
           "check_uses", "default_key", "fanout_rates", "named_limits", "parse_rate",
           "resolve_rates", "stage_limits", "stage_uses", "subtask_rates"]
