"""Chained claims in the conformance suite: a successor claimed in its predecessor's commit.

Part of :class:`treadle.testing.StoreConformance` (it inherits these tests),
so the memory, SQLite and PostgreSQL stores all pass them (docs/engine.md,
"Chained claims").
"""

from __future__ import annotations

from ._conformance_counts import noop_stage
from .pipeline import Pipeline
from .store.base import StateStore, Transition

_OWNER = "test-host:1:owner"


def _chain_pipeline() -> Pipeline:
    """``a`` then ``b`` and ``c`` (each after ``a`` only), then ``d`` after both."""
    return Pipeline("chain", [noop_stage("a"), noop_stage("b", "a"), noop_stage("c", "a"),
                              noop_stage("d", "b", "c")])


class ChainConformance:
    """Chained claims every StateStore makes the same way (needs a ``store`` fixture)."""

    @staticmethod
    def _started(store: StateStore, n: int = 2) -> Pipeline:
        """Items i0..i{n-1} submitted and i0's ``a`` claimed (attempt 1)."""
        shape = _chain_pipeline()
        store.prepare(shape)
        store.register_runner(_OWNER, "test-host", 1, 30.0)
        store.submit(shape, [(f"i{k}", f'{{"id":"i{k}"}}') for k in range(n)], "test")
        [claim] = store.commit(shape, _OWNER, [], 1).claims
        assert (claim.item_id, claim.stage) == ("i0", "a")
        return shape

    @staticmethod
    def _states(store: StateStore, shape: Pipeline, item_id: str) -> dict[str, tuple[str, bool]]:
        return {r.stage: (r.state, r.ready) for r in store.stage_records(shape, item_id)}

    def test_a_completed_stage_claims_its_successors_in_the_same_commit(
            self, store: StateStore) -> None:
        """The successors of a completed stage are claimed ahead of older ready work of the
        same priority, with the inputs the runner passed (no read), and started in history."""
        shape = self._started(store)
        done = Transition("i0", "a", 1, "completed", output='{"x":1}')
        res = store.commit(shape, _OWNER, [done], 2,
                           inputs={("i0", "a"): {"before": '"given"'}})
        assert sorted((c.item_id, c.stage, c.attempt) for c in res.claims) == [
            ("i0", "b", 1), ("i0", "c", 1)]  # not i1's a, older but not a successor
        assert all(dict(c.outputs) == {"before": '"given"', "a": '{"x":1}'} for c in res.claims)
        assert self._states(store, shape, "i0")["b"][0] == "running"
        assert self._states(store, shape, "i1")["a"] == ("pending", True)
        history = store.history(shape, "i0")
        started = [h for h in history if h["state"] == "running" and h["stage"] in ("b", "c")]
        completed = [h for h in history if h["state"] == "completed" and h["stage"] == "a"]
        assert len(started) == 2 and all(h["at"] == completed[0]["at"] for h in started)

    def test_without_inputs_a_chained_claim_reads_the_outputs(self, store: StateStore) -> None:
        """A runner that passes no inputs gets the stored outputs, as from a scan."""
        shape = self._started(store)
        res = store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="7")], 2)
        assert sorted(c.stage for c in res.claims) == ["b", "c"]
        assert all(dict(c.outputs) == {"a": "7"} for c in res.claims)

    def test_chaining_respects_the_claim_limit_and_the_stages_allowed(
            self, store: StateStore) -> None:
        """Successors past the limit, or of a stage not claimable now, are left ready."""
        shape = self._started(store)
        res = store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="1")], 1,
                           stages=["a", "c", "d"])  # b: paused, say
        assert [(c.item_id, c.stage) for c in res.claims] == [("i0", "c")]
        assert self._states(store, shape, "i0")["b"] == ("pending", True)
        later = store.commit(shape, _OWNER, [], 5)
        assert ("i0", "b") in {(c.item_id, c.stage) for c in later.claims}

    def test_higher_priority_ready_work_is_claimed_before_a_successor(
            self, store: StateStore) -> None:
        """Chaining never claims a successor ahead of ready work of a higher priority."""
        shape = self._started(store)
        store.prioritize(shape, ["i1"], 5, "test")
        res = store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="1")], 1)
        assert [(c.item_id, c.stage) for c in res.claims] == [("i1", "a")]
        assert self._states(store, shape, "i0")["b"] == ("pending", True)
        assert self._states(store, shape, "i0")["c"] == ("pending", True)

    def test_a_join_is_not_chained_and_waits_for_both(self, store: StateStore) -> None:
        """A stage with two dependencies is claimed by the ordinary path once both are done."""
        shape = self._started(store, n=1)
        res = store.commit(shape, _OWNER, [Transition("i0", "a", 1, "completed", output="1")], 2)
        assert sorted(c.stage for c in res.claims) == ["b", "c"]
        res = store.commit(shape, _OWNER, [Transition("i0", "b", 1, "completed", output="2"),
                                           Transition("i0", "c", 1, "completed", output="3")], 2,
                           inputs={("i0", "b"): {"a": "1"}, ("i0", "c"): {"a": "1"}})
        assert [(c.stage, dict(c.outputs)) for c in res.claims] == [
            ("d", {"a": "1", "b": "2", "c": "3"})]


__all__ = ["ChainConformance"]
