"""Finding items by filter: the filter, the rows it matches, and how pages are cut.

Every store answers :meth:`~treadle.store.base.StateStore.find_items` with one
:class:`Match` per item: the first of its stage rows that passes the filter
(oldest first when a state is given, else in submission order). The SQL
stores read each stage's rows through the ``(pipeline, stage, state,
updated_at)`` index, at most ``offset + limit`` of them per stage, and merge
them here; the memory store filters its rows with :func:`passes`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import attrs

_T = TypeVar("_T")


@attrs.frozen
class Filter:
    """What ``find_items`` looks for; every field given must hold for one stage row.

    ``stage``: that stage's row; ``state``: a stage state; ``error``: a
    case-insensitive substring of the row's last error; ``since``: updated at
    or after this epoch time. With none given, every item matches.
    """

    stage: str | None = None
    state: str | None = None
    error: str | None = None
    since: float | None = None

    @property
    def empty(self) -> bool:
        """True when the filter holds for every item."""
        return self.stage is None and self.state is None and self.error is None and self.since is None

    @property
    def by_time(self) -> bool:
        """Oldest change first (a state is given), else in submission order."""
        return self.state is not None


@attrs.frozen
class Match:
    """An item that passed a filter, with the stage row it passed on.

    ``stage`` is None for an unfiltered listing (then ``state`` is the item's
    recorded item state). ``review`` is the row's review JSON text.
    """

    item_id: str
    stage: str | None
    state: str
    attempt: int
    error: str | None
    review: str | None
    updated_at: float


def passes(flt: Filter, stage: str, state: str, error: str | None, updated_at: float) -> bool:
    """True when one stage row passes ``flt`` (the memory store's filter)."""
    return ((flt.stage is None or stage == flt.stage)
            and (flt.state is None or state == flt.state)
            and (flt.since is None or updated_at >= flt.since)
            and (flt.error is None or (error is not None and flt.error.lower() in error.lower())))


def like_pattern(text: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``text`` anywhere (lower-cased)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def window(limit: int | None, offset: int) -> int | None:
    """How many rows each stage must yield for the page ``[offset, offset + limit)``."""
    return None if limit is None else offset + limit


def first_per_item(rows: Iterable[tuple[float, int, Match]], limit: int | None,
                   offset: int) -> list[Match]:
    """Rows ``(key, row id, match)`` of several stages merged in key order, one per item,
    then the page ``[offset, offset + limit)``.

    Correct when each stage yielded its first ``offset + limit`` rows: an item
    of the page has fewer than ``offset + limit`` items before it, so its
    first row is among the first ``offset + limit`` rows of its stage.
    """
    seen: dict[str, Match] = {}
    for _, _, match in sorted(rows, key=lambda r: (r[0], r[1])):
        seen.setdefault(match.item_id, match)
    found = list(seen.values())
    return found[offset:] if limit is None else found[offset:offset + limit]


def page(matches: Sequence[_T], limit: int | None, offset: int) -> list[_T]:
    """The page ``[offset, offset + limit)`` of matches (or ids) already in order."""
    return list(matches[offset:]) if limit is None else list(matches[offset:offset + limit])


__all__ = ["Filter", "Match", "first_per_item", "like_pattern", "page", "passes", "window"]
