"""Conformance tests for nested pipelines (mixed into
:class:`treadle._conformance.StoreConformance`, so every store runs them): a
``waiting`` transition with children, settlement of the parent, retry and cancel."""

from __future__ import annotations

from typing import Any

from ._pytest_compat import pytest
from .outcomes import Spawn
from .pipeline import Pipeline
from .stage import stage
from .store.base import StateStore, Transition

OWNER = "test-host:1:owner"


def _family() -> tuple[Pipeline, Pipeline]:
    @stage()
    def work(item: Any) -> None: ...

    kid = Pipeline("conformance_kid", [work])

    @stage(spawns=kid)
    def split(item: Any) -> Spawn:
        return Spawn(kid, [])

    @stage(after=[split])
    def export(item: Any) -> None: ...

    return Pipeline("conformance_parent", [split, export]), kid


def _spawn(item_id: str, n: int, attempt: int = 1) -> Transition:
    children = tuple(("conformance_kid", f"{item_id}/{k}", f'{{"id":"{k}"}}') for k in range(n))
    return Transition(item_id, "split", attempt, "waiting", children=children)


def _state(store: StateStore, shape: Pipeline, item_id: str, stage_name: str) -> str:
    return {r.stage: r.state for r in store.stage_records(shape, item_id)}[stage_name]


class NestedConformance:
    """Spawned children and their parent, the same on every store."""

    @pytest.fixture
    def family(self, store: StateStore) -> tuple[StateStore, Pipeline, Pipeline]:
        parent, kid = _family()
        store.prepare(parent)
        store.prepare(kid)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(parent, [("p1", '{"id":"p1"}')], "test")
        return store, parent, kid

    @staticmethod
    def _finish_children(store: StateStore, kid: Pipeline, outcomes: dict[str, str]) -> None:
        claims = store.commit(kid, OWNER, [], 100).claims
        store.commit(kid, OWNER, [
            Transition(c.item_id, c.stage, c.attempt, outcomes.get(c.item_id, "completed"),
                       output=f'"{c.item_id}"' if outcomes.get(c.item_id, "completed")
                       == "completed" else None,
                       error="boom" if outcomes.get(c.item_id) == "failed" else None)
            for c in claims], 0)

    def test_a_spawn_submits_its_children_with_the_waiting_parent(
            self, family: tuple[StateStore, Pipeline, Pipeline]) -> None:
        store, parent, kid = family
        (claim,) = store.commit(parent, OWNER, [], 1).claims
        res = store.commit(parent, OWNER, [_spawn("p1", 3)], 0)
        assert [t.stage for t in res.accepted] == ["split"]
        assert _state(store, parent, "p1", "split") == "waiting"
        assert store.children(parent, "p1") == [
            ("split", "conformance_kid", f"p1/{k}", "pending") for k in range(3)]
        assert store.parents("conformance_kid", ["p1/0"]) == [
            ("p1/0", "conformance_parent", "p1", "split")]
        assert store.history(kid, "p1/0")[0]["state"] == "submitted"
        # the same spawn again is refused (the claim is gone): nothing doubles
        again = store.commit(parent, OWNER, [_spawn("p1", 3, claim.attempt)], 0)
        assert again.refused and len(store.children(parent, "p1")) == 3
        assert sorted(store.item_ids(kid, None, None, None)) == ["p1/0", "p1/1", "p1/2"]

    def test_the_last_child_settles_the_parent_and_readies_its_dependents(
            self, family: tuple[StateStore, Pipeline, Pipeline]) -> None:
        store, parent, kid = family
        store.commit(parent, OWNER, [], 1)
        store.commit(parent, OWNER, [_spawn("p1", 2)], 0)
        self._finish_children(store, kid, {})
        rec = {r.stage: r for r in store.stage_records(parent, "p1")}
        assert rec["split"].state == "completed"
        assert rec["split"].output is not None
        assert '"p1/0":{"work":"p1/0"}' in rec["split"].output
        assert (rec["export"].state, rec["export"].ready) == ("pending", True)
        assert store.settle_waiting(parent) == 0

    def test_a_failed_child_fails_the_parent_and_retry_retries_only_it(
            self, family: tuple[StateStore, Pipeline, Pipeline]) -> None:
        store, parent, kid = family
        store.commit(parent, OWNER, [], 1)
        store.commit(parent, OWNER, [_spawn("p1", 3)], 0)
        self._finish_children(store, kid, {"p1/1": "failed"})
        rec = {r.stage: r for r in store.stage_records(parent, "p1")}
        assert rec["split"].state == "failed"
        assert "p1/1 failed at work: boom" in (rec["split"].error or "")
        assert store.retry(parent, "p1", None, "test") == [("p1", "split")]
        assert _state(store, parent, "p1", "split") == "waiting"
        assert {c[2]: c[3] for c in store.children(parent, "p1")}["p1/1"] == "pending"
        claims = store.commit(kid, OWNER, [], 100).claims
        assert [c.item_id for c in claims] == ["p1/1"]
        store.commit(kid, OWNER, [Transition("p1/1", "work", 2, "completed", output="1")], 0)
        assert _state(store, parent, "p1", "split") == "completed"

    def test_cancel_of_the_parent_cancels_its_unfinished_children(
            self, family: tuple[StateStore, Pipeline, Pipeline]) -> None:
        store, parent, kid = family
        store.commit(parent, OWNER, [], 1)
        store.commit(parent, OWNER, [_spawn("p1", 2)], 0)
        claims = store.commit(kid, OWNER, [], 1).claims
        store.commit(kid, OWNER, [Transition(claims[0].item_id, "work", 1, "completed",
                                             output="1")], 0)
        store.cancel(parent, ["p1"], "stop", "test")
        states = {c[2]: c[3] for c in store.children(parent, "p1")}
        assert states == {claims[0].item_id: "completed",
                          ({"p1/0", "p1/1"} - {claims[0].item_id}).pop(): "cancelled"}
