"""What a stage function returns.

A plain value (or ``None``) means :class:`Completed`; the other outcomes say
the stage needs a human (:class:`Review`), spawns subtasks (:class:`FanOut`),
spawns child items into another pipeline (:class:`Spawn`) or did not apply
(:class:`Skipped`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
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
    """

    data: Any = None
    message: str = ""


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
    """

    subtasks: Mapping[str, Callable[[], Any]] | Iterable[SubTask]


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
