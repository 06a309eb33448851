"""Conformance tests for ``counts()`` (mixed into
:class:`treadle._conformance.StoreConformance`, so every store runs them).

``counts()`` must equal a count of the stage rows after every operation, with
the pending stages of a cancelled item counted as ``cancelled``; a store may
keep counters (the SQL stores do, ``store/counts.py``) as long as they stay
exact, also across transactions that fail half-way and pipeline shape changes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ._pytest_compat import pytest
from .pipeline import Pipeline
from .stage import stage
from .store.base import StateStore, Transition
from .store.fanout import FanOutStart, SubResult

OWNER = "test-host:1:owner"
DEAD = "dead-owner"


def exact_counts(store: StateStore, shape: Pipeline) -> dict[str, dict[str, int]]:
    """What ``counts()`` must return, counted from every item's stage rows."""
    states = store.stored_item_states(shape, None)
    out: dict[str, Counter[str]] = {s: Counter() for s in shape.order}
    for item_id, item_state in states.items():
        for rec in store.stage_records(shape, item_id):
            cancelled = rec.state == "pending" and item_state == "cancelled"
            out[rec.stage]["cancelled" if cancelled else rec.state] += 1
    return {s: dict(c) for s, c in out.items()}


def _done(item: str, stage_name: str, attempt: int = 1, state: str = "completed",
          **kw: Any) -> Transition:
    return Transition(item, stage_name, attempt, state, **kw)


class CountsConformance:
    """counts() stays a count of the stage rows whatever moves them."""

    @staticmethod
    def check(store: StateStore, shape: Pipeline) -> dict[str, dict[str, int]]:
        got = store.counts(shape)
        assert got == exact_counts(store, shape)
        return got

    def test_counts_follow_results_reviews_retries_and_reruns(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        store.submit(shape, [("i3", '{"id":"i3"}'), ("i4", '{"id":"i4"}')], "test")
        assert self.check(store, shape)["a"] == {"pending": 4}
        store.commit(shape, OWNER, [], 10)  # claims: a of every item
        assert self.check(store, shape)["a"] == {"running": 4}
        store.commit(shape, OWNER, [
            _done("i1", "a", output="1"), _done("i2", "a", state="failed", error="x"),
            _done("i3", "a", state="awaiting_review", review='{"data":1}'),
            _done("i4", "a", state="skipped")], 10)
        self.check(store, shape)
        store.decide(shape, "i3", "a", approve=True, output="2", review={"decision": "approved"},
                     actor="r", details={})
        self.check(store, shape)
        store.retry(shape, "i2", None, "test")
        assert self.check(store, shape)["a"].get("failed") is None
        store.commit(shape, OWNER, [], 10)
        store.release(shape, OWNER, [(c[0], c[1], c[2]) for c in
                                     (("i1", "b", 1), ("i1", "c", 1))], [("i2", "a", 2)])
        self.check(store, shape)
        store.rerun(shape, "i1", "a", "test")
        self.check(store, shape)
        store.reset_stale(shape, [("i3", "a", {"reason": "stale"})], "test")
        self.check(store, shape)

    def test_counts_follow_bulk_decisions_and_bulk_retries(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        store.commit(shape, OWNER, [], 10)
        store.commit(shape, OWNER, [
            _done("i1", "a", state="awaiting_review", review='{"data":1}'),
            _done("i2", "a", state="awaiting_review", review='{"data":2}')], 0)
        _, skipped = store.decide_many(shape, [("i1", "a", None), ("i2", "a", None)],
                                       approve=False, review={"decision": "rejected"},
                                       actor="r", details={})
        assert not skipped
        assert self.check(store, shape)["a"] == {"rejected": 2}
        assert len(store.retry_rows(shape, [("i1", "a"), ("i2", "a")], "test")) == 2
        assert self.check(store, shape)["a"] == {"pending": 2}

    def test_counts_follow_recovery_of_a_dead_runners_claims_and_fan_outs(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        [claim] = store.commit(shape, DEAD, [], 1, only=["i1"]).claims
        start = FanOutStart("i1", "a", claim.attempt, ("p", "q"))
        [plan] = store.commit(shape, DEAD, [], 0, fanouts=[start]).fanouts
        store.commit(shape, DEAD, [], 0, subtasks=[
            SubResult("i1", "a", "p", plan.run[0][1], "completed", output='"p"')])
        assert self.check(store, shape)["a"] == {"running": 1, "pending": 1}
        store.recover(shape, "test-host", lambda pid: False)
        assert self.check(store, shape)["a"] == {"pending": 2}

    def test_a_cancelled_items_unfinished_stages_count_as_cancelled(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        store.submit(shape, [("i3", '{"id":"i3"}')], "test")
        store.commit(shape, OWNER, [], 10)
        store.commit(shape, OWNER, [_done("i1", "a", output="1"),
                                    _done("i2", "a", state="awaiting_review", review="{}")], 0)
        store.cancel(shape, ["i1", "i2", "i3"][1:], "", "ana")  # i2 awaits review, i3 runs
        got = self.check(store, shape)
        assert got["a"] == {"completed": 1, "cancelled": 2}
        assert got["d"] == {"pending": 1, "cancelled": 2}
        assert store.items_in_item_state(shape, "cancelled", None) == ["i2", "i3"]
        assert store.items_in_item_state(shape, "cancelled", 1, offset=1) == ["i3"]
        assert store.items_in_item_state(shape, "cancelled", 5, offset=2) == []

    def test_a_failed_transaction_changes_no_count(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        store = ready_store
        before = self.check(store, shape)
        transaction = getattr(store, "transaction", None)
        if transaction is None:
            pytest.skip("the store has no transaction() to fail half-way")
        with pytest.raises(RuntimeError), transaction() as tx:
            assert tx.claim(shape.name, OWNER, ["a"], 10)
            raise RuntimeError("half-way")
        assert self.check(store, shape) == before

    def test_status_rows_of_many_items_match_the_per_item_reads(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """status_rows (a page of items read together) returns what the reads of each
        item return; unknown ids are left out."""
        store = ready_store
        [claim, _] = store.commit(shape, OWNER, [], 2).claims
        store.commit(shape, OWNER, [], 0, fanouts=[FanOutStart(claim.item_id, "a", 1, ("p",))])
        store.cancel(shape, ["i2"], "", "ana")
        got = store.status_rows(shape, ["i2", "nope", "i1"])
        assert sorted(got) == ["i1", "i2"]
        for item_id, rows in got.items():
            assert rows.stages == store.stage_records(shape, item_id)
            assert rows.subtasks == store.subtask_records(shape, item_id)
            assert rows.submitted_at == store.item_data(shape, item_id)[1]
            assert rows.stored_state == store.stored_item_states(shape, [item_id])[item_id]
            assert rows.version == store.item_version(shape, item_id)
        assert got["i2"].stored_state == "cancelled" and got["i1"].subtasks

    def test_counts_after_the_pipeline_gains_and_renames_stages(self, store: StateStore) -> None:
        old = Pipeline("shapes", [noop_stage("a"), noop_stage("b", "a")])
        store.prepare(old)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(old, [(f"i{n}", f'{{"id":"i{n}"}}') for n in range(3)], "test")
        store.commit(old, OWNER, [], 1)
        store.commit(old, OWNER, [_done("i0", "a", output="1")], 0)
        self.check(store, old)
        new = Pipeline("shapes", [noop_stage("a"), noop_stage("b2", "a"), noop_stage("c", "b2")],
                       renames={"b": "b2"})
        store.prepare(new)
        got = self.check(store, new)
        assert got["c"] == {"pending": 3}
        assert got["b2"] == {"pending": 3}


def noop_stage(name: str, *after: str) -> Any:
    """A stage doing nothing, named ``name``, after the stages ``after`` (the mixins'
    fixture pipelines are built of these)."""
    def run(item: Any) -> None: ...

    run.__name__ = run.__qualname__ = name
    return stage(after=list(after))(run)


__all__ = ["CountsConformance", "exact_counts", "noop_stage"]
