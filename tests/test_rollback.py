"""Rollback (compensation): reverse order, recorded, failures isolated, resumable."""

from __future__ import annotations

from pathlib import Path

import pytest

from treadle import ItemState, Pipeline, Review, Runner, StageState, open_store, stage
from treadle.testing import capture_signals

from .procs import Script, import_from

ROOT = Path(__file__).resolve().parent.parent


def build(undone: list[str], *, fail_rollback: str | None = None, reject: bool = False,
          on_failure: str = "rollback") -> Pipeline:
    def undo(name):
        def rollback(item, ctx):
            undone.append(name)
            if name == fail_rollback:
                raise OSError(f"cannot undo {name}")
        return rollback

    @stage(rollback=undo("reserve"))
    def reserve(item):
        return {"reserved": item["id"]}

    @stage(after=[reserve], rollback=undo("charge"))
    def charge(item):
        return {"charged": 10}

    @stage(after=[reserve])
    def note(item):  # no rollback: nothing to undo
        return "noted"

    @stage(after=[charge, note], rollback=undo("ship"))
    def ship(item):
        if reject:
            return Review({"ok": True}, message="ship it?")
        raise RuntimeError("carrier down")

    return Pipeline("orders", [reserve, charge, note, ship], on_failure=on_failure)


def test_failed_item_rolls_back_completed_stages_in_reverse_order(store):
    """A final failure runs the completed stages' rollbacks, newest first, each recorded."""
    undone: list[str] = []
    runner = Runner(build(undone), store)
    runner.submit({"id": "o1"})
    with capture_signals() as rec:
        runner.run()
    assert undone == ["charge", "reserve"]
    st = runner.status("o1")
    assert st.state == ItemState.ROLLED_BACK
    assert st.stages["reserve"].state == StageState.ROLLED_BACK
    assert st.stages["charge"].state == StageState.ROLLED_BACK
    assert st.stages["note"].state == StageState.COMPLETED  # no rollback declared
    assert st.stages["ship"].state == StageState.FAILED
    assert st.stages["ship"].error == "RuntimeError: carrier down"  # the original error stays
    rolled = [h.stage for h in runner.history("o1") if h.state == "rolled_back"]
    assert rolled == ["charge", "reserve"]
    assert [e.data["state"] for e in rec.of("item_finished")] == ["rolled_back"]
    assert runner.item_counts() == {"rolled_back": 1}


def test_a_failing_rollback_is_recorded_and_the_others_still_run(store):
    """One rollback raising is recorded on its own; earlier stages are still rolled back."""
    undone: list[str] = []
    runner = Runner(build(undone, fail_rollback="charge"), store)
    runner.submit({"id": "o2"})
    runner.run()
    assert undone == ["charge", "reserve"]
    st = runner.status("o2")
    assert st.stages["charge"].state == StageState.COMPLETED
    assert st.stages["charge"].error == "rollback failed: OSError: cannot undo charge"
    assert st.stages["reserve"].state == StageState.ROLLED_BACK
    assert st.stages["ship"].error == "RuntimeError: carrier down"
    failed = [h for h in runner.history("o2") if h.state == "rollback_failed"]
    assert failed[0].stage == "charge" and "cannot undo charge" in failed[0].error
    runner.run()
    assert undone == ["charge", "reserve"]  # nothing runs twice


def test_rejection_at_review_rolls_back(store):
    """A rejected review rolls the item back on the next run."""
    undone: list[str] = []
    runner = Runner(build(undone, reject=True), store)
    runner.submit({"id": "o3"})
    runner.run()
    assert undone == []
    runner.reject("o3", "ship", reason="fraud")
    runner.run()
    assert undone == ["charge", "reserve"]
    assert runner.status("o3").state == ItemState.ROLLED_BACK
    assert runner.status("o3").stages["ship"].state == StageState.REJECTED


def test_stop_policy_runs_no_rollback(store):
    """on_failure='stop' (the default) leaves completed stages alone."""
    undone: list[str] = []
    runner = Runner(build(undone, on_failure="stop"), store)
    runner.submit({"id": "o4"})
    runner.run()
    assert undone == [] and runner.status("o4").state == ItemState.FAILED


@pytest.mark.slow
def test_sigkill_mid_rollback_resumes_without_repeating(tmp_path):
    """Killed during its rollbacks, the next run finishes them and repeats none that completed."""
    db = f"sqlite:///{tmp_path / 'rb.db'}"
    script = Script(ROOT / "tests" / "rollback" / "slow_rollback.py", db, tmp_path / "rb.log",
                    "ROLLBACK_LOG")
    script.kill_after(2)
    slow_rollback = import_from(ROOT / "tests" / "rollback", "slow_rollback")
    runner = Runner(slow_rollback.pipeline, open_store(db))
    done_before = [h.stage for h in runner.history("only") if h.state == "rolled_back"]
    assert done_before == ["s3"]  # s3 recorded, s2 was running when killed
    script.run()
    calls = script.lines()
    assert calls.count("s3") == 1, calls
    assert calls.count("s1") == 1 and calls.count("s2") in (1, 2)
    st = runner.status("only")
    assert st.state == ItemState.ROLLED_BACK
    assert [st.stages[s].state for s in ("s1", "s2", "s3")] == [StageState.ROLLED_BACK] * 3


def test_advance_one_item_rolls_back_only_that_item(store, monkeypatch):
    """Runner.advance(item) runs that item's rollback, not other items' waiting ones."""
    undone = []

    @stage(rollback=lambda item: undone.append(item["id"]))
    def book(item):
        return 1

    @stage(after=[book])
    def pay(item):
        raise RuntimeError("declined")

    pipeline = Pipeline("adv", [book, pay], on_failure="rollback")
    Runner(pipeline, store).submit({"id": "a"}, {"id": "b"})
    from treadle.engine.rollback import Rollbacks

    # both items fail and wait for their rollbacks; nobody runs them yet
    with monkeypatch.context() as m:
        m.setattr(Rollbacks, "pump", lambda self: False)
        Runner(pipeline, store).run()
    assert undone == []
    runner = Runner(pipeline, store)
    runner.advance("a")
    assert "a" in undone and "b" not in undone
