"""Running pipelines: outcomes, outputs downstream, signals, failures, retry, queries."""

from __future__ import annotations

import dataclasses
import threading

import attrs
import pytest

from treadle import (
    InvalidItemError,
    ItemNotFoundError,
    ItemState,
    Pipeline,
    Review,
    Runner,
    Skipped,
    StageState,
    UnknownStageError,
    stage,
)
from treadle.testing import capture_signals

from . import pipelines_diamond


def test_diamond_runs_every_stage_once_and_passes_outputs(store):
    """Each stage sees its upstream outputs; every stage completes exactly once."""
    runner = Runner(pipelines_diamond.pipeline, store, workers=3)
    assert runner.submit({"id": "a", "n": 3}, {"id": 7, "n": 5}) == ["a", "7"]
    report = runner.run()
    assert report.completed == 10 and report.failed == 0 and report.ok
    assert report.items == {"completed": 2}
    st = runner.status("a")
    assert st.state == ItemState.COMPLETED
    assert list(st.stages) == ["fetch", "left", "right", "join", "publish"]
    assert st.stages["publish"].output == {
        "published": {"left": 4, "right": 6}, "seen": ["fetch", "join", "left", "right"]}
    assert all(s.attempts == 1 for s in st.stages.values())
    assert runner.status(7).stages["join"].output == {"left": 6, "right": 10}
    assert runner.run().executed == 0  # nothing left to do


def test_resubmitting_a_known_id_is_ignored(store):
    """Ids are identity: a known id is not stored or run again."""
    runner = Runner(pipelines_diamond.pipeline, store)
    runner.submit({"id": "a", "n": 1})
    runner.run()
    assert runner.submit({"id": "a", "n": 99}) == []
    assert runner.run().executed == 0
    assert runner.item("a") == {"id": "a", "n": 1}


def test_attrs_and_dataclass_items_round_trip(store):
    """Items are restored as the pipeline's item_type in every stage."""

    @attrs.frozen
    class Track:
        id: str
        path: str

    seen = []

    @stage()
    def look(item):
        seen.append(item)
        return item.path.upper()

    runner = Runner(Pipeline("t", [look], item_type=Track), store)
    runner.submit(Track("t1", "a.flac"))
    runner.run()
    assert seen == [Track("t1", "a.flac")]
    assert runner.item("t1") == Track("t1", "a.flac")

    @dataclasses.dataclass
    class Doc:
        id: int
        text: str

    @stage()
    def count(item):
        seen.append(item)
        return len(item.text)

    runner = Runner(Pipeline("d", [count], item_type=Doc), store)
    runner.submit(Doc(1, "xyz"))
    runner.run()
    assert seen[-1] == Doc(1, "xyz") and runner.status(1).stages["count"].output == 3
    assert runner.item(1) == Doc(1, "xyz")


def test_bad_items_are_refused_before_anything_is_stored(store):
    """An item without id, or of the wrong type, raises and stores nothing."""
    runner = Runner(pipelines_diamond.pipeline, store)
    with pytest.raises(InvalidItemError, match="no 'id' key"):
        runner.submit({"id": "ok", "n": 1}, {"n": 2})
    with pytest.raises(InvalidItemError, match="item_type"):
        runner.submit(attrs.make_class("X", ["id"])("x"))
    with pytest.raises(InvalidItemError, match="must be a str or an int"):
        runner.submit({"id": 1.5})
    assert runner.items() == []


def test_failure_is_recorded_and_blocks_downstream_then_retry(store):
    """A raising stage fails with error and traceback; dependents wait; retry reruns it."""
    calls = {"n": 0}

    @stage()
    def flaky(item):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("upstream API said no")
        return "ok"

    @stage(after=[flaky])
    def after(item, ctx):
        return ctx.outputs["flaky"]

    runner = Runner(Pipeline("f", [flaky, after]), store)
    runner.submit({"id": "x"})
    with capture_signals() as rec:
        report = runner.run()
    assert report.failed == 1 and not report.ok
    assert report.failures == [("x", "flaky", "ValueError: upstream API said no")]
    st = runner.status("x")
    assert st.state == ItemState.FAILED
    assert st.stages["flaky"].state == StageState.FAILED
    assert st.stages["after"].state == StageState.PENDING
    failed = [h for h in runner.history("x") if h.state == "failed"]
    assert "Traceback" in failed[0].traceback and "upstream API said no" in failed[0].traceback
    assert rec.names("x") == ["stage_started", "stage_failed", "item_finished"]
    assert rec.of("stage_failed")[0].data["error"] == "ValueError: upstream API said no"

    assert runner.retry("x") == [("x", "flaky")]
    runner.run()
    st = runner.status("x")
    assert st.state == ItemState.COMPLETED
    assert st.stages["flaky"].attempts == 2 and st.stages["after"].output == "ok"


def test_unserialisable_output_fails_that_stage_and_the_run_goes_on(store):
    """An output that is not JSON is a SerializationError recorded as the stage's failure."""

    @stage()
    def make(item):
        return {"handle": object()} if item["id"] == "bad" else {"v": 1}

    runner = Runner(Pipeline("s", [make]), store)
    runner.submit({"id": "bad"}, {"id": "good"})
    report = runner.run()
    assert report.completed == 1 and report.failed == 1
    err = runner.status("bad").stages["make"].error
    assert err.startswith("SerializationError: The output of item 'bad' at stage 'make'")
    assert runner.status("good").state == ItemState.COMPLETED


def test_when_false_skips_and_dependents_still_run(store):
    """when=False skips with reason 'condition false'; dependents then run."""

    @stage(when=lambda item, ctx: item["keep"])
    def maybe(item):
        return "ran"

    @stage(after=[maybe])
    def then(item, ctx):
        return sorted(ctx.outputs)

    runner = Runner(Pipeline("w", [maybe, then]), store)
    runner.submit({"id": 1, "keep": False}, {"id": 2, "keep": True})
    with capture_signals() as rec:
        runner.run()
    one = runner.status(1)
    assert one.stages["maybe"].state == StageState.SKIPPED
    assert one.stages["then"].output == [] and one.state == ItemState.COMPLETED
    assert runner.status(2).stages["then"].output == ["maybe"]
    skip = [e for e in rec.of("stage_skipped") if e.data["item_id"] == "1"]
    assert skip[0].data["data"] == "condition false"
    hist = [h for h in runner.history(1) if h.state == "skipped"]
    assert hist[0].details == {"reason": "condition false"}


def test_when_predicate_error_is_the_stage_failure(store):
    """A predicate that raises fails the stage."""

    @stage(when=lambda item: item["missing"])
    def s(item): ...

    runner = Runner(Pipeline("w", [s]), store)
    runner.submit({"id": 1})
    runner.run()
    assert runner.status(1).stages["s"].error == "KeyError: 'missing'"


def test_skipped_propagate_skips_the_downstream(store):
    """Skipped(propagate=True) skips everything downstream; the item is finished."""

    @stage()
    def gate(item):
        return Skipped("not music", propagate=True)

    @stage(after=[gate])
    def work(item):
        raise AssertionError("must not run")

    @stage(after=[work])
    def more(item):
        raise AssertionError("must not run")

    runner = Runner(Pipeline("sk", [gate, work, more]), store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        runner.run()
    st = runner.status(1)
    assert {n: s.state for n, s in st.stages.items()} == dict.fromkeys(
        ["gate", "work", "more"], StageState.SKIPPED)
    assert st.state == ItemState.COMPLETED
    assert rec.names("1")[-1] == "item_finished"


def test_review_outcome_waits_with_its_data(store):
    """Review(...) leaves the stage awaiting_review with data and message; the run returns."""

    @stage()
    def check(item):
        return Review({"title": "Guess"}, message="Confirm the title")

    @stage(after=[check])
    def export(item): ...

    runner = Runner(Pipeline("r", [check, export]), store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        report = runner.run()
    assert report.awaiting_review == 1 and report.items == {"awaiting_review": 1}
    st = runner.status(1)
    assert st.state == ItemState.AWAITING_REVIEW
    assert st.stages["check"].review.data == {"title": "Guess"}
    assert st.stages["check"].review.message == "Confirm the title"
    assert [s.item_id for s in runner.items(stage="check", state="awaiting_review")] == ["1"]
    assert [s.item_id for s in runner.items(state="awaiting_review")] == ["1"]
    ev = rec.of("review_required")[0].data
    assert ev["data"] == {"title": "Guess"} and ev["message"] == "Confirm the title"


def test_signals_follow_commit_order_and_a_raising_receiver_is_ignored(store):
    """Signals arrive in transition order; a receiver that raises never breaks a run."""
    from treadle import signals

    def bad(sender, **kw):
        raise RuntimeError("receiver bug")

    signals.stage_completed.connect(bad, weak=False)
    try:
        runner = Runner(pipelines_diamond.pipeline, store, workers=2)
        with capture_signals(pipelines_diamond.pipeline) as rec:
            runner.submit({"id": "a", "n": 1})
            report = runner.run()
    finally:
        signals.stage_completed.disconnect(bad)
    assert report.completed == 5
    names = rec.names("a")
    assert names[0] == "item_submitted" and names[-1] == "item_finished"
    started = [e.data["stage"] for e in rec.of("stage_started")]
    done = [e.data["stage"] for e in rec.of("stage_completed")]
    assert started[0] == "fetch" and done[-1] == "publish"
    for dep, stage_name in [("fetch", "left"), ("left", "join"), ("right", "join"), ("join", "publish")]:
        i_done = [i for i, e in enumerate(rec.events)
                  if e.name == "stage_completed" and e.data.get("stage") == dep][0]
        i_start = [i for i, e in enumerate(rec.events)
                   if e.name == "stage_started" and e.data.get("stage") == stage_name][0]
        assert i_done < i_start, f"{stage_name} started before {dep} completed"


def test_stage_context_fields(store):
    """ctx carries item_id, stage, attempt, read-only outputs, a logger and an event."""
    seen = {}

    @stage()
    def first(item):
        return 1

    @stage(after=[first])
    def second(item, ctx):
        seen.update(item_id=ctx.item_id, stage=ctx.stage, attempt=ctx.attempt,
                    outputs=dict(ctx.outputs), cancelled=ctx.cancelled.is_set())
        ctx.log.info("inside the stage")
        with pytest.raises(TypeError):
            ctx.outputs["x"] = 1  # type: ignore[index]
        assert isinstance(ctx.cancelled, threading.Event)

    runner = Runner(Pipeline("c", [first, second]), store)
    runner.submit({"id": 9})
    runner.run()
    assert seen == {"item_id": "9", "stage": "second", "attempt": 1,
                    "outputs": {"first": 1}, "cancelled": False}
    assert runner.status(9).state == ItemState.COMPLETED


def test_unknown_item_and_stage_errors(store):
    """Unknown ids and stages raise errors that name them."""
    runner = Runner(pipelines_diamond.pipeline, store)
    with pytest.raises(ItemNotFoundError, match="'nope' is not in pipeline 'diamond'"):
        runner.status("nope")
    with pytest.raises(ItemNotFoundError):
        runner.history("nope")
    with pytest.raises(UnknownStageError, match="Did you mean 'join'"):
        runner.items(stage="joni", state="pending")
    with pytest.raises(ValueError):
        runner.items(state="bogus")


def test_advance_one_item_only(store):
    """advance(item_id) moves only that item."""
    runner = Runner(pipelines_diamond.pipeline, store)
    runner.submit({"id": 1, "n": 1}, {"id": 2, "n": 2})
    runner.advance(2)
    assert runner.status(2).state == ItemState.COMPLETED
    assert runner.status(1).state == ItemState.PENDING
    with pytest.raises(ItemNotFoundError):
        runner.advance("ghost")


def test_source_items_are_submitted_once(store):
    """A pipeline source is drained on each run; known ids are skipped."""
    produced = [{"id": i} for i in range(3)]

    @stage()
    def s(item):
        return item["id"]

    runner = Runner(Pipeline("src", [s], source=lambda: iter(produced)), store)
    assert runner.run().completed == 3
    produced.append({"id": 3})
    assert runner.run().completed == 1


def test_a_source_is_stored_in_batches_as_it_yields(store):
    """A large source is never held whole: its first batch (500 items) is stored before
    it yields the rest; an item that cannot be stored stops it there, the next run goes on."""
    midway = []
    bad = {"at": 1_100}

    def source():
        for i in range(1_200):
            if i == 600:
                midway.append(runner.counts())
            yield {"id": i} if i != bad["at"] else {"no id": i}

    @stage()
    def s(item):
        return item["id"]

    runner = Runner(Pipeline("batched", [s], source=source), store)
    with pytest.raises(InvalidItemError):
        runner.submit_source()
    assert midway == [{"s": {"pending": 500}}]
    assert runner.counts() == {"s": {"pending": 1_000}}
    bad["at"] = -1
    assert len(runner.submit_source()) == 200
    assert runner.run().completed == 1_200


def test_pipeline_gains_a_stage_between_runs(store):
    """A new stage runs for items already past its dependencies; removed stages are ignored."""

    @stage()
    def a(item):
        return 1

    @stage(after=[a])
    def old(item):
        return "old"

    runner = Runner(Pipeline("evolve", [a, old]), store)
    runner.submit({"id": 1})
    runner.run()

    @stage(after=[a])
    def new(item, ctx):
        return ctx.outputs["a"] + 1

    runner2 = Runner(Pipeline("evolve", [a, new]), store)
    report = runner2.run()
    assert report.completed == 1
    st = runner2.status(1)
    assert list(st.stages) == ["a", "new"] and st.stages["new"].output == 2
    assert st.state == ItemState.COMPLETED
    # the removed stage's record is still there for the old definition
    assert runner.status(1).stages["old"].output == "old"


def test_workers_must_be_positive(store):
    """Runner validates workers."""
    with pytest.raises(ValueError, match="workers"):
        Runner(pipelines_diamond.pipeline, store, workers=0)


def test_any_executor_can_run_the_stages(store):
    """executor= accepts any concurrent.futures.Executor; the runner does not shut it down."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        runner = Runner(pipelines_diamond.pipeline, store, executor=pool)
        runner.submit({"id": "a", "n": 2}, {"id": "b", "n": 3})
        report = runner.run()
        assert report.completed == 10
        assert pool.submit(lambda: 42).result() == 42  # still usable
    assert runner.status("b").stages["join"].output == {"left": 4, "right": 6}


def test_item_counts_settled_and_exact_agree_after_a_run(store):
    """After a run, the fast settled item counts equal the exact ones."""
    runner = Runner(pipelines_diamond.pipeline, store)
    runner.submit(*({"id": i, "n": i} for i in range(5)))
    runner.run()
    assert runner.item_counts() == runner.item_counts(exact=True) == {"completed": 5}


def test_stages_can_run_in_a_process_pool(tmp_path):
    """A ProcessPoolExecutor runs importable stage functions in other processes."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from treadle import open_store

    from . import pipelines_pid

    with ProcessPoolExecutor(2) as pool:
        runner = Runner(pipelines_pid.pipeline, open_store(f"sqlite:///{tmp_path / 'p.db'}"),
                        executor=pool)
        runner.submit({"id": 1}, {"id": 2})
        report = runner.run()
    assert report.failed == 0, report.failures
    st = runner.status(1)
    assert st.stages["where"].output["pid"] != os.getpid()
    assert st.stages["fan"].output == {"s0": 0, "s1": 1, "s2": 4}


def test_declared_renames_carry_records_over(store):
    """Pipeline(renames={old: new}) keeps the renamed stage's results; nothing reruns."""
    calls = []

    @stage()
    def fetch(item):
        calls.append("fetch")
        return {"v": 1}

    @stage(after=[fetch])
    def old_name(item, ctx):
        calls.append("old")
        return ctx.outputs["fetch"]["v"] + 1

    runner = Runner(Pipeline("ren", [fetch, old_name]), store)
    runner.submit({"id": 1})
    runner.run()

    @stage(after=[fetch], name="new_name")
    def renamed(item, ctx):
        calls.append("new")
        return -1

    @stage(after=["new_name"])
    def after(item, ctx):
        return ctx.outputs["new_name"] * 10

    runner2 = Runner(Pipeline("ren", [fetch, renamed, after], renames={"old_name": "new_name"}),
                     store)
    runner2.run()
    st = runner2.status(1)
    assert calls == ["fetch", "old"]
    assert st.stages["new_name"].output == 2 and st.stages["after"].output == 20
    assert any(h.state == "renamed" and h.details == {"renamed_from": "old_name"}
               for h in runner2.history(1))


def test_renames_are_validated():
    """A rename to an unknown stage, or of a stage still present, is a definition error."""
    from treadle import PipelineDefinitionError

    with pytest.raises(PipelineDefinitionError, match="not one of its stages"):
        Pipeline("r", [pipelines_diamond.fetch], renames={"a": "nope"})
    with pytest.raises(PipelineDefinitionError, match="is still a stage"):
        Pipeline("r", [pipelines_diamond.fetch], renames={"fetch": "fetch"})
