"""What a stage function returns.

A plain value (or ``None``) means :class:`Completed`; the other outcomes say
the stage needs a human (:class:`Review`), spawns subtasks (:class:`FanOut`),
spawns child items into another pipeline (:class:`Spawn`) or did not apply
(:class:`Skipped`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import attrs


@attrs.frozen
class Completed:
    """The stage finished; ``output`` is stored and visible downstream in ``ctx.outputs``."""

    output: Any = None


@attrs.frozen
class Review:
    """The stage pauses for a human decision on ``data``.

    ``approve`` completes the stage with the (optionally edited) data as its
    output; ``reject`` stops the item there.

    - ``options``: the reviewer picks one (``multiple=True``: one or more;
      ``default``: the pick when none is given); the output is then
      ``{"choice": ..., "data": ...}`` and :func:`treadle.chose` routes on it.
    - ``form``: an attrs class, a dataclass or ``{name: type}`` (types str,
      int, float, bool; ``(type, default)`` for an optional field): the
      reviewer's answer (``approve(data=...)``; the review data pre-fills it)
      is validated and becomes the output.
    - ``assignees``: only these reviewer names may decide (default: the
      stage's ``reviewers``).
    """

    data: Any = None
    message: str = ""
    options: Sequence[str] | None = attrs.field(default=None, kw_only=True)
    multiple: bool = attrs.field(default=False, kw_only=True)
    default: Any = attrs.field(default=None, kw_only=True)
    form: Any = attrs.field(default=None, kw_only=True)
    assignees: Sequence[str] | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        from .decisions import check_options, form_fields

        check_options(self.options, self.multiple, self.default)
        if self.form is not None:
            form_fields(self.form)
        if self.assignees is not None and (
                isinstance(self.assignees, str)
                or not all(isinstance(a, str) and a for a in self.assignees)):
            raise TypeError(f"Review(assignees=...) takes a list of reviewer names, "
                            f"got {self.assignees!r}")


def _rates(value: Any) -> Mapping[str, Any]:
    """``FanOut(rate=...)`` parsed: key -> Rate, or None for a Pipeline's named rate."""
    from .limits import fanout_rates

    return fanout_rates(value)


def _check_key(key: object) -> None:
    if key is not None and not callable(key):
        from .errors import InvalidLimitError

        raise InvalidLimitError(f"FanOut(key={key!r}) is not callable; pass a function from a "
                                "subtask's name to its rate key.", limit=None)


@attrs.frozen
class SubTask:
    """One named subtask of a :class:`FanOut`: ``fn(*args, **kwargs)``."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.__attrs_init__(name, fn, tuple(args), dict(kwargs))  # type: ignore[attr-defined]


@attrs.frozen
class FanOut:
    """Run several named subtasks concurrently; the stage's output is ``{name: output}``.

    ``subtasks`` is a mapping ``name -> callable`` or an iterable of :class:`SubTask`.

    ``rate`` limits how often subtasks start, per *key*, across every runner on
    the store: ``{"musicbrainz": "1/s"}``, or ``["musicbrainz"]`` to take the
    Pipeline's named rate limit of that name. A subtask's key is its name up
    to the first ``":"`` (``"musicbrainz:release"`` -> ``"musicbrainz"``), or
    what ``key(name)`` returns (None: no rate). A bad rate raises
    :class:`~treadle.InvalidLimitError` here (docs/flow-control.md).
    """

    subtasks: Mapping[str, Callable[[], Any]] | Iterable[SubTask]
    rate: Mapping[str, Any] = attrs.field(default=None, kw_only=True, converter=_rates)
    key: Callable[[str], str | None] | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_key(self.key)


@attrs.frozen
class Skipped:
    """The stage does not apply to this item.

    With ``propagate=False`` (the default) dependents run as if it had
    completed; with ``propagate=True`` the whole downstream is skipped too.
    """

    reason: str = ""
    propagate: bool = False


@attrs.frozen
class Spawn:
    """Submit ``items`` as child items of ``pipeline`` and wait until they all settle.

    ``pipeline`` must be one the stage declares in ``@stage(spawns=...)``.
    Each child is stored as ``"<parent id>/<child id>"`` unless ``ids`` gives
    the stored ids (one per item). The stage is ``waiting`` meanwhile; then it
    completes with ``{child id: {stage: output}}`` (or what the stage's
    ``collect=`` makes of it), or fails naming the children that did not
    complete (see docs/nested.md).
    """

    pipeline: Any
    items: Iterable[Any]
    ids: Iterable[str] | None = None


#: Any value a stage function may return.
Outcome: TypeAlias = Completed | Review | FanOut | Skipped | Spawn | Any


def to_outcome(value: Any) -> Completed | Review | FanOut | Skipped | Spawn:
    """Map a stage function's return value to an outcome (plain value -> Completed)."""
    if isinstance(value, (Completed, Review, FanOut, Skipped, Spawn)):
        return value
    return Completed(output=value)
