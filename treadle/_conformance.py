"""The conformance suite every ``StateStore`` passes (exported by ``treadle.testing``).

Each test drives a store only through its protocol, the way a runner does:
group commits (:class:`~treadle.store.base.Transition`, fan-out starts and
subtask results), human decisions, retries and reruns, rollbacks, releases
and recovery. Subclass :class:`StoreConformance` with a ``store`` fixture
yielding a fresh, empty store to check a store of your own.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

from ._conformance_flow import FlowConformance
from ._pytest_compat import pytest
from .errors import InvalidDecisionError, InvalidTransitionError, ItemNotFoundError
from .pipeline import Pipeline
from .stage import stage
from .store.base import CommitResult, Outlook, Shape, StateStore, Transition
from .store.fanout import FanOutStart, SubResult


class RollbackStore(Protocol):
    """The rollback operations of a store (the runner's compensation steps)."""

    def claim_rollbacks(self, shape: Shape, owner: str, limit: int) -> list[tuple[str, list[str]]]: ...
    def record_rollback(self, shape: Shape, owner: str, item_id: str, stage: str, *,
                        error: str | None, traceback: str | None) -> bool: ...
    def finish_rollback(self, shape: Shape, owner: str, item_id: str) -> str | None: ...


def _undo(item: Any) -> None:
    """A rollback callable (never called here: the suite only records outcomes)."""


def _conformance_pipeline(on_failure: Literal["stop", "rollback"] = "stop") -> Pipeline:
    @stage(rollback=_undo)
    def a(item: Any) -> None: ...

    @stage(after=[a], rollback=_undo)
    def b(item: Any) -> None: ...

    @stage(after=[a])
    def c(item: Any) -> None: ...

    @stage(after=[b, c])
    def d(item: Any) -> None: ...

    return Pipeline("conformance", [a, b, c, d], on_failure=on_failure)


from ._conformance_chain import ChainConformance  # noqa: E402 - after the helpers it imports
from ._conformance_counts import CountsConformance  # noqa: E402 - after the helpers it imports
from ._conformance_fanplan import FanPlanConformance  # noqa: E402 - after the helpers it imports
from ._conformance_items import ItemConformance  # noqa: E402 - after the helpers it imports
from ._conformance_nested import NestedConformance  # noqa: E402 - after the helpers it imports
from ._conformance_steer import SteerConformance  # noqa: E402 - after the helpers it imports

OWNER = "test-host:1:owner"
OTHER = "test-host:2:other"
DEAD = "dead-owner"  # never registered: recovery treats its claims as a dead runner's


class StoreConformance(SteerConformance, NestedConformance, FlowConformance, ChainConformance,
                       ItemConformance, FanPlanConformance, CountsConformance):
    """The behaviour every StateStore must have. Subclass with a ``store`` fixture."""

    # -- fixtures and helpers --------------------------------------------------
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
    def states(store: StateStore, shape: Shape, item_id: str) -> dict[str, str]:
        return {r.stage: r.state for r in store.stage_records(shape, item_id)}

    @staticmethod
    def done(item: str, stage_name: str, attempt: int = 1, state: str = "completed",
             **kw: Any) -> Transition:
        return Transition(item, stage_name, attempt, state, **kw)

    @staticmethod
    def subtasks(store: StateStore, shape: Shape, item_id: str) -> dict[str, tuple[str, int]]:
        """name -> (state, attempt) of an item's subtasks."""
        return {r.name: (r.state, r.attempt) for r in store.subtask_records(shape, item_id)}

    def snapshot(self, store: StateStore, shape: Shape, item_id: str) -> Any:
        """Everything a reader can see of one item (to show an operation changed nothing)."""
        return (
            [(r.stage, r.state, r.ready, r.attempt, r.output, r.error, r.review)
             for r in store.stage_records(shape, item_id)],
            store.subtask_records(shape, item_id),
            store.history(shape, item_id),
        )

    def to_review(self, store: StateStore, shape: Shape, data: Any = None,
                  **kw: Any) -> CommitResult:
        """Claim i1's stage ``a`` and leave it awaiting review of ``data``."""
        store.commit(shape, OWNER, [], 1, only=["i1"])
        review = json.dumps({"data": {"t": 1} if data is None else data, "message": "check"})
        return store.commit(shape, OWNER, [self.done("i1", "a", state="awaiting_review",
                                                     review=review, **kw)], 0)

    @staticmethod
    def decision(store: StateStore, shape: Shape, item_id: str = "i1", stage_name: str = "a", *,
                 approve: bool = True, output: str | None = None) -> CommitResult:
        verdict = "approved" if approve else "rejected"
        return store.decide(shape, item_id, stage_name, approve=approve, output=output,
                            review={"decision": verdict, "reviewer": "rita", "note": "n"},
                            actor="rita", details={"decision": verdict, "reviewer": "rita"})

    # -- submission and claims ------------------------------------------------
    def test_submit_creates_pending_rows_and_ignores_known_ids(self, ready_store: StateStore,
                                                               shape: Pipeline) -> None:
        """Submitting stores each item once, with a pending row per stage."""
        new = ready_store.submit(shape, [("i1", '{"id":"i1"}'), ("i3", '{"id":"i3"}')], "test")
        assert new == ["i3"]
        assert self.states(ready_store, shape, "i3") == dict.fromkeys("abcd", "pending")
        assert ready_store.item_data(shape, "i1")[0] == '{"id":"i1"}'
        assert ready_store.item_ids(shape, None, None, None) == ["i1", "i2", "i3"]

    def test_claim_takes_only_ready_stages_oldest_first(self, ready_store: StateStore,
                                                        shape: Pipeline) -> None:
        """Only root stages are ready at first; claims come oldest first with attempt 1."""
        res = ready_store.commit(shape, OWNER, [], 10)
        assert [(c.item_id, c.stage, c.attempt) for c in res.claims] == [("i1", "a", 1), ("i2", "a", 1)]
        assert res.claims[0].item == '{"id":"i1"}'
        assert self.states(ready_store, shape, "i1")["a"] == "running"
        assert ready_store.commit(shape, OWNER, [], 10).claims == []

    def test_claim_respects_limit_and_item_filter(self, ready_store: StateStore,
                                                  shape: Pipeline) -> None:
        """A claim takes at most ``limit`` rows, and only the items asked for."""
        res = ready_store.commit(shape, OWNER, [], 1, only=["i2"])
        assert [(c.item_id, c.stage) for c in res.claims] == [("i2", "a")]

    def test_completion_makes_dependents_ready_and_carries_outputs(self, ready_store: StateStore,
                                                                   shape: Pipeline) -> None:
        """A completed stage readies its dependents, whose claim carries its output."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", output='{"x":1}')], 10,
                                 only=["i1"])
        assert [t.stage for t in res.accepted] == ["a"]
        assert sorted(c.stage for c in res.claims) == ["b", "c"]
        assert all(c.outputs == {"a": '{"x":1}'} for c in res.claims)

    def test_join_waits_for_every_dependency(self, ready_store: StateStore, shape: Pipeline) -> None:
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

    # -- guarded results --------------------------------------------------------
    def test_completion_from_wrong_owner_or_attempt_is_refused(self, ready_store: StateStore,
                                                               shape: Pipeline) -> None:
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

    def test_refused_results_leave_no_trace(self, ready_store: StateStore, shape: Pipeline) -> None:
        """Refused stage and subtask results change no row and append no history."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [], 0, fanouts=[FanOutStart("i1", "a", 1, ("x",))])
        before = self.snapshot(ready_store, shape, "i1")
        res = ready_store.commit(
            shape, OTHER, [self.done("i1", "a", output="1"), self.done("i1", "a", state="failed",
                                                                       error="E")], 0,
            subtasks=[SubResult("i1", "a", "x", 1, "completed", output="1")])
        assert res.accepted == [] and len(res.refused) == 2
        assert res.sub_accepted == [] and len(res.sub_refused) == 1
        res = ready_store.commit(shape, OWNER, [], 0, subtasks=[
            SubResult("i1", "a", "x", 2, "completed", output="1"),    # wrong attempt
            SubResult("i1", "a", "nope", 1, "completed", output="1"),  # unknown subtask
        ])
        assert res.sub_accepted == [] and len(res.sub_refused) == 2
        assert self.snapshot(ready_store, shape, "i1") == before

    def test_failure_blocks_dependents_and_retry_resumes(self, ready_store: StateStore,
                                                         shape: Pipeline) -> None:
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

    def test_retry_of_unknown_item_raises(self, ready_store: StateStore, shape: Pipeline) -> None:
        """Retrying an item the store does not know raises ItemNotFoundError."""
        with pytest.raises(ItemNotFoundError):
            ready_store.retry(shape, "nope", None, "test")

    def test_propagating_skip_skips_downstream(self, ready_store: StateStore,
                                               shape: Pipeline) -> None:
        """Skipped(propagate=True) marks every downstream stage skipped."""
        ready_store.commit(shape, OWNER, [], 1)
        res = ready_store.commit(shape, OWNER, [self.done("i1", "a", state="skipped",
                                                          propagate=True)], 10, only=["i1"])
        assert sorted(res.skipped) == [("i1", "b"), ("i1", "c"), ("i1", "d")]
        assert res.claims == [] and res.finished == [("i1", "completed")]
        assert self.states(ready_store, shape, "i1") == dict.fromkeys("abcd", "skipped")

    # -- fan-out ------------------------------------------------------------------
    def test_fanout_start_claims_subtasks_whose_results_are_kept(self, ready_store: StateStore,
                                                                 shape: Pipeline) -> None:
        """Starting a fan-out claims each subtask (attempt 1); results are stored per subtask."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        res = ready_store.commit(shape, OWNER, [], 0,
                                 fanouts=[FanOutStart("i1", "a", 1, ("x", "y", "z"))])
        [plan] = res.fanouts
        assert not plan.refused and plan.run == [("x", 1), ("y", 1), ("z", 1)]
        assert plan.kept == {} and plan.dropped == []
        assert self.subtasks(ready_store, shape, "i1") == {
            "x": ("running", 1), "y": ("running", 1), "z": ("running", 1)}
        assert self.states(ready_store, shape, "i1")["a"] == "running"
        res = ready_store.commit(shape, OWNER, [], 0, subtasks=[
            SubResult("i1", "a", "x", 1, "completed", output='"X"'),
            SubResult("i1", "a", "y", 1, "failed", error="E: y", traceback="tb"),
        ])
        assert [r.name for r in res.sub_accepted] == ["x", "y"] and res.sub_refused == []
        recs = {r.name: r for r in ready_store.subtask_records(shape, "i1")}
        assert (recs["x"].state, recs["x"].output) == ("completed", '"X"')
        assert (recs["y"].state, recs["y"].error) == ("failed", "E: y")
        assert recs["z"].state == "running"
        sub_history = [(h["subtask"], h["state"], h["attempt"])
                       for h in ready_store.history(shape, "i1") if h["subtask"]]
        assert sub_history == [("x", "running", 1), ("y", "running", 1), ("z", "running", 1),
                               ("x", "completed", 1), ("y", "failed", 1)]

    def test_fanout_retry_reruns_only_failed_subtasks(self, ready_store: StateStore,
                                                      shape: Pipeline) -> None:
        """After a failed fan-out and a retry, completed subtasks keep their outputs and
        only the others run again, with their next attempt."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [], 0, fanouts=[FanOutStart("i1", "a", 1, ("x", "y"))])
        ready_store.commit(shape, OWNER, [self.done("i1", "a", state="failed", error="E: y")], 0,
                           subtasks=[SubResult("i1", "a", "x", 1, "completed", output='"X"'),
                                     SubResult("i1", "a", "y", 1, "failed", error="E: y")])
        assert self.states(ready_store, shape, "i1")["a"] == "failed"
        assert ready_store.retry(shape, "i1", None, "test") == [("i1", "a")]
        [claim] = ready_store.commit(shape, OWNER, [], 1, only=["i1"]).claims
        assert (claim.stage, claim.attempt) == ("a", 2)
        [plan] = ready_store.commit(shape, OWNER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 2, ("x", "y"))]).fanouts
        assert plan.run == [("y", 2)] and plan.kept == {"x": '"X"'} and plan.dropped == []
        assert self.subtasks(ready_store, shape, "i1") == {"x": ("completed", 1),
                                                          "y": ("running", 2)}
        res = ready_store.commit(
            shape, OWNER, [self.done("i1", "a", 2, output='{"x":"X","y":"Y"}')], 10, only=["i1"],
            subtasks=[SubResult("i1", "a", "y", 2, "completed", output='"Y"')])
        assert len(res.accepted) == 1 and len(res.sub_accepted) == 1
        assert self.subtasks(ready_store, shape, "i1") == {"x": ("completed", 1),
                                                          "y": ("completed", 2)}
        assert all(c.outputs == {"a": '{"x":"X","y":"Y"}'} for c in res.claims)
        ran_x = [h for h in ready_store.history(shape, "i1")
                 if h["subtask"] == "x" and h["state"] == "running"]
        assert len(ran_x) == 1  # x never ran again

    def test_fanout_drops_subtasks_no_longer_listed(self, ready_store: StateStore,
                                                    shape: Pipeline) -> None:
        """A rebuilt FanOut without a subtask records it as dropped and forgets its row."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [], 0, fanouts=[FanOutStart("i1", "a", 1, ("x", "y"))])
        ready_store.commit(shape, OWNER, [self.done("i1", "a", state="failed", error="E")], 0,
                           subtasks=[SubResult("i1", "a", "x", 1, "failed", error="E"),
                                     SubResult("i1", "a", "y", 1, "failed", error="E")])
        ready_store.retry(shape, "i1", None, "test")
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        [plan] = ready_store.commit(shape, OWNER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 2, ("x", "w"))]).fanouts
        assert plan.dropped == ["y"] and plan.run == [("x", 2), ("w", 1)]
        assert set(self.subtasks(ready_store, shape, "i1")) == {"x", "w"}
        assert ("y", "dropped") in [(h["subtask"], h["state"])
                                    for h in ready_store.history(shape, "i1")]

    def test_fanout_start_refused_without_the_stage_claim(self, ready_store: StateStore,
                                                          shape: Pipeline) -> None:
        """A fan-out start from a runner that no longer holds the stage claim (wrong owner,
        stale attempt, or a claim recovered after its lease lapsed) starts nothing."""
        ready_store.register_runner(OTHER, "elsewhere", 2, -1.0)  # lease already lapsed
        ready_store.commit(shape, OTHER, [], 1, only=["i1"])
        [plan] = ready_store.commit(shape, OWNER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 1, ("x",))]).fanouts
        assert plan.refused and plan.run == []
        assert ready_store.recover(shape, "test-host", lambda pid: True) == [("i1", "a", 1)]
        [plan] = ready_store.commit(shape, OTHER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 1, ("x",))]).fanouts
        assert plan.refused and self.subtasks(ready_store, shape, "i1") == {}
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])  # attempt 2
        [plan] = ready_store.commit(shape, OWNER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 1, ("x",))]).fanouts
        assert plan.refused  # stale attempt
        assert self.subtasks(ready_store, shape, "i1") == {}

    def test_subtask_results_refused_after_the_claim_is_lost(self, ready_store: StateStore,
                                                             shape: Pipeline) -> None:
        """When a fan-out's stage claim is recovered, its running subtasks go back to pending,
        late results of the old owner are refused, and the new claim re-runs them."""
        ready_store.register_runner(OTHER, "test-host", 2, 30.0)
        ready_store.commit(shape, OTHER, [], 1, only=["i1"])
        ready_store.commit(shape, OTHER, [], 0, fanouts=[FanOutStart("i1", "a", 1, ("x", "y"))])
        ready_store.commit(shape, OTHER, [], 0,
                           subtasks=[SubResult("i1", "a", "x", 1, "completed", output='"X"')])
        assert ready_store.recover(shape, "test-host", lambda pid: pid != 2) == [("i1", "a", 1)]
        assert self.subtasks(ready_store, shape, "i1") == {"x": ("completed", 1),
                                                          "y": ("pending", 1)}
        res = ready_store.commit(shape, OTHER, [self.done("i1", "a", output="{}")], 0,
                                 subtasks=[SubResult("i1", "a", "y", 1, "completed", output='"Y"')])
        assert res.accepted == [] and res.sub_accepted == [] and len(res.sub_refused) == 1
        [claim] = ready_store.commit(shape, OWNER, [], 1, only=["i1"]).claims
        assert claim.attempt == 2
        [plan] = ready_store.commit(shape, OWNER, [], 0,
                                    fanouts=[FanOutStart("i1", "a", 2, ("x", "y"))]).fanouts
        assert plan.run == [("y", 2)] and plan.kept == {"x": '"X"'}

    # -- review -----------------------------------------------------------------------
    def test_review_state_and_counts(self, ready_store: StateStore, shape: Pipeline) -> None:
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

    def test_approve_with_edit_is_the_output_dependents_see(self, ready_store: StateStore,
                                                            shape: Pipeline) -> None:
        """Approving with edited data completes the stage with that data as its output;
        the dependents' claims carry the edit, and the decision is recorded."""
        self.to_review(ready_store, shape)
        res = self.decision(ready_store, shape, output='{"t":2}')
        assert [(t.stage, t.state, t.output) for t in res.accepted] == [("a", "completed", '{"t":2}')]
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert rec["a"].state == "completed" and rec["a"].output == '{"t":2}'
        review = json.loads(rec["a"].review or "{}")
        assert review["data"] == {"t": 1} and review["decision"] == "approved"
        assert review["reviewer"] == "rita"
        claims = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert sorted(c.stage for c in claims) == ["b", "c"]
        assert all(c.outputs == {"a": '{"t":2}'} for c in claims)
        last = ready_store.history(shape, "i1")[-3]  # before the two claims
        assert (last["stage"], last["state"], last["attempt"], last["actor"]) == (
            "a", "completed", 1, "rita")
        assert json.loads(last["details"])["decision"] == "approved"

    def test_approve_without_edit_uses_the_review_data(self, ready_store: StateStore,
                                                       shape: Pipeline) -> None:
        """Approving as is makes the data under review the stage's output."""
        self.to_review(ready_store, shape, data={"t": [1, "x"]})
        self.decision(ready_store, shape)
        [claim, _] = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert json.loads(claim.outputs["a"] or "null") == {"t": [1, "x"]}

    def test_reject_stops_the_item(self, ready_store: StateStore, shape: Pipeline) -> None:
        """A rejected stage ends the item as rejected; nothing downstream becomes ready."""
        self.to_review(ready_store, shape)
        res = self.decision(ready_store, shape, approve=False)
        assert res.finished == [("i1", "rejected")]
        assert self.states(ready_store, shape, "i1") == {
            "a": "rejected", "b": "pending", "c": "pending", "d": "pending"}
        assert ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims == []
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert rec["a"].output is None
        assert json.loads(rec["a"].review or "{}")["decision"] == "rejected"
        assert ready_store.history(shape, "i1")[-1]["state"] == "rejected"

    def test_decision_not_awaiting_review_raises_and_changes_nothing(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """approve / reject / request_changes on a stage that is pending, running, completed
        or already decided raise InvalidTransitionError and leave the store as it was."""

        def refused(stage_name: str) -> None:
            before = self.snapshot(ready_store, shape, "i1")
            for approve in (True, False):
                with pytest.raises(InvalidTransitionError):
                    self.decision(ready_store, shape, stage_name=stage_name, approve=approve,
                                  output='{"t":9}' if approve else None)
            with pytest.raises(InvalidTransitionError):
                ready_store.request_changes(shape, "i1", stage_name, feedback="no",
                                            actor="rita", reviewer="rita")
            assert self.snapshot(ready_store, shape, "i1") == before

        refused("b")  # pending, not ready
        refused("a")  # pending, ready
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        refused("a")  # running
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        refused("a")  # completed
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [self.done("i1", "b", state="awaiting_review",
                                                    review='{"data":1}')], 0)
        self.decision(ready_store, shape, stage_name="b")
        refused("b")  # already approved
        with pytest.raises(ItemNotFoundError):
            self.decision(ready_store, shape, item_id="nope")

    def test_request_changes_sends_the_stage_back_with_feedback(self, ready_store: StateStore,
                                                                shape: Pipeline) -> None:
        """request_changes puts the stage back to pending and ready, records the feedback,
        and the next claim is the next attempt."""
        self.to_review(ready_store, shape)
        ready_store.request_changes(shape, "i1", "a", feedback={"fix": "title"}, actor="rita",
                                    reviewer="rita")
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        last = ready_store.history(shape, "i1")[-1]
        assert (last["stage"], last["state"], last["attempt"]) == ("a", "changes_requested", 1)
        assert json.loads(last["details"])["feedback"] == {"fix": "title"}
        [claim] = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert (claim.stage, claim.attempt) == ("a", 2)

    def test_rerun_resets_the_stage_and_downstream(self, ready_store: StateStore,
                                                   shape: Pipeline) -> None:
        """rerun sends a stage and its descendants back to pending (the stage ready,
        the others waiting), keeps the superseded outputs in the history, and is refused
        while one of them runs."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        ready_store.commit(shape, OWNER, [], 2, only=["i1"])
        ready_store.commit(shape, OWNER, [self.done("i1", "b", output="2"),
                                          self.done("i1", "c", output="3")], 0)
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        before = self.snapshot(ready_store, shape, "i1")
        with pytest.raises(InvalidTransitionError):
            ready_store.rerun(shape, "i1", "b", "test")  # d is running
        assert self.snapshot(ready_store, shape, "i1") == before
        ready_store.commit(shape, OWNER, [self.done("i1", "d", output="4")], 0)
        assert ready_store.rerun(shape, "i1", "b", "test") == ["b", "d"]
        assert self.states(ready_store, shape, "i1") == {
            "a": "completed", "b": "pending", "c": "completed", "d": "pending"}
        superseded = [json.loads(h["details"]).get("superseded_output")
                      for h in ready_store.history(shape, "i1")
                      if h["actor"] == "test" and h["state"] == "pending"]
        assert superseded == [2, 4]
        [claim] = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert (claim.stage, claim.attempt, claim.outputs["a"]) == ("b", 2, "1")
        with pytest.raises(ItemNotFoundError):
            ready_store.rerun(shape, "nope", "a", "test")

    # -- gates --------------------------------------------------------------------
    def test_gate_rejection_waits_its_delay_and_is_logged_as_given(self, ready_store: StateStore,
                                                                   shape: Pipeline) -> None:
        """A pending result with a delay (a gate's retry) is recorded under ``logged_as``,
        does not finish the item, and is claimed again (next attempt) only once due."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        details = '{"verdict":{"verdict":"rejected","message":"too short"},"retry_in":0.4}'
        t = self.done("i1", "a", state="pending", delay=0.4, logged_as="output_rejected",
                      details=details, verdict="rejected", error="too short")
        res = ready_store.commit(shape, OWNER, [t], 10, only=["i1"])
        assert res.accepted == [t] and res.claims == [] and res.finished == []
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        last = ready_store.history(shape, "i1")[-1]
        assert (last["state"], last["attempt"], last["details"]) == ("output_rejected", 1, details)
        assert ready_store.outlook(shape, ["i1"]).ready >= 1
        deadline = time.monotonic() + 5
        claims = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        while not claims and time.monotonic() < deadline:
            time.sleep(0.05)
            claims = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert [(c.stage, c.attempt) for c in claims] == [("a", 2)]

    def test_gate_escalation_awaits_review(self, ready_store: StateStore, shape: Pipeline) -> None:
        """An escalated gate result awaits review like any review; approving it completes."""
        review = json.dumps({"data": "v2", "message": "Escalated after 2 attempt(s): bad",
                             "escalated": True, "attempts": [{"attempt": 1, "output": "v1"}]})
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        res = ready_store.commit(shape, OWNER, [self.done(
            "i1", "a", state="awaiting_review", review=review, verdict="rejected",
            escalated=True, details='{"verdict":{"verdict":"rejected"}}')], 0)
        assert len(res.accepted) == 1 and res.finished == []  # waiting is not finished
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert rec["a"].state == "awaiting_review" and json.loads(rec["a"].review or "{}") == \
            json.loads(review)
        assert ready_store.item_ids(shape, "a", "awaiting_review", None) == ["i1"]
        self.decision(ready_store, shape)
        assert self.states(ready_store, shape, "i1")["a"] == "completed"
        assert json.loads(next(r.output for r in ready_store.stage_records(shape, "i1")
                               if r.stage == "a") or "null") == "v2"

    # -- rollback -------------------------------------------------------------------
    @staticmethod
    def rollbacks(store: StateStore) -> RollbackStore:
        return cast(RollbackStore, store)

    def failing_rollback_item(self, store: StateStore) -> Pipeline:
        """A rollback pipeline where i1 completed a then b, and c failed for good."""
        shape = _conformance_pipeline("rollback")
        store.prepare(shape)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}')], "test")
        store.commit(shape, OWNER, [], 1)
        store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        store.commit(shape, OWNER, [], 2)
        store.commit(shape, OWNER, [self.done("i1", "b", output="2")], 0)
        res = store.commit(shape, OWNER, [self.done("i1", "c", state="failed", error="E")], 0)
        assert res.finished == []  # not finished until rolled back
        return shape

    def test_rollback_runs_in_reverse_completion_order(self, store: StateStore) -> None:
        """A failed item is claimed once for rollback with its rollback stages in reverse
        completion order; each outcome is recorded; finishing settles the item."""
        shape = self.failing_rollback_item(store)
        ops = self.rollbacks(store)
        assert store.settled_item_counts(shape).get("rolling_back") == 1
        assert ops.claim_rollbacks(shape, OWNER, 10) == [("i1", ["b", "a"])]
        assert ops.claim_rollbacks(shape, OWNER, 10) == []  # claimed once
        assert ops.record_rollback(shape, OTHER, "i1", "b", error=None, traceback=None) is False
        assert ops.record_rollback(shape, OWNER, "i1", "b", error=None, traceback=None) is True
        assert ops.record_rollback(shape, OWNER, "i1", "a", error="undo failed",
                                   traceback="tb") is True
        rec = {r.stage: r for r in store.stage_records(shape, "i1")}
        assert rec["b"].state == "rolled_back"
        assert rec["a"].state == "completed" and "undo failed" in (rec["a"].error or "")
        assert rec["c"].state == "failed" and rec["c"].error == "E"  # the failure is kept
        assert ops.finish_rollback(shape, OTHER, "i1") is None
        assert ops.finish_rollback(shape, OWNER, "i1") == "rolled_back"
        tail = [(h["stage"], h["state"]) for h in store.history(shape, "i1")][-2:]
        assert tail == [("b", "rolled_back"), ("a", "rollback_failed")]
        assert ops.claim_rollbacks(shape, OWNER, 10) == []

    def test_rejection_in_a_rollback_pipeline_rolls_back(self, store: StateStore) -> None:
        """A rejection at review also sends the item to rollback."""
        shape = _conformance_pipeline("rollback")
        store.prepare(shape)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}')], "test")
        store.commit(shape, OWNER, [], 1)
        store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        store.commit(shape, OWNER, [], 2)
        store.commit(shape, OWNER, [self.done("i1", "b", state="awaiting_review",
                                              review='{"data":1}'),
                                    self.done("i1", "c", output="3")], 0)
        res = self.decision(store, shape, stage_name="b", approve=False)
        assert res.finished == []
        assert self.rollbacks(store).claim_rollbacks(shape, OWNER, 10) == [("i1", ["a"])]

    def test_dead_owners_rollback_claim_is_recovered(self, store: StateStore) -> None:
        """A rollback claimed by a runner that died goes back to waiting; the next runner
        resumes it without the rollbacks already recorded, and the dead one's late
        records are refused."""
        shape = self.failing_rollback_item(store)
        ops = self.rollbacks(store)
        store.register_runner(OTHER, "test-host", 2, 30.0)
        assert ops.claim_rollbacks(shape, OTHER, 10) == [("i1", ["b", "a"])]
        assert ops.record_rollback(shape, OTHER, "i1", "b", error=None, traceback=None)
        store.recover(shape, "test-host", lambda pid: True)
        assert ops.claim_rollbacks(shape, OWNER, 10) == []  # OTHER is alive
        store.recover(shape, "test-host", lambda pid: pid != 2)
        assert store.settled_item_counts(shape).get("rolling_back") == 1
        assert ops.record_rollback(shape, OTHER, "i1", "a", error=None, traceback=None) is False
        assert ops.claim_rollbacks(shape, OWNER, 10) == [("i1", ["a"])]
        assert ops.record_rollback(shape, OWNER, "i1", "a", error=None, traceback=None)
        assert ops.finish_rollback(shape, OWNER, "i1") == "rolled_back"
        assert self.states(store, shape, "i1") == {
            "a": "rolled_back", "b": "rolled_back", "c": "failed", "d": "pending"}

    # -- history ------------------------------------------------------------------
    def test_history_is_append_only_and_ordered(self, ready_store: StateStore,
                                                shape: Pipeline) -> None:
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

    def test_history_is_never_rewritten_by_any_operation(self, ready_store: StateStore,
                                                         shape: Pipeline) -> None:
        """Through claims, failures, retries, fan-outs, reviews, reruns, recovery and
        releases, each history read is a prefix of every later one, with unique,
        increasing sequence numbers."""
        s, seen = ready_store, [ready_store.history(shape, "i1")]
        steps: list[Callable[[], Any]] = [
            lambda: s.commit(shape, OWNER, [], 1, only=["i1"]),
            lambda: s.commit(shape, OWNER, [], 0, fanouts=[FanOutStart("i1", "a", 1, ("x",))]),
            lambda: s.commit(shape, OWNER, [self.done("i1", "a", state="failed", error="E")], 0,
                             subtasks=[SubResult("i1", "a", "x", 1, "failed", error="E")]),
            lambda: s.retry(shape, "i1", None, "test"),
            lambda: s.commit(shape, DEAD, [], 1, only=["i1"]),
            lambda: s.recover(shape, "test-host", lambda pid: True),
            lambda: s.commit(shape, OWNER, [], 1, only=["i1"]),
            lambda: s.commit(shape, OWNER, [self.done("i1", "a", 3, state="awaiting_review",
                                                      review='{"data":1}')], 0),
            lambda: s.request_changes(shape, "i1", "a", feedback="more", actor="r", reviewer="r"),
            lambda: s.commit(shape, OWNER, [], 1, only=["i1"]),
            lambda: s.commit(shape, OWNER, [self.done("i1", "a", 4, state="awaiting_review",
                                                      review='{"data":2}')], 0),
            lambda: self.decision(s, shape),
            lambda: s.commit(shape, OWNER, [], 2, only=["i1"]),
            lambda: s.release(shape, OWNER, [("i1", "b", 1)], unstarted=[("i1", "c", 1)]),
            lambda: s.rerun(shape, "i1", "a", "test"),
        ]
        for step in steps:
            step()
            seen.append(s.history(shape, "i1"))
        for earlier, later in itertools.pairwise(seen):
            assert later[: len(earlier)] == earlier
            assert len(later) > len(earlier)
        seqs = [h["seq"] for h in seen[-1]]
        assert seqs == sorted(set(seqs))

    # -- concurrency ----------------------------------------------------------------------
    def test_threads_sharing_one_store_claim_each_stage_once(self, store: StateStore,
                                                             shape: Pipeline) -> None:
        """Several threads doing group commits on one store object never fail, never
        claim an (item, stage) twice, and together complete every item."""
        n_items = 120
        errors: list[Exception] = []
        claimed: list[tuple[str, str]] = []
        lock = threading.Lock()
        store.prepare(shape)
        store.submit(shape, [(f"i{k}", f'{{"id":"i{k}"}}') for k in range(n_items)], "test")
        cache = getattr(store, "item_cache", None)
        if cache is not None:
            cache.limit = 1_000  # a few items: evict often, exercise the item cache too

        def work(w: int) -> None:
            owner = f"test-host:{100 + w}:worker"
            store.register_runner(owner, "test-host", 100 + w, 30.0)
            results: list[Transition] = []
            try:
                for _ in range(10 * n_items):
                    res = store.commit(shape, owner, results, 3)
                    with lock:
                        claimed.extend((c.item_id, c.stage) for c in res.claims)
                    results = [self.done(c.item_id, c.stage, c.attempt, output="1")
                               for c in res.claims]
                    if not results:
                        return
            except Exception as exc:  # noqa: BLE001 - re-raised below, in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        if errors:
            raise errors[0]
        assert not [t for t in threads if t.is_alive()]
        twice = [k for k, n in Counter(claimed).items() if n > 1]
        assert not twice, twice
        # a worker may stop while others still hold work: finish what is left
        leftover: list[Transition] = []
        while True:
            res = store.commit(shape, OWNER, leftover, 50)
            claimed.extend((c.item_id, c.stage) for c in res.claims)
            leftover = [self.done(c.item_id, c.stage, c.attempt, output="1") for c in res.claims]
            if not leftover:
                break
        assert store.item_state_counts(shape) == {"completed": n_items}
        assert sorted(Counter(claimed).values()) == [1] * (n_items * len(shape.order))

    # -- leases, release, recovery -----------------------------------------------------
    def test_recover_returns_claims_of_dead_or_lapsed_runners(self, ready_store: StateStore,
                                                              shape: Pipeline) -> None:
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

    def test_claims_of_an_unregistered_owner_are_recovered(self, ready_store: StateStore,
                                                           shape: Pipeline) -> None:
        """A claim committed under an owner that never registered (a crashed process)
        is recovered at once, and recovery is recorded in the history."""
        ready_store.commit(shape, DEAD, [], 2)
        assert sorted(ready_store.recover(shape, "test-host", lambda pid: True)) == [
            ("i1", "a", 1), ("i2", "a", 1)]
        last = ready_store.history(shape, "i1")[-1]
        assert (last["stage"], last["state"], last["actor"]) == ("a", "pending", "recovery")
        assert ready_store.recover(shape, "test-host", lambda pid: True) == []

    def test_outlook_counts_ready_and_running_work(self, ready_store: StateStore,
                                                   shape: Pipeline) -> None:
        """outlook() counts ready pending rows and running rows, optionally of some items."""
        assert ready_store.outlook(shape) == Outlook(ready=2, running=0)
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        assert ready_store.outlook(shape) == Outlook(ready=1, running=1)
        assert ready_store.outlook(shape, ["i1"]) == Outlook(ready=0, running=1)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        assert ready_store.outlook(shape, ["i1"]) == Outlook(ready=2, running=0)

    def asked(self, store: StateStore, shape: Shape, **record: Any) -> None:
        """Leave i1's stage ``a`` awaiting review of a record with options, form, assignees."""
        store.commit(shape, OWNER, [], 1, only=["i1"])
        review = json.dumps({"data": {"t": 1}, "message": "check", **record})
        store.commit(shape, OWNER, [self.done("i1", "a", state="awaiting_review",
                                              review=review)], 0)

    def test_decide_checks_the_choice_before_changing_anything(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """A choice not offered is refused naming the options, the store unchanged; an
        offered one is the output's ``choice`` and recorded in the history."""
        self.asked(ready_store, shape, options=["x", "y"], multiple=False, default=None)
        before = self.snapshot(ready_store, shape, "i1")
        for choice in ("z", None):
            with pytest.raises(InvalidDecisionError, match="'x', 'y'"):
                ready_store.decide(shape, "i1", "a", approve=True, output=None,
                                   review={"decision": "approved", "reviewer": "r",
                                           "choice": choice}, actor="r", details={})
        assert self.snapshot(ready_store, shape, "i1") == before
        ready_store.decide(shape, "i1", "a", approve=True, output=None,
                           review={"decision": "approved", "reviewer": "r", "choice": "y"},
                           actor="r", details={"decision": "approved"})
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert json.loads(rec["a"].output or "null") == {"choice": "y", "data": {"t": 1}}
        assert json.loads(rec["a"].review or "{}")["choice"] == "y"
        assert json.loads(ready_store.history(shape, "i1")[-1]["details"])["choice"] == "y"

    def test_decide_checks_a_form_answer_before_changing_anything(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """A form answer of the wrong type is refused naming the field; a right one is
        stored with the form's defaults."""
        fields = [{"name": "t", "type": "int", "nullable": False, "required": True,
                   "default": None},
                  {"name": "u", "type": "str", "nullable": False, "required": False,
                   "default": "-"}]
        self.asked(ready_store, shape, form={"type": None, "fields": fields})
        before = self.snapshot(ready_store, shape, "i1")
        with pytest.raises(InvalidDecisionError, match="'t' must be a int") as err:
            self.decision(ready_store, shape, output='{"t":"1"}')
        assert err.value.field == "t"
        assert self.snapshot(ready_store, shape, "i1") == before
        self.decision(ready_store, shape, output='{"t":2}')
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        assert json.loads(rec["a"].output or "null") == {"t": 2, "u": "-"}

    def test_decide_refuses_reviewers_not_assigned(self, ready_store: StateStore,
                                                   shape: Pipeline) -> None:
        """Only an assignee may decide; the error names them; a timeout may decide anyway."""
        self.asked(ready_store, shape, assignees=["ana"])
        before = self.snapshot(ready_store, shape, "i1")
        with pytest.raises(InvalidTransitionError, match="only be decided by ana"):
            self.decision(ready_store, shape)  # by rita
        with pytest.raises(InvalidTransitionError, match="only be decided by ana"):
            ready_store.request_changes(shape, "i1", "a", feedback="no", actor="rita",
                                        reviewer="rita")
        assert self.snapshot(ready_store, shape, "i1") == before
        ready_store.decide(shape, "i1", "a", approve=False, output=None,
                           review={"decision": "rejected", "reviewer": None}, actor="timeout",
                           details={})
        assert self.states(ready_store, shape, "i1")["a"] == "rejected"

    def test_escalate_review_reassigns_once_and_decides_nothing(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """escalate_review() sets the assignees, records it, stays awaiting; only once."""
        self.asked(ready_store, shape, assignees=["ana"])
        assert ready_store.escalate_review(shape, "i1", "a", ["boss"], "timeout") is True
        assert ready_store.escalate_review(shape, "i1", "a", ["cy"], "timeout") is False
        rec = {r.stage: r for r in ready_store.stage_records(shape, "i1")}
        review = json.loads(rec["a"].review or "{}")
        assert rec["a"].state == "awaiting_review"
        assert review["assignees"] == review["escalated_to"] == ["boss"]
        last = ready_store.history(shape, "i1")[-1]
        assert (last["state"], last["actor"]) == ("escalated", "timeout")
        assert json.loads(last["details"]) == {"assignees": ["boss"], "previous": ["ana"]}
        with pytest.raises(InvalidTransitionError):
            ready_store.escalate_review(shape, "i1", "b", ["boss"], "timeout")

    def test_record_notification_appends_a_history_row(self, ready_store: StateStore,
                                                       shape: Pipeline) -> None:
        """A notification record is a ``notified`` history row with its details."""
        self.asked(ready_store, shape)
        ready_store.record_notification(shape, "i1", "a", 1, {"request": "r1", "ok": True})
        last = ready_store.history(shape, "i1")[-1]
        assert (last["stage"], last["state"], last["attempt"], last["actor"]) == (
            "a", "notified", 1, "notify")
        assert json.loads(last["details"]) == {"request": "r1", "ok": True}

    def test_overdue_reviews_are_listed_oldest_first(self, ready_store: StateStore,
                                                     shape: Pipeline) -> None:
        """overdue_reviews() lists items awaiting review at a stage for at least the timeout."""
        ready_store.commit(shape, OWNER, [], 2)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", state="awaiting_review",
                                                    review='{"data":1}')], 0)
        time.sleep(0.02)
        ready_store.commit(shape, OWNER, [self.done("i2", "a", state="awaiting_review",
                                                    review='{"data":2}')], 0)
        assert ready_store.overdue_reviews(shape, "a", 0.0) == ["i1", "i2"]
        assert ready_store.overdue_reviews(shape, "a", 3600.0) == []
        assert ready_store.overdue_reviews(shape, "b", 0.0) == []
        self.decision(ready_store, shape)
        assert ready_store.overdue_reviews(shape, "a", 0.0) == ["i2"]

    def test_release_orphans_gives_back_claims_the_runner_does_not_know(
            self, ready_store: StateStore, shape: Pipeline) -> None:
        """Claims of this owner missing from ``keep`` (a commit whose reply was lost) go
        back to pending; kept ones and other owners' stay."""
        ready_store.register_runner(OTHER, "test-host", 2, 30.0)
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OTHER, [], 1, only=["i2"])
        assert ready_store.release_orphans(shape, OWNER, {("i1", "a", 1)}) == 0
        assert ready_store.release_orphans(shape, OWNER, set()) == 1
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        assert self.states(ready_store, shape, "i2")["a"] == "running"

    def test_declared_rename_carries_records_over(self, ready_store: StateStore,
                                                  shape: Pipeline) -> None:
        """A stage renamed with ``Pipeline(renames=...)`` keeps its state, output and
        history under the new name."""
        ready_store.commit(shape, OWNER, [], 1, only=["i1"])
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output='"A"')], 0)

        @stage(rollback=_undo)
        def first(item: Any) -> None: ...

        @stage(after=[first])
        def b(item: Any) -> None: ...

        @stage(after=[first])
        def c(item: Any) -> None: ...

        @stage(after=[b, c])
        def d(item: Any) -> None: ...

        renamed = Pipeline("conformance", [first, b, c, d], renames={"a": "first"})
        ready_store.prepare(renamed)
        rec = {r.stage: r for r in ready_store.stage_records(renamed, "i1")}
        assert (rec["first"].state, rec["first"].output) == ("completed", '"A"')
        assert "a" not in rec
        assert ("first", "renamed") in [(h["stage"], h["state"])
                                        for h in ready_store.history(renamed, "i1")]
        claims = ready_store.commit(renamed, OWNER, [], 10, only=["i1"]).claims
        assert sorted(c.stage for c in claims) == ["b", "c"]
        assert all(c.outputs["first"] == '"A"' for c in claims)

    def test_prepare_adds_rows_for_new_stages(self, ready_store: StateStore, shape: Pipeline) -> None:
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

    def test_release_gives_claims_back(self, ready_store: StateStore, shape: Pipeline) -> None:
        """Released claims are pending again and their late results are refused."""
        ready_store.commit(shape, OWNER, [], 2)
        ready_store.release(shape, OWNER, [("i1", "a", 1)])
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        assert len(ready_store.commit(shape, OWNER, [self.done("i1", "a")], 0).refused) == 1

    def test_release_of_unstarted_claims_keeps_the_attempt(self, ready_store: StateStore,
                                                           shape: Pipeline) -> None:
        """Claims given back as never started are claimed again with the same attempt;
        another owner's release leaves a claim alone."""
        ready_store.commit(shape, OWNER, [], 2)
        ready_store.release(shape, OTHER, [("i1", "a", 1)], unstarted=[("i2", "a", 1)])
        assert self.states(ready_store, shape, "i1")["a"] == "running"
        assert self.states(ready_store, shape, "i2")["a"] == "running"
        ready_store.release(shape, OWNER, [], unstarted=[("i1", "a", 1)])
        [claim] = ready_store.commit(shape, OWNER, [], 10).claims
        assert (claim.item_id, claim.attempt) == ("i1", 1)


    # -- definition changes (docs/changes.md) ------------------------------------
    def test_results_record_their_fingerprint_and_items_their_version(
            self, store: StateStore) -> None:
        """Each result records its stage's fingerprint and the pipeline version; each
        item the version it was submitted at; runner starts record the definitions."""
        shape = Pipeline("conformance", [s.fn for s in _conformance_pipeline().stages.values()],
                         version="7")
        store.prepare(shape)
        store.register_runner(OWNER, "test-host", 1, 30.0)
        store.submit(shape, [("i1", '{"id":"i1"}')], "test")
        store.commit(shape, OWNER, [], 1)
        store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        rec = {r.stage: r for r in store.stage_records(shape, "i1")}
        assert (rec["a"].fingerprint, rec["a"].version) == (shape.fingerprints["a"], "7")
        assert (rec["b"].fingerprint, rec["b"].version) == (None, None)  # no result yet
        assert store.item_version(shape, "i1") == "7"
        assert [(i, v, st) for i, v, _, st in store.item_versions(shape)] == [("i1", "7", "pending")]
        assert ("i1", "a", "completed", shape.fingerprints["a"]) in store.result_rows(shape)
        recorded = store.definitions(shape)
        assert json.loads(recorded[("a", shape.fingerprints["a"])]) == shape.definitions["a"]
        store.prepare(shape)  # recorded once
        assert store.definitions(shape) == recorded

    def test_item_migration_is_guarded_on_the_version(self, store: StateStore) -> None:
        """migrate_items upgrades items of one version once, with a history entry each."""
        old = Pipeline("conformance", [s.fn for s in _conformance_pipeline().stages.values()],
                       version="1")
        store.prepare(old)
        store.submit(old, [("i1", '{"id":"i1"}'), ("i2", '{"id":"i2"}')], "test")
        new = Pipeline("conformance", [s.fn for s in _conformance_pipeline().stages.values()],
                       version="2")

        def upgrade(text: str) -> str:
            return json.dumps({**json.loads(text), "v": 2})

        assert store.migrate_items(new, "1", "2", upgrade, 1, "migration") == 1
        assert store.migrate_items(new, "1", "2", upgrade, 10, "migration") == 1
        assert store.migrate_items(new, "1", "2", upgrade, 10, "migration") == 0
        assert json.loads(store.item_data(new, "i2")[0]) == {"id": "i2", "v": 2}
        assert store.item_version(new, "i1") == "2"
        assert [h["state"] for h in store.history(new, "i1")].count("migrated") == 1

    def test_reset_stale_reruns_downstream_with_the_reason(self, ready_store: StateStore,
                                                           shape: Pipeline) -> None:
        """reset_stale sends a stage and its downstream back to pending, the reason in the
        history; an item with a stage running is left alone."""
        ready_store.commit(shape, OWNER, [], 10)
        ready_store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)
        why = {"reason": "stale", "why": "fingerprint x -> y: code changed"}
        reset = ready_store.reset_stale(shape, [("i1", "a", why), ("i2", "a", why)], "test")
        assert reset == [("i1", "a")]  # i2's stage a is running
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        assert self.states(ready_store, shape, "i2")["a"] == "running"
        details = [h["details"] for h in ready_store.history(shape, "i1")
                   if h["stage"] == "a" and h["state"] == "pending"]
        assert json.loads(details[-1])["why"] == "fingerprint x -> y: code changed"
    # -- stage metrics ------------------------------------------------------------
    def test_stage_metrics_pair_each_run_and_stay_bounded(self, ready_store: StateStore,
                                                          shape: Pipeline) -> None:
        """Metrics pair each running row with its result: durations, failure and retry
        rates, done counts and waiting reviews; released claims and subtasks are no runs;
        ``sample`` bounds the history rows read."""
        store = ready_store
        store.commit(shape, OWNER, [], 2)  # i1.a and i2.a, attempt 1
        store.release(shape, OWNER, [], unstarted=[("i2", "a", 1)])  # not a run
        time.sleep(0.3)
        store.commit(shape, OWNER, [self.done("i1", "a", output="1")], 0)  # ~0.3 s
        store.commit(shape, OWNER, [], 1, only=["i2"])
        store.commit(shape, OWNER, [self.done("i2", "a", state="failed", error="E")], 0)
        store.retry(shape, "i2", None, "test")
        store.commit(shape, OWNER, [], 1, only=["i2"])
        store.commit(shape, OWNER, [self.done("i2", "a", attempt=2, output="1")], 0)
        # i1.b: a fan-out (its subtask is no stage run), then a review
        store.commit(shape, OWNER, [], 10, only=["i1"])
        store.commit(shape, OWNER, [], 0, fanouts=[FanOutStart("i1", "b", 1, ("x",))])
        store.commit(shape, OWNER, [], 0, subtasks=[SubResult("i1", "b", "x", 1, "completed",
                                                              output="1")])
        review = json.dumps({"data": 1, "message": "check"})
        store.commit(shape, OWNER, [self.done("i1", "b", state="awaiting_review", review=review)], 0)

        m = store.stage_metrics(shape, window=300.0, sample=100_000)
        assert list(m) == ["a", "b", "c", "d"]
        a = m["a"]
        assert (a.stage, a.done, a.runs) == ("a", 2, 3)
        assert a.failure_rate == pytest.approx(1 / 3) and a.retry_rate == pytest.approx(1 / 3)
        assert a.p50 is not None and a.p95 is not None
        assert 0 <= a.p50 < 0.25 <= a.p95 < 30  # two quick runs, one of ~0.3 s
        assert a.throughput > 0 and a.waiting_reviews == 0 and a.oldest_review_age is None
        b = m["b"]
        assert (b.done, b.runs, b.failure_rate, b.retry_rate, b.waiting_reviews) == (0, 1, 0.0, 0.0, 1)
        assert b.oldest_review_age is not None and 0 <= b.oldest_review_age < 30
        assert m["d"].runs == 0 and m["d"].p50 is None and m["d"].failure_rate is None
        # only the newest history rows: i1.b's run is in the last 6, i2's last run of a is not
        bounded = store.stage_metrics(shape, window=300.0, sample=6)
        assert bounded["a"].runs == 0 and bounded["a"].done == 2  # counts are not sampled
        assert bounded["b"].runs == 1
    # -- finding items and bulk operations ----------------------------------------
    def four_items(self, store: StateStore, shape: Pipeline) -> None:
        """i1 fails at a (timeout), i2 completes a, b and c, i3 fails at a (bad_format),
        i4 awaits review at a; all of a in one commit."""
        store.submit(shape, [("i3", '{"id":"i3"}'), ("i4", '{"id":"i4"}')], "test")
        store.commit(shape, OWNER, [], 4)
        review = json.dumps({"data": {"t": 4}, "message": "check"})
        store.commit(shape, OWNER, [
            self.done("i1", "a", state="failed", error="RuntimeError: Upstream TIMEOUT"),
            self.done("i2", "a", output="1"),
            self.done("i3", "a", state="failed", error="ValueError: bad_format"),
            self.done("i4", "a", state="awaiting_review", review=review)], 0)
        store.commit(shape, OWNER, [], 2, only=["i2"])
        store.commit(shape, OWNER, [self.done("i2", "b", output="2"), self.done("i2", "c", output="3")], 0)

    def test_find_items_filters_by_stage_state_error_and_since(self, ready_store: StateStore,
                                                               shape: Pipeline) -> None:
        """find_items: one match per item, filtered by stage, state, error text (any case,
        no wildcards) and time, oldest change first, a page at a time."""
        from .store.query import Filter

        self.four_items(ready_store, shape)

        def found(flt: Filter, limit: int | None = None, offset: int = 0) -> list[tuple[str, str | None]]:
            return [(m.item_id, m.stage) for m in ready_store.find_items(shape, flt, limit, offset)]

        assert found(Filter(state="failed")) == [("i1", "a"), ("i3", "a")]
        assert found(Filter(state="failed", error="timeout")) == [("i1", "a")]
        assert found(Filter(error="BAD_")) == [("i3", "a")]
        assert found(Filter(error="%")) == [] and found(Filter(error="t_me")) == []  # no wildcards
        assert found(Filter(state="completed")) == [("i2", "a")]  # once, though three stages match
        assert found(Filter("b", "completed")) == [("i2", "b")]
        assert found(Filter("b")) == [("i1", "b"), ("i2", "b"), ("i3", "b"), ("i4", "b")]
        assert [m.item_id for m in ready_store.find_items(shape, Filter())] == ["i1", "i2", "i3", "i4"]
        assert found(Filter(state="failed", since=time.time() + 60)) == []
        assert found(Filter(state="failed", since=0.0)) == [("i1", "a"), ("i3", "a")]
        assert found(Filter("a"), limit=2, offset=1) == [("i2", "a"), ("i3", "a")]
        assert found(Filter(state="failed"), limit=1, offset=1) == [("i3", "a")]
        assert [m.item_id for m in ready_store.find_items(shape, Filter(), 2, 3)] == ["i4"]
        [m] = ready_store.find_items(shape, Filter("a", "awaiting_review"))
        assert (m.item_id, m.attempt, json.loads(m.review or "{}")["message"]) == ("i4", 1, "check")
        [m] = ready_store.find_items(shape, Filter("a", "failed", "TIMEOUT"))
        assert m.error == "RuntimeError: Upstream TIMEOUT" and m.updated_at > 0
        assert ready_store.item_ids(shape, None, "failed", 1) == ["i1"]

    def test_decide_many_decides_each_and_skips_what_changed(self, ready_store: StateStore,
                                                             shape: Pipeline) -> None:
        """decide_many decides what still awaits review at the version given, one history
        row each, and skips (unchanged) what does not."""
        self.to_review(ready_store, shape)
        ready_store.commit(shape, OWNER, [], 1, only=["i2"])
        ready_store.commit(shape, OWNER, [self.done("i2", "a", state="awaiting_review",
                                                    review=json.dumps({"data": 2}))], 0)
        before = self.snapshot(ready_store, shape, "i2")
        review = {"decision": "approved", "reviewer": "rita", "note": None}
        result, skipped = ready_store.decide_many(
            shape, [("i1", "a", 1), ("i2", "a", 2), ("nope", "a", None), ("i1", "b", None),
                    ("i1", "a", None)],  # named twice: decided once, then skipped
            approve=True, review=review, actor="rita", details=dict(review))
        assert [(t.item_id, t.stage, t.output) for t in result.accepted] == [("i1", "a", '{"t":1}')]
        assert skipped == [("i2", "a"), ("nope", "a"), ("i1", "b"), ("i1", "a")]
        assert self.snapshot(ready_store, shape, "i2") == before
        rows = [h for h in ready_store.history(shape, "i1") if h["stage"] == "a" and h["actor"] == "rita"]
        assert [(h["state"], json.loads(h["details"])["decision"]) for h in rows] == [
            ("completed", "approved")]
        claimed = ready_store.commit(shape, OWNER, [], 10, only=["i1"]).claims
        assert sorted(c.stage for c in claimed) == ["b", "c"]

        reject = {"decision": "rejected", "reviewer": "rita", "note": "dup"}
        result, skipped = ready_store.decide_many(shape, [("i2", "a", 1), ("i1", "a", None)],
                                                  approve=False, review=reject, actor="rita",
                                                  details=dict(reject))
        assert [t.item_id for t in result.accepted] == ["i2"] and skipped == [("i1", "a")]
        assert result.finished == [("i2", "rejected")]
        assert self.states(ready_store, shape, "i2")["a"] == "rejected"

    def test_retry_rows_moves_only_rows_still_failed(self, ready_store: StateStore,
                                                     shape: Pipeline) -> None:
        """retry_rows puts back the failed rows given and leaves the others as they are."""
        self.four_items(ready_store, shape)
        before = self.snapshot(ready_store, shape, "i2")
        moved = ready_store.retry_rows(shape, [("i1", "a"), ("i2", "a"), ("i4", "a")], "ops")
        assert moved == [("i1", "a")]
        assert self.states(ready_store, shape, "i1")["a"] == "pending"
        assert self.states(ready_store, shape, "i3")["a"] == "failed"
        assert self.states(ready_store, shape, "i4")["a"] == "awaiting_review"
        assert self.snapshot(ready_store, shape, "i2") == before
        [row] = [h for h in ready_store.history(shape, "i1") if h["actor"] == "ops"]
        assert (row["stage"], row["state"]) == ("a", "pending")
