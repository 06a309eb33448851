"""Conformance tests for cancel, pause/resume and the event feed (mixed into
:class:`treadle._conformance.StoreConformance`, so every store runs them)."""

from __future__ import annotations

from typing import Any

from ._pytest_compat import pytest
from .errors import InvalidTransitionError, ItemNotFoundError
from .pipeline import Pipeline
from .store.base import StateStore, Transition
from .store.control import ALL, paused
from .store.records import CANCEL, PAUSE, RESUME

OWNER = "test-host:1:owner"


def _states(store: StateStore, shape: Pipeline, item_id: str) -> dict[str, tuple[str, bool]]:
    return {r.stage: (r.state, r.ready) for r in store.stage_records(shape, item_id)}


class SteerConformance:
    """Cancel, pause and the committed event feed, the same on every store."""

    def test_cancel_takes_claims_back_and_refuses_their_late_results(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        claims = store.commit(shape, OWNER, [], 1, only=["i1"]).claims
        assert [(c.item_id, c.stage) for c in claims] == [("i1", "a")]
        assert store.cancel(shape, ["i1"], "withdrawn", "ana") == [("i1", "cancelled")]
        late = store.commit(shape, OWNER, [Transition("i1", "a", 1, "completed", output="1")], 10)
        assert late.accepted == [] and len(late.refused) == 1
        assert {(c.item_id, c.stage) for c in late.claims} == {("i2", "a")}  # never i1 again
        assert _states(store, shape, "i1")["a"] == ("pending", False)
        assert store.stored_item_states(shape, ["i1"]) == {"i1": "cancelled"}
        assert store.item_state_counts(shape).get("cancelled") == 1
        rows = [(h["stage"], h["state"], h["actor"]) for h in store.history(shape, "i1")]
        assert rows[-2:] == [("a", "cancelled", "ana"), (None, "cancelled", "ana")]
        assert [(r.kind, r.target, r.reason) for r in store.control(shape, 0, (CANCEL,))] == [
            ("cancel", "i1", "withdrawn")]

    def test_cancel_is_all_or_nothing_and_refuses_finished_items(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        before = _states(store, shape, "i1")
        with pytest.raises(ItemNotFoundError):
            store.cancel(shape, ["i1", "nope"], "", "ana")
        assert _states(store, shape, "i1") == before
        assert store.stored_item_states(shape, ["i1"]) == {"i1": "pending"}
        store.cancel(shape, ["i1"], "", "ana")
        with pytest.raises(InvalidTransitionError, match="already cancelled"):
            store.cancel(shape, ["i2", "i1"], "", "ana")
        assert store.stored_item_states(shape, ["i2"]) == {"i2": "pending"}  # i2 untouched

    def test_a_cancelled_item_is_never_retried_rerun_or_decided(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        store.commit(shape, OWNER, [], 2)
        store.commit(shape, OWNER, [Transition("i1", "a", 1, "completed", output="1"),
                                    Transition("i2", "a", 1, "awaiting_review",
                                               review='{"data":1,"message":""}')], 0)
        store.commit(shape, OWNER, [], 2, only=["i1"])  # i1: b and c run
        store.commit(shape, OWNER, [Transition("i1", "b", 1, "failed", error="E")], 0)
        store.cancel(shape, ["i1", "i2"], "", "ana")  # i1 still runs c: not finished
        with pytest.raises(InvalidTransitionError, match="cancelled"):
            store.retry(shape, "i1", None, "ana")
        assert store.retry(shape, None, None, "ana") == []  # a bulk retry leaves them be
        with pytest.raises(InvalidTransitionError, match="cancelled"):
            store.rerun(shape, "i1", "a", "ana")
        with pytest.raises(InvalidTransitionError, match="cancelled"):
            store.decide(shape, "i2", "a", approve=True, output=None, review={}, actor="ana",
                         details={})
        assert _states(store, shape, "i2")["a"] == ("pending", False)  # review withdrawn

    def test_cancel_rolls_back_first_when_the_pipeline_asks(self, store: StateStore) -> None:
        from ._conformance import _conformance_pipeline

        shape = _conformance_pipeline(on_failure="rollback")
        store.prepare(shape)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}')], "test")
        store.commit(shape, OWNER, [], 1)
        store.commit(shape, OWNER, [Transition("i1", "a", 1, "completed", output="1")], 0)
        assert store.cancel(shape, ["i1"], "", "ana") == [("i1", "rolling_back")]
        assert store.claim_rollbacks(shape, OWNER, 10) == [("i1", ["a"])]
        assert store.record_rollback(shape, OWNER, "i1", "a", error=None, traceback=None)
        assert store.finish_rollback(shape, OWNER, "i1") == "cancelled"
        assert store.stored_item_states(shape, ["i1"]) == {"i1": "cancelled"}

    def test_pause_and_resume_are_stored_and_folded_in_order(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        assert store.pause(shape, "b", "ana", "API down") is True
        assert store.pause(shape, "b", "ana") is False  # already
        assert store.pause(shape, None, "ana") is True
        assert paused(store.control(shape, 0, (PAUSE, RESUME))) == {"b", ALL}
        assert store.resume(shape, "c", "ana") is False  # was not paused
        assert store.resume(shape, None, "ana") is True  # lifts every pause
        assert paused(store.control(shape, 0)) == frozenset()
        assert store.resume(shape, None, "ana") is False
        # outlook counts only what the given stages may claim
        assert store.outlook(shape, None, ["a"]).ready == 2
        assert store.outlook(shape, None, ["b"]).ready == 0
        assert store.commit(shape, OWNER, [], 10, stages=[]).claims == []
        assert store.commit(shape, OWNER, [], 10, stages=["b"]).claims == []

    def test_events_come_in_commit_order_once_each_by_cursor(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        store.commit(shape, OWNER, [], 2)
        store.commit(shape, OWNER, [Transition("i1", "a", 1, "completed", output="1")], 0)
        store.pause(shape, "b", "ana", "later")
        every = store.events(shape, 0, 1000)
        ids = [e["seq"] for e in every]
        assert ids == sorted(set(ids)) and store.last_event_id(shape) == ids[-1]
        assert [(e["item_id"], e["stage"], e["state"]) for e in every] == [
            ("i1", None, "submitted"), ("i2", None, "submitted"), ("i1", "a", "running"),
            ("i2", "a", "running"), ("i1", "a", "completed"), ("", "b", "paused")]
        pages: list[Any] = []
        cursor = 0
        while page := store.events(shape, cursor, 2):
            pages += page
            cursor = page[-1]["seq"]
        assert pages == every
        assert [e["state"] for e in store.events(shape, 0, 10, "i2")] == ["submitted", "running"]
        assert [e["state"] for e in store.events(shape, ids[2], 10, "i1")] == ["completed"]
        assert [e["state"] for e in store.events(shape, 0, 1, "i1")] == ["submitted"]
        assert store.events(shape, ids[-1], 10) == []
