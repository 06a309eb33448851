"""Definition changes in the store: recorded stage definitions, stale resets and
item migrations, as functions over one :class:`Tx` (docs/changes.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidTransitionError
from .human import rerun
from .records import HistoryRow, Shape, dumps
from .tx import Tx


def record_definitions(tx: Tx, shape: Shape) -> None:
    """Record the definition behind each stage's current fingerprint (once), so that
    ``plan`` can later say what changed."""
    definitions = getattr(shape, "definitions", None)
    fingerprints = getattr(shape, "fingerprints", None)
    if not definitions or not fingerprints:
        return
    tx.record_definitions(shape.name, [
        (s, fingerprints[s], json.dumps(definitions[s], sort_keys=True)) for s in shape.order])


def reset_stale(tx: Tx, shape: Shape, resets: Sequence[tuple[str, str, dict[str, Any]]],
                actor: str) -> list[tuple[str, str]]:
    """Rerun each (item, stage) and its downstream with its reason in the history.

    A stage already reset as downstream of an earlier one of the same item is
    not reset twice; an item with a stage running (or rolling back) is left
    for later. Returns the (item, stage) rows reset.
    """
    rank = {s: i for i, s in enumerate(shape.order)}
    done: list[tuple[str, str]] = []
    covered: set[tuple[str, str]] = set()
    for item_id, stage, reason in sorted(resets, key=lambda r: (r[0], rank[r[1]])):
        if (item_id, stage) in covered:
            continue
        try:
            moved = rerun(tx, shape, item_id, stage, actor, reason)
        except InvalidTransitionError:
            continue  # running or rolling back: plan still shows it, rerun it later
        covered.update((item_id, s) for s in (stage, *shape.descendants[stage]))
        done += [(item_id, s) for s in moved]
    return done


def migrate_items(tx: Tx, shape: Shape, from_version: str | None, to_version: str,
                  fn: Callable[[str], str], limit: int, actor: str) -> int:
    """Migrate up to ``limit`` items from ``from_version`` to ``to_version``: each item's
    data is replaced (guarded on its version) and the history records it."""
    rows = tx.items_at_version(shape.name, from_version, limit)
    upgraded = [(item_id, fn(data)) for item_id, data in rows]  # all built before any write
    details = dumps({"reason": "migrated", "from_version": from_version,
                     "to_version": to_version}, what="migration record")
    moved = [i for i, data in upgraded
             if tx.migrate_item(shape.name, i, from_version, to_version, data)]
    tx.append_history(shape.name, [HistoryRow(i, None, "migrated", 0, actor, details=details)
                                   for i in moved])
    return len(moved)


__all__ = ["migrate_items", "record_definitions", "reset_stale"]
