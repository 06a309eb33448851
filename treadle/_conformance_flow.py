"""Flow control in the conformance suite: priorities, global concurrency, rate limits.

Part of :class:`treadle.testing.StoreConformance` (it inherits these tests),
so the memory, SQLite and PostgreSQL stores all pass them (docs/flow-control.md).
"""

from __future__ import annotations

import time
from typing import Any

from ._pytest_compat import pytest
from .errors import ItemNotFoundError
from .limits import parse_rate
from .pipeline import Pipeline
from .stage import stage
from .store.base import StateStore, Transition
from .store.fanout import FanOutStart

_OWNER = "test-host:1:owner"
_OTHER = "test-host:2:other"


def _flow_pipeline(name: str, **options: Any) -> Pipeline:
    """``a`` (with ``options``) then ``b``, and ``free`` (no limits) beside them."""
    @stage(**options)
    def a(item: Any) -> None: ...

    @stage(after=[a])
    def b(item: Any) -> None: ...

    @stage()
    def free(item: Any) -> None: ...

    return Pipeline(name, [a, b, free])


def _shared_pipeline(name: str, limits: dict[str, Any], a_takes: Any, b_takes: Any) -> Pipeline:
    """``a`` and ``b`` (both roots) taking the Pipeline's named ``limits``."""
    @stage(limits=a_takes)
    def a(item: Any) -> None: ...

    @stage(limits=b_takes)
    def b(item: Any) -> None: ...

    return Pipeline(name, [a, b], limits=limits)


def _items(n: int, prefix: str = "i") -> list[tuple[str, str]]:
    return [(f"{prefix}{k}", f'{{"id":"{prefix}{k}"}}') for k in range(n)]


class FlowConformance:
    """Flow control every StateStore enforces the same way (needs a ``store`` fixture)."""

    @staticmethod
    def _claimed(store: StateStore, shape: Pipeline, owner: str, limit: int,
                 stages: list[str] | None = None) -> list[tuple[str, str]]:
        res = store.commit(shape, owner, [], limit, stages=stages)
        return [(c.item_id, c.stage) for c in res.claims]

    def _ready(self, store: StateStore, shape: Pipeline, n: int) -> None:
        store.prepare(shape)
        store.register_runner(_OWNER, "test-host", 1, 30.0)
        store.register_runner(_OTHER, "test-host", 2, 30.0)
        store.submit(shape, _items(n), "test")

    def test_claims_take_the_highest_priority_first_then_the_oldest(self, store: StateStore
                                                                    ) -> None:
        """Priorities order claims (FIFO within one); prioritize() reorders what waits."""
        shape = _flow_pipeline("prio")
        self._ready(store, shape, 3)  # i0, i1, i2 at priority 0
        store.submit(shape, _items(2, "hi"), "test", priority=5)
        store.prioritize(shape, ["i2"], 10, "test")
        claimed = self._claimed(store, shape, _OWNER, 4, stages=["a"])
        assert claimed == [("i2", "a"), ("hi0", "a"), ("hi1", "a"), ("i0", "a")]
        assert store.item_priorities(shape, ["i2", "hi0", "i0"]) == {"i2": 10, "hi0": 5, "i0": 0}
        # a later stage of the item keeps its priority
        store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="1")], 0)
        store.commit(shape, _OWNER, [Transition("i2", "a", 1, "completed", output="1")], 0)
        assert self._claimed(store, shape, _OWNER, 1, stages=["b"]) == [("i2", "b")]
        last = store.history(shape, "i2")
        assert any(h["state"] == "prioritized" for h in last)

    def test_prioritize_of_an_unknown_item_changes_nothing(self, store: StateStore) -> None:
        """An unknown id raises ItemNotFoundError; the known ones keep their priority."""
        shape = _flow_pipeline("prio2")
        self._ready(store, shape, 2)
        with pytest.raises(ItemNotFoundError):
            store.prioritize(shape, ["i1", "nope"], 7, "test")
        assert store.item_priorities(shape, ["i0", "i1"]) == {"i0": 0, "i1": 0}
        assert self._claimed(store, shape, _OWNER, 1, stages=["a"]) == [("i0", "a")]

    def test_a_stage_default_priority_applies_to_items_submitted_without_one(
            self, store: StateStore) -> None:
        """``@stage(priority=...)`` orders that stage's runs ahead of the other stages'."""
        shape = _flow_pipeline("prio3", priority=3)
        self._ready(store, shape, 2)
        assert self._claimed(store, shape, _OWNER, 4) == [
            ("i0", "a"), ("i1", "a"), ("i0", "free"), ("i1", "free")]

    def test_a_global_concurrency_limit_counts_every_runners_running_rows(
            self, store: StateStore) -> None:
        """concurrency=2, scope="global": two runs at once across runners; each way a run
        ends (result, failure, release, recovery, cancel) gives its place back."""
        shape = _flow_pipeline("glob", concurrency=2, scope="global")
        self._ready(store, shape, 8)
        first = self._claimed(store, shape, _OWNER, 10, stages=["a"])
        assert first == [("i0", "a"), ("i1", "a")]
        assert self._claimed(store, shape, _OTHER, 10, stages=["a"]) == []
        # other stages are not held back by a's limit
        assert len(self._claimed(store, shape, _OTHER, 10, stages=["free"])) == 8
        # a result frees one place
        store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="1")], 0)
        assert self._claimed(store, shape, _OTHER, 10, stages=["a"]) == [("i2", "a")]
        # a failure frees one
        store.commit(shape, _OWNER, [Transition("i1", "a", 1, "failed", error="E")], 0)
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i3", "a")]
        # a release at shutdown frees one
        store.release(shape, _OWNER, [("i3", "a", 1)])
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i3", "a")]
        # recovery of a dead runner's claims frees its places
        back = store.recover(shape, "test-host", lambda pid: pid != 2)
        assert [k for k in back if k[1] == "a"] == [("i2", "a", 1)]
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i2", "a")]
        # a cancel frees one
        store.cancel(shape, ["i2"], "no", "test")
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i4", "a")]
        [status] = store.limit_status(shape)
        assert (status.stage, status.concurrency, status.in_use, status.waiting) == ("a", 2, 2, 3)

    def test_a_rate_limit_is_a_token_bucket_shared_by_runners(self, store: StateStore) -> None:
        """rate="4/s": four starts at once (the burst), then one every quarter second, for
        every runner together; an empty bucket tells the runner when to come back."""
        shape = _flow_pipeline("rate", rate="4/s")
        self._ready(store, shape, 10)
        res = store.commit(shape, _OWNER, [], 3, stages=["a"])
        assert len(res.claims) == 3 and res.waits == {}
        res = store.commit(shape, _OTHER, [], 10, stages=["a"])
        assert len(res.claims) == 1
        assert 0.15 < res.waits["a"] <= 0.25  # a whole token is due in a quarter second
        assert store.commit(shape, _OWNER, [], 10, stages=["a"]).claims == []
        time.sleep(0.6)
        again = store.commit(shape, _OWNER, [], 10, stages=["a"])
        assert 2 <= len(again.claims) <= 3  # 0.6 s at 4/s: two tokens and a bit
        [status] = store.limit_status(shape)
        assert (status.stage, status.rate, status.in_use) == ("a", "4/s", 4 + len(again.claims))
        assert status.waiting == 10 - 4 - len(again.claims)
        assert status.tokens is not None and 0 <= status.tokens < 1.5
        # stages without a limit are claimed as usual
        assert len(self._claimed(store, shape, _OWNER, 20, stages=["free"])) == 10

    def test_a_named_concurrency_limit_counts_the_units_of_every_stage_taking_it(
            self, store: StateStore) -> None:
        """limits={"api": 3}; a takes 1 unit a run, b 2: across runners the units in use
        never pass 3, and each way a run ends (result, failure, release, recovery,
        cancel) gives its units back."""
        shape = _shared_pipeline("named", {"api": 3}, {"api": 1}, {"api": 2})
        self._ready(store, shape, 6)
        assert self._claimed(store, shape, _OWNER, 10, stages=["b"]) == [("i0", "b")]
        assert self._claimed(store, shape, _OTHER, 10) == [("i0", "a")]  # 2 + 1 units
        assert self._claimed(store, shape, _OTHER, 10) == []
        # a result gives back b's 2 units: two runs of a, or one of b
        store.commit(shape, _OWNER, [Transition("i0", "b", 1, "completed", output="1")], 0)
        assert self._claimed(store, shape, _OTHER, 10, stages=["a"]) == [("i1", "a"), ("i2", "a")]
        # a failure gives back one
        store.commit(shape, _OTHER, [Transition("i1", "a", 1, "failed", error="E")], 0)
        assert self._claimed(store, shape, _OWNER, 10, stages=["b"]) == []  # 1 free, b takes 2
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i3", "a")]
        # a release at shutdown, the recovery of a dead runner and a cancel give theirs back
        store.release(shape, _OWNER, [("i3", "a", 1)])
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i3", "a")]
        back = store.recover(shape, "test-host", lambda pid: pid != 2)  # _OTHER died
        assert sorted(k[:2] for k in back) == [("i0", "a"), ("i2", "a")]
        store.cancel(shape, ["i3"], "no", "test")
        [named] = [s for s in store.limit_status(shape) if s.limit == "api"]
        assert (named.stage, named.concurrency, named.in_use, named.stages) == (
            None, 3, 0, ("a", "b"))
        assert named.waiting == 4 + 4  # a: i0, i2, i4, i5 (i1 failed); b: i1, i2, i4, i5
        assert self._claimed(store, shape, _OWNER, 10, stages=["b"]) == [("i1", "b")]
        assert self._claimed(store, shape, _OWNER, 10, stages=["a"]) == [("i0", "a")]

    def test_a_named_rate_is_one_bucket_for_every_stage_taking_it(self, store: StateStore
                                                                  ) -> None:
        """limits={"api": "4/s"}: a and b draw from one bucket (b two tokens a run); an
        empty bucket tells the runner when each stage may come back."""
        shape = _shared_pipeline("namedrate", {"api": "4/s"}, ["api"], {"api": 2})
        self._ready(store, shape, 6)
        res = store.commit(shape, _OWNER, [], 3, stages=["a"])
        assert len(res.claims) == 3 and res.waits == {}  # one token left
        res = store.commit(shape, _OTHER, [], 10)
        assert [(c.item_id, c.stage) for c in res.claims] == [("i3", "a")]
        assert 0.15 < res.waits["a"] <= 0.25  # one token, at four a second
        assert 0.4 < res.waits["b"] <= 0.5  # two tokens
        [named] = store.limit_status(shape)
        assert (named.limit, named.rate, named.in_use, named.stages) == ("api", "4/s", 4,
                                                                          ("a", "b"))
        assert named.tokens is not None and 0 <= named.tokens < 0.5

    def test_a_subtask_key_rate_starts_subtasks_only_with_a_token(self, store: StateStore
                                                                  ) -> None:
        """Subtasks whose key has a rate start, at the fan-out's start or at a restart,
        only as many as the key's bucket (shared with the Pipeline's named rate of that
        name) has tokens; the others stay pending, and the store says when the next
        token is due."""
        shape = _shared_pipeline("keyed", {"mb": "2/s"}, ["mb"], None)
        self._ready(store, shape, 3)
        assert self._claimed(store, shape, _OWNER, 1, stages=["b"]) == [("i0", "b")]
        mb = ("mb", parse_rate("2/s"))
        rates = {("i0", "b", n): mb for n in ("mb:1", "mb:2", "mb:3")}
        res = store.commit(shape, _OWNER, [], 0, sub_rates=rates,
                           fanouts=[FanOutStart("i0", "b", 1, ("mb:1", "mb:2", "mb:3", "free"))])
        [plan] = res.fanouts
        assert plan.run == [("free", 1)] and not plan.refused
        assert res.restarted == [("i0", "b", "mb:1", 1), ("i0", "b", "mb:2", 1)]
        assert list(res.sub_waits) == [("i0", "b", "mb:3")]
        assert 0.4 < res.sub_waits[("i0", "b", "mb:3")] <= 0.5
        subs = {r.name: (r.state, r.attempt) for r in store.subtask_records(shape, "i0")}
        assert subs == {"mb:1": ("running", 1), "mb:2": ("running", 1), "mb:3": ("pending", 0),
                        "free": ("running", 1)}
        res = store.commit(shape, _OWNER, [], 0, sub_rates=rates, restarts=[("i0", "b", "mb:3")])
        assert res.restarted == [] and 0.4 < res.sub_waits[("i0", "b", "mb:3")] <= 0.5
        # the bucket is the named limit "mb" that stage a takes: empty for it too
        res = store.commit(shape, _OTHER, [], 5, stages=["a"])
        assert res.claims == [] and 0.4 < res.waits["a"] <= 0.5
        time.sleep(0.55)
        res = store.commit(shape, _OWNER, [], 0, sub_rates=rates, restarts=[("i0", "b", "mb:3")])
        assert res.restarted == [("i0", "b", "mb:3", 1)] and res.sub_waits == {}
        history = [(h["subtask"], h["state"]) for h in store.history(shape, "i0") if h["subtask"]]
        assert history == [("free", "running"), ("mb:1", "running"), ("mb:2", "running"),
                           ("mb:3", "running")]
        # a runner that died leaves its subtasks to be started again with new tokens
        back = store.recover(shape, "test-host", lambda pid: pid != 1)
        assert back == [("i0", "b", 1)]
        assert {r.state for r in store.subtask_records(shape, "i0")} == {"pending"}


__all__ = ["FlowConformance"]
