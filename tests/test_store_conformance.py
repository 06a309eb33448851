"""The store conformance suite over every store kind, and the store bugs it found."""

from __future__ import annotations

import pytest

from treadle._conformance import OWNER
from treadle.errors import InvalidTransitionError, SerializationError
from treadle.pipeline import Pipeline
from treadle.store.base import StateStore, Transition
from treadle.testing import StoreConformance


class TestConformance(StoreConformance):
    """Runs every conformance test over the memory, SQLite and PostgreSQL stores (see conftest.py).

    The tests marked ``xfail`` below are known store bugs (issue 12); once one is
    fixed, its test passes, the strict xfail fails, and the test moves into
    :class:`~treadle.testing.StoreConformance` without its marker.
    """

    @pytest.mark.xfail(strict=True, raises=(TypeError, AssertionError),
                       reason="bug (issue 12 #10): request_changes with non-JSON feedback raises a "
                              "raw TypeError, and the memory store is left pending without history")
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

    @pytest.mark.xfail(strict=True, raises=(UnicodeEncodeError, AssertionError),
                       reason="bug (issue 12 #14): an error text with a lone surrogate fails the "
                              "whole group commit on SQL stores and is stored raw in memory")
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

    @pytest.mark.xfail(strict=True, raises=(AssertionError, pytest.fail.Exception),
                       reason="bug (issue 12 #3): retry() and rerun() while an item rolls back "
                              "overwrite its rolling-back state instead of being refused")
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

    @pytest.mark.xfail(strict=True, raises=AssertionError,
                       reason="bug: a rerun that resets nothing (its stage waits on a failed "
                              "upstream) still records the item as pending, so run reports and "
                              "`python -m treadle run`'s exit status miss the failed item")
    def test_rerun_that_resets_nothing_keeps_the_item_state(self, ready_store: StateStore,
                                                            shape: Pipeline) -> None:
        """A rerun from a stage behind a failed one changes nothing, not even the item state."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [Transition("i1", "a", 1, "failed", error="E")], 0)
        assert ready_store.settled_item_counts(shape).get("failed") == 1
        assert ready_store.rerun(shape, "i1", "b", "test") == []
        assert ready_store.settled_item_counts(shape).get("failed") == 1

    @pytest.mark.xfail(strict=True, raises=AssertionError,
                       reason="bug: retry() of a rolled-back item moves its failed stage back to "
                              "pending behind a rolled-back one (it can never run) and records "
                              "the item as pending for good")
    def test_retry_of_a_rolled_back_item_keeps_states_consistent(self, store: StateStore) -> None:
        """After retry() of a rolled-back item, the item state kept is the one its stages imply."""
        shape = self.failing_rollback_item(store)
        ops = self.rollbacks(store)
        ops.claim_rollbacks(shape, OWNER, 10)
        for stage_name in ("b", "a"):
            ops.record_rollback(shape, OWNER, "i1", stage_name, error=None, traceback=None)
        assert ops.finish_rollback(shape, OWNER, "i1") == "rolled_back"
        store.retry(shape, "i1", None, "test")
        assert store.settled_item_counts(shape) == store.item_state_counts(shape)

    def test_threads_sharing_one_store_claim_each_stage_once(
            self, store: StateStore, shape: Pipeline, store_url: str,
            request: pytest.FixtureRequest) -> None:
        if store_url.startswith("postgresql"):
            request.applymarker(pytest.mark.xfail(
                strict=True, raises=KeyError,
                reason="bug (issue 12 #7): the item cache is shared by the threads using one "
                       "store; on PostgreSQL one thread's clear() lands between another's update "
                       "and lookup"))
        super().test_threads_sharing_one_store_claim_each_stage_once(store, shape)
