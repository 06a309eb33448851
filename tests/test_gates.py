"""Quality gates: verdicts, retry with feedback, escalation, review policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from treadle import (
    Accepted,
    InvalidTransitionError,
    ItemState,
    Pipeline,
    Rejected,
    Runner,
    StageState,
    Uncertain,
    open_store,
    stage,
)
from treadle.testing import capture_signals

from .procs import Script, import_from

ROOT = Path(__file__).resolve().parent.parent


def pipeline_with(gate, **options):
    seen: list[tuple[int, tuple]] = []

    @stage(gate=gate, **options)
    def extract(item, ctx):
        seen.append((ctx.attempt, ctx.feedback))
        return {"score": ctx.attempt}

    @stage(after=[extract])
    def use(item, ctx):
        return ctx.outputs["extract"]

    return Pipeline("gated", [extract, use]), seen


def at_least(n):
    def gate(item, output, ctx):
        if output["score"] >= n:
            return Accepted("good")
        return Rejected(f"score {output['score']} < {n}", details={"score": output["score"]})
    return gate


def test_rejected_twice_then_accepted(store):
    """Two rejections then acceptance: 3 attempts, each seeing the earlier feedback."""
    p, seen = pipeline_with(at_least(3), retry=3)
    runner = Runner(p, store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        runner.run()
    assert [a for a, _ in seen] == [1, 2, 3]
    assert seen[0][1] == ()
    assert [f["message"] for f in seen[1][1]] == ["score 1 < 3"]
    assert [f["message"] for f in seen[2][1]] == ["score 1 < 3", "score 2 < 3"]
    assert seen[2][1][1]["details"] == {"score": 2}
    st = runner.status(1)
    assert st.state == ItemState.COMPLETED and st.stages["use"].output == {"score": 3}
    verdicts = [(h.attempt, h.state, h.details["verdict"]["verdict"])
                for h in runner.history(1) if h.details and "verdict" in h.details]
    assert verdicts == [(1, "output_rejected", "rejected"), (2, "output_rejected", "rejected"),
                        (3, "completed", "accepted")]
    assert [r["verdict"]["verdict"] for r in st.stages["extract"].attempt_log] == [
        "rejected", "rejected", "accepted"]
    assert len(rec.of("quality_failed")) == 2 and len(rec.of("quality_passed")) == 1
    assert len(rec.of("retry_scheduled")) == 2


def test_exhausted_without_escalation_fails(store):
    """Out of attempts with on_exhausted='fail': the stage fails with the gate's message."""
    p, _ = pipeline_with(at_least(9), retry=2)
    runner = Runner(p, store)
    runner.submit({"id": 1})
    runner.run()
    st = runner.status(1).stages["extract"]
    assert st.state == StageState.FAILED
    assert st.error == "Output rejected by the gate after 2 attempt(s): score 2 < 9"


def test_escalation_lists_attempts_and_one_can_be_approved(store):
    """Exhausted with escalate: review lists all attempts; approve(attempt=2) picks that output."""
    p, _ = pipeline_with(at_least(9), retry=3, on_exhausted="escalate")
    runner = Runner(p, store)
    runner.submit({"id": 1})
    with capture_signals() as rec:
        runner.run()
    st = runner.status(1).stages["extract"]
    assert st.state == StageState.AWAITING_REVIEW
    assert "Escalated after 3 attempt(s): score 3 < 9" in st.review.message
    review = runner.store.stage_records(p, "1")[0].review
    import json
    attempts = json.loads(review)["attempts"]
    assert [(a["attempt"], a["output"]) for a in attempts] == [(1, {"score": 1}), (2, {"score": 2}),
                                                             (3, {"score": 3})]
    assert len(rec.of("escalated")) == 1
    with pytest.raises(InvalidTransitionError, match="no attempt 7"):
        runner.approve(1, "extract", attempt=7)
    runner.approve(1, "extract", attempt=2, reviewer="ann")
    runner.run()
    assert runner.status(1).stages["use"].output == {"score": 2}


def test_request_changes_reruns_with_reviewer_feedback_and_a_fresh_budget(store):
    """request_changes: the stage runs again with the feedback; the gate judges again."""
    p, seen = pipeline_with(at_least(4), retry=2, on_exhausted="escalate")
    runner = Runner(p, store)
    runner.submit({"id": 1})
    runner.run()
    assert runner.status(1).stages["extract"].state == StageState.AWAITING_REVIEW
    runner.request_changes(1, "extract", feedback="use the second table", reviewer="bob")
    runner.run()
    assert [a for a, _ in seen] == [1, 2, 3, 4]
    last_feedback = seen[2][1]
    assert last_feedback[-1] == {"source": "reviewer", "attempt": 2,
                                 "message": "use the second table", "reviewer": "bob"}
    st = runner.status(1)
    assert st.state == ItemState.COMPLETED and st.stages["use"].output == {"score": 4}
    assert [h.state for h in runner.history(1) if h.stage == "extract"].count("changes_requested") == 1


def test_uncertain_pauses_with_on_uncertain_and_is_rejected_with_never(store):
    """Uncertain + review='on_uncertain' waits for a human; with 'never' it counts as rejected."""
    unsure = lambda item, output, ctx: Uncertain("blurry scan")  # noqa: E731
    p, seen = pipeline_with(unsure, retry=2, review="on_uncertain")
    runner = Runner(p, store)
    runner.submit({"id": 1})
    runner.run()
    st = runner.status(1).stages["extract"]
    assert st.state == StageState.AWAITING_REVIEW and "blurry scan" in st.review.message
    assert len(seen) == 1

    p2, seen2 = pipeline_with(unsure, retry=2)
    runner2 = Runner(p2, open_store("memory://"))
    runner2.submit({"id": 1})
    runner2.run()
    st2 = runner2.status(1).stages["extract"]
    assert st2.state == StageState.FAILED and "blurry scan" in st2.error
    assert len(seen2) == 2 and seen2[1][1][0]["message"] == "blurry scan"


def test_review_always_pauses_after_acceptance(store):
    """review='always': an accepted output still waits for a human, showing the verdict."""
    p, _ = pipeline_with(at_least(1), review="always")
    runner = Runner(p, store)
    runner.submit({"id": 1})
    runner.run()
    st = runner.status(1).stages["extract"]
    assert st.state == StageState.AWAITING_REVIEW
    assert st.review.data == {"score": 1}
    assert st.attempt_log[0]["verdict"] == {"verdict": "accepted", "note": "good"}
    runner.approve(1, "extract")
    runner.run()
    assert runner.status(1).stages["use"].output == {"score": 1}


def test_a_gate_that_raises_fails_that_attempt_only(store):
    """A gate raising is the attempt's failure, recorded, retried like an error."""
    calls = {"n": 0}

    def flaky_gate(item, output, ctx):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("schema")
        return Accepted()

    p, seen = pipeline_with(flaky_gate, retry=2)
    runner = Runner(p, store)
    runner.submit({"id": 1})
    report = runner.run()
    assert report.failed == 0 and len(seen) == 2
    failed = [h for h in runner.history(1) if h.state == "failed"]
    assert "the gate of stage 'extract' raised KeyError" in failed[0].error


@pytest.mark.slow
def test_sigkill_before_the_verdict_is_stored_does_not_use_up_the_budget(tmp_path):
    """Killed after an attempt but before its verdict commits: it reruns, counted once."""
    db = f"sqlite:///{tmp_path / 'g.db'}"
    script = Script(ROOT / "tests" / "gates" / "killed_gate.py", db, tmp_path / "gate.log",
                    "GATE_LOG")
    script.kill_after(1)
    script.run()
    assert script.lines() == ["1", "2", "3"]
    killed_gate = import_from(ROOT / "tests" / "gates", "killed_gate")
    runner = Runner(killed_gate.pipeline, open_store(db))
    st = runner.status("doc").stages["extract"]
    assert st.state == StageState.AWAITING_REVIEW
    assert [r["attempt"] for r in st.attempt_log] == [2, 3]  # the killed attempt has no verdict
    assert "Escalated after 2 attempt(s)" in st.review.message
