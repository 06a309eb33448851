"""Flow control on the runner: priorities and the shared limits (docs/flow-control.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._steer import _as_list
from .limits import check_priority
from .serialization import normalize_id
from .store.limits import LimitStatus

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .store.base import StateStore


class FlowMixin:
    """The priority and limit methods of :class:`~treadle.Runner`."""

    pipeline: Pipeline
    store: StateStore

    def _prepare(self) -> None: ...

    def prioritize(self, item_ids: Any, priority: int, *, actor: str = "api") -> list[str]:
        """Change the priority of items (one id or an iterable of ids).

        Their runs not yet claimed are claimed in the new order (higher first,
        oldest first within a priority), by every runner on the store. All or
        none: an unknown id raises ``ItemNotFoundError`` and nothing changes.
        Returns the ids.
        """
        check_priority(priority)
        ids = [normalize_id(i) for i in _as_list(item_ids)]
        if not ids:
            return []
        self._prepare()
        return self.store.prioritize(self.pipeline, ids, priority, actor)

    def priority(self, item_id: Any) -> int:
        """The priority an item was given (0 unless set)."""
        key = normalize_id(item_id)
        self.store.item_data(self.pipeline, key)  # raises ItemNotFoundError
        return self.store.item_priorities(self.pipeline, [key]).get(key, 0)

    def limits(self) -> list[LimitStatus]:
        """The limits every runner shares (``rate=``, ``concurrency=, scope="global"``),
        one per limited stage: tokens left, runs waiting, runs in use now. Only reads."""
        return self.store.limit_status(self.pipeline)


__all__ = ["FlowMixin"]
