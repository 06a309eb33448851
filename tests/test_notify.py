"""Review notifications: once per request, off the run's thread, recorded, resent after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from treadle import (
    InvalidTransitionError,
    MemoryStore,
    Pipeline,
    Review,
    Runner,
    StageState,
    open_store,
    stage,
)
from treadle.contrib.notify import email, to_assignees, webhook

from .notify_helpers import http_endpoint, smtp_server

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent


def notified(runner: Runner, item_id: str) -> list[dict]:
    return [h.details for h in runner.history(item_id) if h.state == "notified"]


def review_pipeline(name: str, notify, **options) -> Pipeline:
    @stage(notify=notify, **options)
    def check(item):
        return Review(item, message="Check it", options=["yes", "no"])

    return Pipeline(name, [check])


def test_a_webhook_gets_one_post_per_review_request(store):
    """Each review request is POSTed once, as JSON with its id, and recorded as sent."""
    with http_endpoint() as hook:
        runner = Runner(review_pipeline("hooked", webhook(hook.url)), store)
        runner.submit({"id": "a"}, {"id": "b"})
        runner.run()
        assert runner.wait_notifications(10)
        runner.run()  # a second run owes nothing
        assert runner.wait_notifications(10)
        time.sleep(0.2)
        posts = hook.posts
    assert sorted(p["item_id"] for p in posts) == ["a", "b"]
    post = next(p for p in posts if p["item_id"] == "a")
    assert post["id"] == "hooked/a/check/1" and post["kind"] == "review"
    assert post["options"] == ["yes", "no"] and post["message"] == "Check it"
    assert hook.headers[0]["Idempotency-Key"] in ("hooked/a/check/1", "hooked/b/check/1")
    [record] = notified(runner, "a")
    assert record["ok"] is True and record["request"] == "hooked/a/check/1"
    assert record["notifier"] == f"webhook {hook.url}"


def test_a_failing_or_hanging_notifier_never_blocks_or_fails_the_run():
    """A 500 endpoint is recorded as failed with the error; a hanging one does not slow run()."""
    with http_endpoint(status=500) as bad, http_endpoint(delay=3) as slow:
        def explode(request):
            raise RuntimeError("pager down")

        pipeline = review_pipeline("failing", [webhook(bad.url, attempts=2, wait=0.01),
                                               webhook(slow.url, timeout=30), explode])
        runner = Runner(pipeline, MemoryStore())
        runner.submit({"id": "a"})
        started = time.monotonic()
        report = runner.run()
        assert time.monotonic() - started < 2
        assert report.ok and runner.status("a").stages["check"].state == StageState.AWAITING_REVIEW
        assert runner.wait_notifications(20)
        assert len(bad.posts) == 2  # retried by tenacity, then given up
    records = {r["notifier"]: r for r in notified(runner, "a")}
    assert records[f"webhook {bad.url}"]["ok"] is False
    assert "500" in records[f"webhook {bad.url}"]["error"]
    assert records[f"webhook {slow.url}"]["ok"] is True
    assert records["test_a_failing_or_hanging_notifier_never_blocks_or_fails_the_run.<locals>.explode"][
        "error"] == "RuntimeError: pager down"


@pytest.mark.parametrize("point, first, total", [("before-notify", 0, 1), ("after-notify", 1, 2)])
def test_a_kill_between_commit_and_send_sends_on_resume(tmp_path, point, first, total):
    """Killed before the send: the next run sends it; killed after it: sent again, same id."""
    db = f"sqlite:///{tmp_path / 'n.db'}"
    with http_endpoint() as hook:
        env = {**os.environ, "NOTIFY_URL": hook.url, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "treadle", "run", "tests/notify_pipeline.py:pipeline",
               "--db", db, "--item", '{"id": "k1"}']
        killed = subprocess.run(cmd, cwd=ROOT, env={**env, "TREADLE_CRASH_AT": point},
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == 86, killed.stderr
        time.sleep(0.2)
        assert len(hook.posts) == first
        resumed = subprocess.run(cmd[:-2], cwd=ROOT, env=env, capture_output=True, text=True,
                                 timeout=60)
        assert resumed.returncode == 0, resumed.stderr
        time.sleep(0.2)
        assert [p["id"] for p in hook.posts] == ["notified/k1/check/1"] * total
        again = subprocess.run(cmd[:-2], cwd=ROOT, env=env, capture_output=True, timeout=60)
        assert again.returncode == 0
        time.sleep(0.2)
        assert len(hook.posts) == total  # owed no more
    store = open_store(db)
    from tests.notify_pipeline import pipeline
    runner = Runner(pipeline, store)
    assert [r["ok"] for r in notified(runner, "k1")] == [True]


def test_email_and_callable_notifiers():
    """E-mail goes through SMTP with the item, stage and options; any callable works."""
    got = []
    with smtp_server() as (port, messages):
        pipeline = review_pipeline("mailed", [email("ops@example.com", port=port), got.append])
        runner = Runner(pipeline, MemoryStore())
        runner.submit({"id": "m1"})
        runner.run()
        assert runner.wait_notifications(10)
    assert len(messages) == 1
    assert "Subject: [treadle] review: m1 at check" in messages[0]
    assert "Options: yes, no" in messages[0]
    assert [r.id for r in got] == ["mailed/m1/check/1"]


def test_to_assignees_tells_only_the_assigned():
    """to_assignees() routes a request to the notifiers of its assignees."""
    ana, bo = [], []

    @stage(reviewers=["ana"], notify=to_assignees({"ana": ana.append, "bo": bo.append}))
    def check(item):
        return Review(item)

    runner = Runner(Pipeline("routed", [check]), MemoryStore())
    runner.submit({"id": 1})
    runner.run()
    assert runner.wait_notifications(10)
    assert len(ana) == 1 and bo == []


def test_escalation_after_a_timeout_reassigns_and_notifies(store):
    """A review nobody decided in time goes to escalate_to, notified once; nothing decided."""
    got = []

    @stage(reviewers=["ana"], review_timeout=0.05, escalate_to=["boss"], notify=got.append)
    def check(item):
        return Review(item)

    runner = Runner(Pipeline("escalating", [check]), store)
    runner.submit({"id": "e1"})
    runner.run()
    time.sleep(0.1)
    runner.run()
    runner.run()  # escalated once only
    assert runner.wait_notifications(10)
    st = runner.status("e1").stages["check"]
    assert st.state == StageState.AWAITING_REVIEW
    assert st.review is not None and st.review.assignees == ["boss"]
    assert st.review.escalated_to == ["boss"]
    assert [(r.kind, r.assignees) for r in got] == [("review", ["ana"]), ("escalation", ["boss"])]
    [esc] = [h for h in runner.history("e1") if h.state == "escalated"]
    assert esc.actor == "timeout" and esc.details == {"assignees": ["boss"], "previous": ["ana"]}
    with pytest.raises(InvalidTransitionError, match="boss"):
        runner.approve("e1", "check", reviewer="ana")
    runner.approve("e1", "check", reviewer="boss")
    assert runner.status("e1").stages["check"].state == StageState.COMPLETED
