"""Item JSON in claims, in the conformance suite: whatever a store keeps in memory.

Part of :class:`treadle.testing.StoreConformance` (it inherits these tests),
so the memory, SQLite and PostgreSQL stores all pass them. A store may keep
item JSON between claims (``BaseStore.item_cache``, bounded in bytes); a
claim must carry each item's JSON as submitted whether or not it was kept.
"""

from __future__ import annotations

import json

from ._conformance_counts import noop_stage
from ._pytest_compat import pytest
from .pipeline import Pipeline
from .store.base import StateStore, Transition

_OWNER = "test-host:1:owner"


def _chain(name: str) -> Pipeline:
    """Three stages in a line: every item is claimed three times."""
    return Pipeline(name, [noop_stage("one"), noop_stage("two", "one"),
                           noop_stage("three", "two")])


def _payload(k: int, size: int) -> str:
    return json.dumps({"id": f"i{k}", "blob": chr(ord("a") + k % 26) * size})


class ItemConformance:
    """Claims carry the submitted item JSON (needs a ``store`` fixture)."""

    @staticmethod
    def _run_through(store: StateStore, shape: Pipeline, batch: int) -> dict[str, list[str]]:
        """Claim and complete everything, ``batch`` claims per commit; item -> the
        item JSON of each of its claims."""
        seen: dict[str, list[str]] = {}
        res = store.commit(shape, _OWNER, [], batch)
        while res.claims:
            for c in res.claims:
                seen.setdefault(c.item_id, []).append(c.item)
            res = store.commit(shape, _OWNER, [Transition(c.item_id, c.stage, c.attempt,
                                                          "completed", output="1")
                                               for c in res.claims], batch)
        return seen

    @pytest.mark.parametrize("bound", [0, 3_000, 64 * 2**20])
    def test_claims_carry_the_submitted_item_whatever_the_item_cache_keeps(
            self, store: StateStore, bound: int) -> None:
        """Items of 1 KB claimed 3 times each, with the item cache off, holding about
        two items, or holding them all: every claim carries the item as submitted."""
        cache = getattr(store, "item_cache", None)
        if cache is not None:
            cache.limit = bound
        shape = _chain("cached_items")
        store.prepare(shape)
        store.register_runner(_OWNER, "test-host", 1, 30.0)
        items = {f"i{k}": _payload(k, 1_000) for k in range(12)}
        store.submit(shape, list(items.items()), "test")
        seen = self._run_through(store, shape, 5)
        assert seen == {i: [data] * 3 for i, data in items.items()}
        assert store.counts(shape) == {s: {"completed": 12} for s in shape.order}
        if cache is not None:
            assert cache.bytes <= bound

    def test_a_finished_item_leaves_the_item_cache(self, store: StateStore) -> None:
        """Once an item has finished, the store keeps none of its JSON; a retry of it
        reads the item again."""
        cache = getattr(store, "item_cache", None)
        if cache is None:
            pytest.skip("this store has no item cache")
        cache.limit = 64 * 2**20
        shape = _chain("finished_items")
        store.prepare(shape)
        store.register_runner(_OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i0", _payload(0, 500)), ("i1", _payload(1, 500))], "test")
        res = store.commit(shape, _OWNER, [], 2)
        assert len(cache) == 2 and cache.bytes > 1_000
        res = store.commit(shape, _OWNER, [Transition("i0", "one", 1, "failed", error="no"),
                                           Transition("i1", "one", 1, "completed")], 0)
        assert res.finished == [("i0", "failed")]
        assert len(cache) == 1 and cache.get(shape.name, ["i0"]) == {}
        store.retry(shape, "i0", None, "test")
        [claim] = store.commit(shape, _OWNER, [], 1, only=["i0"]).claims
        assert claim.item == _payload(0, 500)
