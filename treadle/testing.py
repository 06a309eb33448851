"""Helpers for testing pipelines and stores.

- :func:`capture_signals` records every treadle signal sent while it is active.
- :class:`StoreConformance` is the conformance suite every ``StateStore``
  passes; subclass it in your own tests with a ``store`` fixture to check a
  store of your own (see tests/test_store_conformance.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from . import signals
from ._pytest_compat import pytest
from .errors import ItemNotFoundError
from .pipeline import Pipeline
from .stage import stage
from .store.base import StateStore, Transition


@attrs.frozen
class Event:
    """One captured signal: its name and keyword data."""

    name: str
    data: dict[str, Any]


class SignalRecorder:
    """The list of events captured by :func:`capture_signals`."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def _receiver(self, name: str) -> Any:
        def receive(sender: Any, **data: Any) -> None:
            with self._lock:
                self.events.append(Event(name, data))
        return receive

    def names(self, item_id: str | None = None) -> list[str]:
        """Signal names in order, optionally only those about one item."""
        return [e.name for e in self.events if item_id is None or e.data.get("item_id") == item_id]

    def of(self, name: str) -> list[Event]:
        """Events of one signal, in order."""
        return [e for e in self.events if e.name == name]


@contextmanager
def capture_signals(sender: Any = None) -> Iterator[SignalRecorder]:
    """Record every treadle signal (from ``sender``, or any) inside the block."""
    recorder = SignalRecorder()
    receivers = []
    for name, sig in signals.ALL.items():
        receiver = recorder._receiver(name)
        receivers.append((sig, receiver))
        if sender is None:
            sig.connect(receiver, weak=False)
        else:
            sig.connect(receiver, sender=sender, weak=False)
    try:
        yield recorder
    finally:
        for sig, receiver in receivers:
            sig.disconnect(receiver)


def _conformance_pipeline() -> Pipeline:
    @stage()
    def a(item: Any) -> None: ...

    @stage(after=[a])
    def b(item: Any) -> None: ...

    @stage(after=[a])
    def c(item: Any) -> None: ...

    @stage(after=[b, c])
    def d(item: Any) -> None: ...

    return Pipeline("conformance", [a, b, c, d])


OWNER = "test-host:1:owner"
OTHER = "test-host:2:other"


class StoreConformance:
    """The behaviour every StateStore must have. Subclass with a ``store`` fixture."""

    @pytest.fixture
    def shape(self) -> Pipeline:
        return _conformance_pipeline()

    @pytest.fixture
    def ready_store(self, store: StateStore, shape: Pipeline) -> StateStore:
        store.prepare(shape)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}'), ("i2", '{"id":"i2"}')], "test")
        return store

    @staticmethod
    def states(store: StateStore, shape: Pipeline, item_id: str) -> dict[str, str]:
        return {r.stage: r.state for r in store.stage_records(shape, item_id)}

    @staticmethod
    def done(item: str, stage_name: str, attempt: int = 1, state: str = "completed",
             **kw: Any) -> Transition:
        return Transition(item, stage_name, attempt, state, **kw)

    def test_submit_creates_pending_rows_and_ignores_known_ids(self, ready_store, shape):
        """Submitting stores each item once, with a pending row per stage."""
        new = ready_store.submit(shape, [("i1", '{"id":"i1"}'), ("i3", '{"id":"i3"}')], "test")
        assert new == ["i3"]
        assert self.states(ready_store, shape, "i3") == dict.fromkeys("abcd", "pending")
        assert ready_store.item_data(shape, "i1")[0] == '{"id":"i1"}'
        assert ready_store.item_ids(shape, None, None, None) == ["i1", "i2", "i3"]

    def test_claim_takes_only_ready_stages_oldest_first(self, ready_store, shape):
        """Only root stages are ready at first; claims come oldest first with attempt 1."""
        res = ready_store.commit(shape, OWNER, [], 10)
        assert [(c.item_id, c.stage, c.attempt) for c in res.claims] == [("i1", "a", 1), ("i2", "a", 1)]
        assert res.claims[0].item == '{"id":"i1"}'
        assert self.states(ready_store, shape, "i1")["a"] == "running"
        assert ready_store.commit(shape, OWNER, [], 10).claims == []

    def test_claim_respects_limit_and_item_filter(self, ready_store, shape):
        """A claim takes at most ``limit`` rows, and only the items asked for."""
        res = ready_store.commit(shape, OWNER, [], 1, only=["i2"])
        assert [(c.item_id, c.stage) for c in res.claims] == [("i2", "a")]

    def test_completion_makes_dependents_ready_and_carries_outputs(self, ready_store, shape):
        """A completed stage readies its dependents, whose claim carries its output."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", output='{"x":1}')], 10,
                                 only=["i1"])
        assert [t.stage for t in res.accepted] == ["a"]
        assert sorted(c.stage for c in res.claims) == ["b", "c"]
        assert all(c.outputs == {"a": '{"x":1}'} for c in res.claims)

    def test_join_waits_for_every_dependency(self, ready_store, shape):
        """A stage with two dependencies is ready only when both are done."""
        ready_store.commit(shape, OWNER, [], 1)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 10, only=["i1"])
        res = ready_store.commit(shape, OWNER, [self.done("i1", "b", output="2")], 10, only=["i1"])
        assert res.claims == []
        res = ready_store.commit(shape, OWNER, [self.done("i1", "c", state="skipped")], 10,
                                 only=["i1"])
        assert [(c.stage, dict(c.outputs)) for c in res.claims] == [("d", {"a": "1", "b": "2"})]
        res = ready_store.commit(shape, OWNER, [self.done("i1", "d", output="4")], 0)
        assert res.finished == [("i1", "completed")]
        assert ready_store.item_state_counts(shape) == {"completed": 1, "pending": 1}

    def test_completion_from_wrong_owner_or_attempt_is_refused(self, ready_store, shape):
        """A result whose claim is not (or no longer) held is refused and changes nothing."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OTHER, [self.done("i1", "a")], 0)
        assert res.accepted == [] and len(res.refused) == 1
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", attempt=2)], 0)
        assert res.accepted == [] and len(res.refused) == 1
        res = ready_store.commit(shape, OWNER, [self.done("i2", "a")], 0)  # never claimed
        assert len(res.refused) == 1
        assert self.states(ready_store, shape, "i1")["a"] == "running"
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a")], 0)
        assert len(res.accepted) == 1
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a")], 0)  # twice: refused
        assert len(res.refused) == 1

    def test_failure_blocks_dependents_and_retry_resumes(self, ready_store, shape):
        """A failed stage leaves dependents pending; retry makes it ready again."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", state="failed", error="E: x",
                                                          traceback="tb")], 10, only=["i1"])
        assert res.claims == [] and res.finished == [("i1", "failed")]
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert rec["a"].state == "failed" and rec["a"].error == "E: x" and rec["a"].attempt == 1
        assert ready_store.retry(shape, "i1", None, "test") == [("i1", "a")]
        res = ready_store.commit(shape, OWNER, [], 10, only=["i1"])
        assert [(c.stage, c.attempt) for c in res.claims] == [("a", 2)]

    def test_retry_of_unknown_item_raises(self, ready_store, shape):
        """Retrying an item the store does not know raises ItemNotFoundError."""
        with pytest.raises(ItemNotFoundError):
            ready_store.retry(shape, "nope", None, "test")

    def test_propagating_skip_skips_downstream(self, ready_store, shape):
        """Skipped(propagate=True) marks every downstream stage skipped."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", state="skipped",
                                                          propagate=True)], 10, only=["i1"])
        assert sorted(res.skipped) == [("i1", "b"), ("i1", "c"), ("i1", "d")]
        assert res.claims == [] and res.finished == [("i1", "completed")]
        assert self.states(ready_store, shape, "i1") == dict.fromkeys("abcd", "skipped")

    def test_review_state_and_counts(self, ready_store, shape):
        """awaiting_review is stored with its review data; counts and queries see it."""
        ready_store.commit(shape, OWNER, [], 1)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", state="awaiting_review",
                                                    review='{"data":1,"message":"m"}')], 0)
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert rec["a"].state == "awaiting_review" and rec["a"].review == '{"data":1,"message":"m"}'
        assert ready_store.counts(shape)["a"] == {"awaiting_review": 1, "pending": 1}
        assert ready_store.item_ids(shape, "a", "awaiting_review", None) == ["i1"]
        assert ready_store.item_ids(shape, None, "awaiting_review", None) == ["i1"]
        assert ready_store.item_ids(shape, "b", "awaiting_review", None) == []

    def test_history_is_append_only_and_ordered(self, ready_store, shape):
        """Every transition appends to the history; earlier entries never change."""
        before = ready_store.history(shape, "i1")
        ready_store.commit(shape, OWNER, [], 1)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        after = ready_store.history(shape, "i1")
        assert after[: len(before)] == before
        assert [(h["stage"], h["state"], h["attempt"], h["actor"]) for h in after] == [
            (None, "submitted", 0, "test"), ("a", "running", 1, OWNER), ("a", "completed", 1, OWNER),
        ]
        assert [h["seq"] for h in after] == sorted(h["seq"] for h in after)

    def test_recover_returns_claims_of_dead_or_lapsed_runners(self, ready_store, shape):
        """Claims of a runner whose process died or whose lease lapsed go back to pending."""
        ready_store.register_runner(OTHER, "test-host", 2, 30.0)
        ready_store.commit(shape, OTHER, [], 1)
        assert ready_store.recover(shape, "test-host", lambda pid: True) == []
        assert ready_store.recover(shape, "test-host", lambda pid: pid != 2) == [("i1", "a", 1)]
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        res = ready_store.commit(shape, OWNER, [], 1)
        assert [(c.item_id, c.attempt) for c in res.claims] == [("i1", 2)]
        # A lapsed lease is stale even when the process looks alive.
        ready_store.register_runner(OTHER, "elsewhere", 2, -1.0)
        ready_store.commit(shape, OTHER, [], 1)
        assert ready_store.recover(shape, "test-host", lambda pid: True) == [("i2", "a", 1)]
        # The late result of the lapsed claim is refused.
        assert len(ready_store.commit(shape, OTHER, [self.done("i2", "a")], 0).refused) == 1

    def test_prepare_adds_rows_for_new_stages(self, ready_store, shape):
        """A stage added to the pipeline gets rows for known items, ready where deps are done."""
        ready_store.commit(shape, OWNER, [], 1)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)

        @stage(after=["a"])
        def extra(item: Any) -> None: ...

        bigger = Pipeline("conformance", [*(s.fn for s in shape.stages.values()), extra])
        ready_store.prepare(bigger)
        assert self.states(ready_store, bigger, "i1")["extra"] == "pending"
        claimed = ready_store.commit(bigger, OWNER, [], 10, only=["i1"]).claims
        assert sorted(c.stage for c in claimed) == ["b", "c", "extra"]

    def test_release_gives_claims_back(self, ready_store, shape):
        """Released claims are pending again and their late results are refused."""
        ready_store.commit(shape, OWNER, [], 2)
        ready_store.release(shape, OWNER, [("i1", "a", 1)])
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        assert len(ready_store.commit(shape, OWNER, [self.done("i1", "a")], 0).refused) == 1
