"""The store conformance suite over every store kind, and the store bugs it found."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from treadle._conformance import OWNER
from treadle.errors import InvalidTransitionError, SerializationError
from treadle.pipeline import Pipeline
from treadle.store import counts
from treadle.store.base import StateStore, Transition
from treadle.store.sql import SqlStore
from treadle.testing import StoreConformance


@pytest.fixture(autouse=True)
def counters_stay_exact(store: StateStore) -> Iterator[None]:
    """After every conformance test, a SQL store's stage counters equal a GROUP BY of
    its stage rows (store/counts.py), whatever the test did."""
    yield
    if isinstance(store, SqlStore):
        assert counts.drift(store._read) == {}


class TestConformance(StoreConformance):
    """Runs every conformance test over the memory, SQLite and PostgreSQL stores (see conftest.py).

    The tests below are regression tests of store bugs of issue 12 (#3, #7, #10,
    #14) and of two found by these tests (a rerun that resets nothing, retry of
    a rolled-back item).
    """

    def test_request_changes_with_unstorable_feedback_changes_nothing(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """Feedback that is not JSON is a SerializationError and the stage still awaits review."""
        self.to_review(ready_store, shape)
        before = self.snapshot(ready_store, shape, "i1")
        try:
            with pytest.raises(SerializationError):
                ready_store.request_changes(shape, "i1", "a", feedback=object(), actor="r",
                                            reviewer="r")
        finally:
            assert self.snapshot(ready_store, shape, "i1") == before

    def test_one_unstorable_text_does_not_block_the_group_commit(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """A lone surrogate in an error message is stored escaped; the other results commit."""
        ready_store.commit(shape, OWNER, [], 2)
        res = ready_store.commit(shape, OWNER, [
            Transition("i1", "a", 1, "failed", error="cannot read b'\\xff' -> \udcff.flac"),
            Transition("i2", "a", 1, "completed", output='"ok"'),
        ], 0)
        assert [t.item_id for t in res.accepted] == ["i1", "i2"]
        assert self.states(ready_store, shape, "i2")["a"] == "completed"
        [rec] = [r for r in ready_store.stage_records(shape, "i1") if r.stage == "a"]
        assert rec.state == "failed" and rec.error is not None
        rec.error.encode("utf-8")  # stored escaped: a driver can send it

    def test_retry_and_rerun_refused_while_rolling_back(self, store: StateStore) -> None:
        """While a rollback is claimed, retry and rerun raise InvalidTransitionError."""
        shape = self.failing_rollback_item(store)
        assert self.rollbacks(store).claim_rollbacks(shape, OWNER, 10) == [("i1", ["b", "a"])]
        before = self.snapshot(store, shape, "i1")
        for operation in (lambda: store.retry(shape, "i1", None, "test"),
                          lambda: store.rerun(shape, "i1", "b", "test")):
            with pytest.raises(InvalidTransitionError):
                operation()
            assert self.snapshot(store, shape, "i1") == before

    def test_rerun_that_resets_nothing_keeps_the_item_state(self, ready_store: StateStore,
                                                            shape: Pipeline) -> None:
        """A rerun from a stage behind a failed one changes nothing, not even the item state."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [Transition("i1", "a", 1, "failed", error="E")], 0)
        assert ready_store.settled_item_counts(shape).get("failed") == 1
        assert ready_store.rerun(shape, "i1", "b", "test") == []
        assert ready_store.settled_item_counts(shape).get("failed") == 1

    def rolled_back_item(self, store: StateStore) -> Pipeline:
        """The item of :meth:`failing_rollback_item`, rolled back to the end."""
        shape = self.failing_rollback_item(store)
        ops = self.rollbacks(store)
        ops.claim_rollbacks(shape, OWNER, 10)
        for stage_name in ("b", "a"):
            ops.record_rollback(shape, OWNER, "i1", stage_name, error=None, traceback=None)
        assert ops.finish_rollback(shape, OWNER, "i1") == "rolled_back"
        return shape

    def test_retry_of_a_rolled_back_item_keeps_states_consistent(self, store: StateStore) -> None:
        """retry() of a rolled-back item is refused (bulk retry leaves it alone); its state holds."""
        shape = self.rolled_back_item(store)
        before = self.snapshot(store, shape, "i1")
        with pytest.raises(InvalidTransitionError, match="was rolled back"):
            store.retry(shape, "i1", None, "test")
        assert self.snapshot(store, shape, "i1") == before
        assert store.retry(shape, None, None, "test") == []  # bulk retry leaves it be
        assert store.settled_item_counts(shape) == store.item_state_counts(shape)

    def test_rerun_behind_a_rolled_back_stage_is_refused(self, store: StateStore) -> None:
        """A rerun from a stage whose upstream was rolled back is refused (it could never
        run); a rerun from the rolled-back stage itself redoes the item."""
        shape = self.rolled_back_item(store)
        before = self.snapshot(store, shape, "i1")
        with pytest.raises(InvalidTransitionError, match="rolled back"):
            store.rerun(shape, "i1", "b", "test")
        assert self.snapshot(store, shape, "i1") == before
        assert store.rerun(shape, "i1", "a", "test") == ["a", "b", "c"]

    def test_threads_sharing_one_store_claim_each_stage_once(
            self, store: StateStore, shape: Pipeline, store_url: str,
            request: pytest.FixtureRequest) -> None:
        super().test_threads_sharing_one_store_claim_each_stage_once(store, shape)
