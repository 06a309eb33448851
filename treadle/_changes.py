"""The definition-change methods of :class:`~treadle.Runner`: ``plan``,
``rerun_stale`` and what a runner does at start (item migrations,
``on_change="rerun"``). See docs/changes.md."""

from __future__ import annotations

import json
from typing import Any

from .pipeline import Pipeline
from .plan import Plan, make_plan, stale_resets
from .store.base import StateStore
from .store.records import dumps

#: Items migrated per transaction.
MIGRATION_BATCH = 200


class ChangesMixin:
    """``plan``, ``rerun_stale`` and the start-of-run migrations of a Runner."""

    pipeline: Pipeline
    store: StateStore

    def plan(self) -> Plan:
        """What the pipeline definition changes for the items already stored.

        Reads only: lists the stages added, removed and renamed, the results
        made by an older definition of their stage (stale, with the outputs
        downstream that depend on them), the items a migration will upgrade and
        those the item type can no longer restore, each with item counts.
        ``plan.needs_decision`` is True when one of them needs a decision.
        """
        return make_plan(self.pipeline, self.store)

    def rerun_stale(self, *, stage: str | None = None, actor: str = "api") -> list[tuple[str, str]]:
        """Rerun every stale result (of ``stage``, if given) and everything downstream.

        Each reset is recorded in the item's history with the reason
        (``fingerprint 3fa2c1d0 -> 9c10e2f4: new dependency x``). A reviewed stage
        goes back to review when it runs again; its earlier decision shows in
        ``status`` (``ReviewInfo.previous``). Items with a stage running are
        left for later. Returns the (item_id, stage) rows reset.
        """
        if stage is not None:
            self.pipeline.check_stage(stage)
        self._prepare()
        resets = stale_resets(self.plan(), stage)
        return self.store.reset_stale(self.pipeline, resets, actor) if resets else []

    def _prepare(self) -> None:
        raise NotImplementedError

    def _on_start(self) -> None:
        """Migrate items of older versions; rerun stale stages whose policy says so."""
        self.migrate_items()
        rerun = [s for s in self.pipeline.order if self.pipeline.change_policy(s) == "rerun"]
        if rerun:
            plan = self.plan()
            resets = [r for s in rerun for r in stale_resets(plan, s)]
            if resets:
                self.store.reset_stale(self.pipeline, resets, "definition")

    def migrate_items(self) -> int:
        """Apply the pipeline's ``@pipeline.migrate`` functions to the stored items of
        older versions, in transactions of :data:`MIGRATION_BATCH` items, each item
        once (its history records it). Runs when a runner starts; returns how many."""
        total = 0
        progress = True
        while progress:  # a chain (None -> 1 -> 2) goes on until nothing moves
            progress = False
            for source, (target, fn) in self.pipeline.migrations.items():
                upgrade = _upgrader(self.pipeline, fn)
                while n := self.store.migrate_items(self.pipeline, source, target, upgrade,
                                                    MIGRATION_BATCH, "migration"):
                    total += n
                    progress = True
        return total


def _upgrader(pipeline: Pipeline, fn: Any) -> Any:
    def upgrade(text: str) -> str:
        data = json.loads(text)
        return dumps(fn(data), what=f"migrated item of pipeline {pipeline.name!r}",
                     item_id=str(data.get("id")) if isinstance(data, dict) else None)

    return upgrade


__all__ = ["MIGRATION_BATCH", "ChangesMixin"]
