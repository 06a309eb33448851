"""Fan-out plans in the conformance suite: which claim resumes a fan-out from its plan.

Part of :class:`treadle.testing.StoreConformance` (it inherits these tests), so
the memory, SQLite and PostgreSQL stores all pass them. A fan-out start
records its plan; a claim carries it (``Claim.plan``) only when the claim
before it was cut short mid fan-out (recovered or released), never after the
stage settled, was retried or rerun (docs/fanout.md, "Crashes").
"""

from __future__ import annotations

from ._conformance_counts import noop_stage
from ._pytest_compat import pytest
from .pipeline import Pipeline
from .store.base import StateStore, Transition
from .store.fanout import FanOutStart, SubResult

_OWNER = "test-host:1:owner"
_DEAD = "dead-owner"  # never registered: recovery takes its claims back
PLAN = '{"v":1,"subtasks":[{"name":"x","fn":"m:f","args":[1],"kwargs":{}}]}'


def _plan_pipeline() -> Pipeline:
    """``prep`` then ``fan`` (the stage that fans out) then ``join``."""
    return Pipeline("fanplan", [noop_stage("prep"), noop_stage("fan", "prep"),
                                noop_stage("join", "fan")])


class FanPlanConformance:
    """Fan-out plans every StateStore keeps the same way (needs a ``store`` fixture)."""

    @pytest.fixture
    def fan_store(self, store: StateStore) -> tuple[StateStore, Pipeline]:
        """``i1`` and ``i2`` with ``prep`` completed: ``fan`` is ready."""
        shape = _plan_pipeline()
        store.prepare(shape)
        store.register_runner(_OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}'), ("i2", '{"id":"i2"}')], "test")
        store.commit(shape, _OWNER, [], 10)
        store.commit(shape, _OWNER, [Transition(i, "prep", 1, "completed", output="1")
                                     for i in ("i1", "i2")], 0)
        return store, shape

    @staticmethod
    def _claim(store: StateStore, shape: Pipeline, owner: str, item: str = "i1"
               ) -> tuple[int, str | None]:
        [claim] = store.commit(shape, owner, [], 1, only=[item]).claims
        assert claim.stage == "fan"
        return claim.attempt, claim.plan

    @staticmethod
    def _start(store: StateStore, shape: Pipeline, owner: str, attempt: int,
               plan: str | None = PLAN, item: str = "i1") -> None:
        [started] = store.commit(shape, owner, [], 0, fanouts=[
            FanOutStart(item, "fan", attempt, ("x", "y"), plan)]).fanouts
        assert not started.refused

    @staticmethod
    def _recover(store: StateStore, shape: Pipeline) -> list[tuple[str, str, int]]:
        return store.recover(shape, "test-host", lambda pid: True)

    def test_a_claim_after_a_crash_mid_fanout_carries_its_plan(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """The fan-out's plan comes with the next claim of its stage once its runner's
        claim is recovered; a first claim and the other items' claims carry none."""
        store, shape = fan_store
        assert self._claim(store, shape, _DEAD) == (1, None)
        self._start(store, shape, _DEAD, 1)
        store.commit(shape, _DEAD, [], 0,
                     subtasks=[SubResult("i1", "fan", "x", 1, "completed", output='"X"')])
        assert self._recover(store, shape) == [("i1", "fan", 1)]
        assert self._claim(store, shape, _OWNER) == (2, PLAN)
        assert self._claim(store, shape, _OWNER, "i2") == (1, None)

    def test_a_plan_resumes_through_a_chain_of_crashes(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """A claim that was to resume a fan-out and was itself recovered before it started
        it again hands the plan on; a claim given back unstarted keeps it too."""
        store, shape = fan_store
        self._claim(store, shape, _DEAD)
        self._start(store, shape, _DEAD, 1)
        self._recover(store, shape)
        assert self._claim(store, shape, _DEAD) == (2, PLAN)  # dies before the rebuild commits
        assert self._recover(store, shape) == [("i1", "fan", 2)]
        assert self._claim(store, shape, _OWNER) == (3, PLAN)
        store.release(shape, _OWNER, [], [("i1", "fan", 3)])  # given back before it started
        assert self._claim(store, shape, _OWNER) == (3, PLAN)

    def test_a_fanout_released_at_shutdown_resumes_from_its_plan(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """A fan-out stage released unfinished at shutdown resumes from its plan; the plan
        stored last (the rebuilt fan-out's) is the one handed on."""
        store, shape = fan_store
        self._claim(store, shape, _OWNER)
        self._start(store, shape, _OWNER, 1)
        store.release(shape, _OWNER, [("i1", "fan", 1)])
        assert self._claim(store, shape, _OWNER) == (2, PLAN)
        newer = PLAN.replace('"args":[1]', '"args":[2]')
        self._start(store, shape, _OWNER, 2, newer)
        store.release(shape, _OWNER, [("i1", "fan", 2)])
        assert self._claim(store, shape, _OWNER) == (3, newer)

    def test_no_plan_once_the_stage_settled_retried_or_rerun(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """A retried failed fan-out and a rerun fan-out call the stage function again (no
        plan), even where the stage was last claimed from its plan."""
        store, shape = fan_store
        self._claim(store, shape, _DEAD)
        self._start(store, shape, _DEAD, 1)
        self._recover(store, shape)
        assert self._claim(store, shape, _OWNER) == (2, PLAN)
        store.commit(shape, _OWNER, [Transition("i1", "fan", 2, "failed", error="E")], 0)
        assert store.retry(shape, "i1", "fan", "test") == [("i1", "fan")]
        assert self._claim(store, shape, _OWNER) == (3, None)
        self._start(store, shape, _OWNER, 3)
        store.commit(shape, _OWNER, [Transition("i1", "fan", 3, "completed", output="{}")], 0)
        assert store.rerun(shape, "i1", "fan", "test") == ["fan"]
        assert self._claim(store, shape, _OWNER) == (4, None)

    def test_a_rerun_forgets_a_plan_waiting_to_resume(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """A rerun from upstream of a fan-out waiting to resume makes its stage function
        run again on the new inputs: its plan is forgotten."""
        store, shape = fan_store
        self._claim(store, shape, _DEAD)
        self._start(store, shape, _DEAD, 1)
        self._recover(store, shape)
        store.rerun(shape, "i1", "prep", "test")
        [claim] = store.commit(shape, _OWNER, [], 1, only=["i1"]).claims
        store.commit(shape, _OWNER, [Transition("i1", "prep", claim.attempt, "completed",
                                                output="2")], 0)
        assert self._claim(store, shape, _OWNER) == (2, None)

    def test_a_fanout_without_a_plan_resumes_through_its_stage_function(
            self, fan_store: tuple[StateStore, Pipeline]) -> None:
        """A fan-out started without a plan (its subtasks cannot be rebuilt from data)
        replaces the plan of the one before: the claim after a crash carries none."""
        store, shape = fan_store
        self._claim(store, shape, _DEAD)
        self._start(store, shape, _DEAD, 1)
        self._recover(store, shape)
        assert self._claim(store, shape, _DEAD) == (2, PLAN)
        self._start(store, shape, _DEAD, 2, None)
        self._recover(store, shape)
        assert self._claim(store, shape, _OWNER) == (3, None)


__all__ = ["FanPlanConformance"]
