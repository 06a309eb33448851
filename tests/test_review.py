"""Human review gates: approve with edits, reject, concurrency, timeouts, rerun."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from treadle import (
    InvalidTransitionError,
    ItemNotFoundError,
    ItemState,
    Pipeline,
    Review,
    Runner,
    SerializationError,
    StageState,
    UnknownStageError,
    open_store,
    stage,
)
from treadle.testing import capture_signals

ROOT = Path(__file__).resolve().parent.parent
calls: list[tuple[str, str]] = []


@stage()
def identify(item):
    calls.append((str(item["id"]), "identify"))
    return {"title": item.get("title", "Guess")}


@stage(after=[identify])
def confirm(item, ctx):
    calls.append((str(item["id"]), "confirm"))
    return Review(ctx.outputs["identify"], message="Confirm the title")


@stage(after=[confirm])
def export(item, ctx):
    calls.append((str(item["id"]), "export"))
    return {"exported": ctx.outputs["confirm"]}


pipeline = Pipeline("review", [identify, confirm, export])


@pytest.fixture
def runner(store):
    calls.clear()
    r = Runner(pipeline, store, workers=2)
    r.submit({"id": "t1", "title": "Helo"}, {"id": "t2"})
    r.run()
    return r


def test_approve_with_edits_reaches_downstream_and_is_recorded(runner):
    """Approved edits become the stage output; history has reviewer, note and diff."""
    with capture_signals() as rec:
        runner.approve("t1", "confirm", data={"title": "Hello"}, note="typo", reviewer="ann")
    runner.run()
    st = runner.status("t1")
    assert st.state == ItemState.COMPLETED
    assert st.stages["confirm"].output == {"title": "Hello"}
    assert st.stages["export"].output == {"exported": {"title": "Hello"}}
    assert st.stages["confirm"].review.decision == "approved"
    assert st.stages["confirm"].review.reviewer == "ann"
    assert st.stages["confirm"].review.data == {"title": "Helo"}  # what was shown
    entry = [h for h in runner.history("t1") if h.stage == "confirm" and h.state == "completed"][0]
    assert entry.actor == "ann"
    assert entry.details["note"] == "typo" and entry.details["edited"] is True
    assert entry.details["diff"] == [{"op": "replace", "path": "/title", "old": "Helo", "new": "Hello"}]
    ev = rec.of("review_decided")[0].data
    assert (ev["item_id"], ev["stage"], ev["decision"], ev["data"]) == (
        "t1", "confirm", "approved", {"title": "Hello"})


def test_approve_without_data_uses_the_review_data(runner):
    """Approving as-is makes the reviewed data the output."""
    runner.approve("t2", "confirm")
    runner.run()
    assert runner.status("t2").stages["export"].output == {"exported": {"title": "Guess"}}


def test_reject_stops_the_item_and_retry_asks_again(runner):
    """A rejection stops downstream; retry runs the stage again for a fresh review."""
    with capture_signals() as rec:
        runner.reject("t1", "confirm", reason="duplicate", reviewer="bob")
    runner.run()
    st = runner.status("t1")
    assert st.state == ItemState.REJECTED
    assert st.stages["confirm"].state == StageState.REJECTED
    assert st.stages["confirm"].review.note == "duplicate"
    assert st.stages["export"].state == StageState.PENDING
    assert ("t1", "export") not in calls
    assert [e.data["state"] for e in rec.of("item_finished")] == ["rejected"]
    assert runner.retry("t1") == [("t1", "confirm")]
    runner.run()
    st = runner.status("t1")
    assert st.stages["confirm"].state == StageState.AWAITING_REVIEW
    assert st.stages["confirm"].attempts == 2
    assert calls.count(("t1", "confirm")) == 2


@pytest.mark.parametrize("bad", [
    lambda r: r.approve("t1", "export"),                     # not awaiting review
    lambda r: r.approve("t1", "identify"),                   # completed
    lambda r: r.reject("t1", "export", reason="x"),
    lambda r: r.approve("ghost", "confirm"),                 # unknown item
    lambda r: r.approve("t1", "confrim"),                    # unknown stage
    lambda r: r.approve("t1", "confirm", data={"x": object()}),  # not JSON
    lambda r: r.rerun("ghost", from_stage="identify"),
])
def test_bad_decisions_raise_and_leave_the_store_unchanged(runner, bad):
    """Every refused decision raises its error and changes no row."""
    before = runner.store.dump()
    with pytest.raises((InvalidTransitionError, ItemNotFoundError, UnknownStageError,
                        SerializationError)):
        bad(runner)
    assert runner.store.dump() == before


def test_second_decision_is_refused(runner):
    """Deciding twice raises InvalidTransitionError naming the state."""
    runner.approve("t1", "confirm")
    with pytest.raises(InvalidTransitionError, match="is 'completed', not 'awaiting_review'"):
        runner.reject("t1", "confirm", reason="too late")


def test_concurrent_decisions_exactly_one_wins(tmp_path):
    """Two threads deciding one review at once: one succeeds, the other gets the error."""
    for attempt in range(5):
        store = open_store(f"sqlite:///{tmp_path / f'c{attempt}.db'}")
        r = Runner(pipeline, store)
        r.submit({"id": "x"})
        r.run()
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def decide(kind: str) -> None:
            barrier.wait()
            try:
                if kind == "approve":
                    r.approve("x", "confirm", reviewer="a")
                else:
                    r.reject("x", "confirm", reason="no", reviewer="b")
                outcomes.append(kind)
            except InvalidTransitionError:
                outcomes.append("refused")

        threads = [threading.Thread(target=decide, args=(k,)) for k in ("approve", "reject")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) in (["approve", "refused"], ["refused", "reject"])
        decisions = [h for h in r.history("x") if h.stage == "confirm" and h.actor in ("a", "b")]
        assert len(decisions) == 1


def test_approve_all_records_each_decision(runner):
    """Bulk approval decides every waiting item, each with its own history entry."""
    assert runner.approve_all("confirm", reviewer="ann").item_ids == ["t1", "t2"]
    runner.run()
    assert runner.items(state="awaiting_review") == []
    for item in ("t1", "t2"):
        assert runner.status(item).state == ItemState.COMPLETED
        assert [h.actor for h in runner.history(item) if h.stage == "confirm"][-1] == "ann"


def test_inbox_lists_waiting_items_oldest_first_with_data(runner):
    """items(state='awaiting_review') is the inbox, with data and message."""
    inbox = runner.items(state="awaiting_review")
    assert [s.item_id for s in inbox] == ["t1", "t2"]
    assert inbox[0].stages["confirm"].review.message == "Confirm the title"
    assert inbox[0].stages["confirm"].review.data == {"title": "Helo"}


def test_review_timeout_decides_and_is_recorded(store):
    """A review waiting past review_timeout is decided with actor 'timeout'."""

    @stage(review_timeout=0.2, on_timeout="approve")
    def ask(item):
        return Review({"ok": True})

    @stage(after=[ask])
    def done(item, ctx):
        return ctx.outputs["ask"]

    r = Runner(Pipeline("timeouts", [ask, done]), store)
    r.submit({"id": 1})
    r.run()
    assert r.status(1).state == ItemState.AWAITING_REVIEW
    deadline = time.time() + 10
    while r.apply_review_timeouts() == 0:
        assert time.time() < deadline
        time.sleep(0.05)
    r.run()
    st = r.status(1)
    assert st.state == ItemState.COMPLETED and st.stages["done"].output == {"ok": True}
    entry = [h for h in r.history(1) if h.actor == "timeout"][0]
    assert entry.state == "completed" and "timed out after 0.2 s" in entry.details["note"]


def test_rerun_after_approval_asks_again_and_keeps_both_rounds(runner):
    """rerun --from an upstream stage redoes it and its dependents, review included."""
    runner.approve("t1", "confirm", data={"title": "First"})
    runner.run()
    assert runner.rerun("t1", from_stage="identify") == ["identify", "confirm", "export"]
    st = runner.status("t1")
    assert {n: s.state.value for n, s in st.stages.items()} == dict.fromkeys(
        ["identify", "confirm", "export"], "pending")
    runner.run()
    assert runner.status("t1").stages["confirm"].state == StageState.AWAITING_REVIEW
    runner.approve("t1", "confirm", data={"title": "Second"})
    runner.run()
    assert runner.status("t1").stages["export"].output == {"exported": {"title": "Second"}}
    hist = runner.history("t1")
    reruns = [h for h in hist if h.details and h.details.get("reason") == "rerun"]
    assert {h.stage for h in reruns} == {"identify", "confirm", "export"}
    cleared = [h for h in reruns if h.stage == "confirm"][0]
    assert cleared.details["cleared_review"]["decision"] == "approved"
    assert cleared.details["superseded_output"] == {"title": "First"}
    assert len([h for h in hist if h.stage == "confirm" and h.state == "awaiting_review"]) == 2
    assert calls.count(("t1", "export")) == 2


SLOW = '''
import sys, time, os
sys.path.insert(0, {root!r})
from treadle import Pipeline, Review, Runner, open_store, stage

@stage()
def check(item):
    if item["id"] == "slow":
        deadline = time.time() + 30
        while not os.path.exists({marker!r}) and time.time() < deadline:
            time.sleep(0.02)
        return "slow done"
    return Review({{"v": 1}})

@stage(after=[check])
def publish(item, ctx):
    return ctx.outputs["check"]

pipeline = Pipeline("live", [check, publish])
'''


def test_decision_from_another_process_is_picked_up_by_a_running_run(tmp_path):
    """An approval made elsewhere while run() is busy continues the item in that run."""
    db = f"sqlite:///{tmp_path / 'live.db'}"
    marker = tmp_path / "release"
    module = tmp_path / "live_pipeline.py"
    module.write_text(SLOW.format(root=str(ROOT), marker=str(marker)))
    sys.path.insert(0, str(tmp_path))
    try:
        import live_pipeline
    finally:
        sys.path.remove(str(tmp_path))
    runner = Runner(live_pipeline.pipeline, open_store(db), workers=2)
    runner.submit({"id": "fast"}, {"id": "slow"})
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.setdefault("report", runner.run()))
    thread.start()
    observer = Runner(live_pipeline.pipeline, open_store(db))
    deadline = time.time() + 20
    while observer.status("fast").stages["check"].state != "awaiting_review":
        assert time.time() < deadline
        time.sleep(0.02)
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import live_pipeline;"
            "from treadle import Runner, open_store;"
            f"Runner(live_pipeline.pipeline, open_store({db!r})).approve('fast', 'check', data={{'v': 2}})"
            )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    deadline = time.time() + 20
    while observer.status("fast").stages["publish"].state != "completed":
        assert thread.is_alive(), "run() ended before the approved item was published"
        assert time.time() < deadline
        time.sleep(0.02)
    marker.write_text("go")
    thread.join(timeout=30)
    publish = [h for h in observer.history("fast") if h.stage == "publish" and h.state == "completed"]
    assert publish[0].actor == runner.owner
    assert observer.status("fast").stages["publish"].output == {"v": 2}
    assert result["report"].items == {"completed": 2}


def test_decision_while_no_runner_is_up_then_run(tmp_path):
    """A decision made with no runner up is acted on by the next run."""
    db = f"sqlite:///{tmp_path / 'offline.db'}"
    r = Runner(pipeline, open_store(db))
    r.submit({"id": "o"})
    r.run()
    Runner(pipeline, open_store(db)).approve("o", "confirm", data={"title": "Offline"})
    report = Runner(pipeline, open_store(db)).run()
    assert report.completed == 1
    assert r.status("o").stages["export"].output == {"exported": {"title": "Offline"}}
