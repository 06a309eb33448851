"""The examples run as a user would run them, and leave the store as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from treadle import ItemState, Runner, open_store

from .procs import import_from

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TREADLE_DB": db}
    return subprocess.run([sys.executable, str(ROOT / "examples" / name)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_quickstart_runs_then_resumes_without_redoing_work(tmp_path):
    """quickstart.py ends with one item awaiting review; a second run executes nothing."""
    db = f"sqlite:///{tmp_path / 'q.db'}"
    first = run_example("quickstart.py", db, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 item(s) await review, e.g. essay-3" in first.stdout
    second = run_example("quickstart.py", db, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "this run executed 0 stage(s)" in second.stdout

    quickstart = import_from(ROOT / "examples", "quickstart")
    runner = Runner(quickstart.pipeline, open_store(db))
    states = {s.item_id: s.state for s in runner.items()}
    assert states == {"memo-1": ItemState.COMPLETED, "memo-2": ItemState.COMPLETED,
                      "essay-3": ItemState.AWAITING_REVIEW, "draft-4": ItemState.COMPLETED}
    assert runner.status("memo-2").stages["summarize"].output["lang"] == "fr"
    assert runner.status("draft-4").stages["publish"].state == "skipped"


def test_moderation_flags_then_publishes_only_what_a_moderator_approved(tmp_path):
    """moderation.py: clean posts publish; flagged ones wait; approved publish, rejected never."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    first = run_example("moderation.py", db, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "p1: published: 'Lovely weather for the market today.'" in first.stdout
    assert "p2: awaiting_review" in first.stdout and "p4: awaiting_review" in first.stdout
    assert "2 post(s) await a moderator" in first.stdout

    moderation = import_from(ROOT / "examples", "moderation")
    runner = Runner(moderation.pipeline, open_store(db))
    assert runner.status("p2").stages["moderate"].review.data["labels"] == ["spam"]
    runner.reject("p2", "moderate", reason="spam", reviewer="mod")
    runner.approve("p4", "moderate", data={"text": "I disagree with your code", "labels": []},
                   reviewer="mod", note="toned down")
    second = run_example("moderation.py", db, tmp_path)
    assert "p4: published: 'I disagree with your code'" in second.stdout
    assert "p2: rejected" in second.stdout
    assert runner.status("p2").stages["publish"].state == "pending"


def test_media_catalog_retries_only_the_flaky_lookup_and_exports(tmp_path, monkeypatch):
    """media_catalog.py: the flaky source fails once, the rerun repeats only that lookup."""
    db = f"sqlite:///{tmp_path / 'media.db'}"
    first = run_example("media_catalog.py", db, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("lyrics=failed") == 3
    assert "1 of 3 subtasks failed (lyrics: ConnectionError: lyrics service timed out)" in first.stdout
    second = run_example("media_catalog.py", db, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("lyrics=completed") == 3
    assert "2 track(s) await review" in second.stdout

    media_catalog = import_from(ROOT / "examples", "media_catalog")
    runner = Runner(media_catalog.pipeline, open_store(db))
    for status in runner.items():
        subs = status.stages["enrich"].subtasks
        assert (subs["genre"].attempts, subs["year"].attempts, subs["lyrics"].attempts) == (1, 1, 2)
    approved = runner.approve_all("review", reviewer="test")
    assert len(approved.done) == 2
    monkeypatch.chdir(tmp_path)  # the example works in ./media_demo
    runner.run()
    catalogue = json.loads((tmp_path / "media_demo" / "catalogue.json").read_text())
    assert len(catalogue) == 3
    assert all(entry["lyrics"].startswith("la la la") for entry in catalogue.values())


def test_documents_retries_with_feedback_and_escalates_the_hopeless_one(tmp_path):
    """documents.py: gated extraction retries with feedback; the unreadable invoice escalates."""
    db = f"sqlite:///{tmp_path / 'docs.db'}"
    res = run_example("documents.py", db, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "invoice-003: awaiting_review  extract attempts: #1 rejected, #2 rejected, #3 rejected" in res.stdout
    assert "1 document(s) escalated to a human" in res.stdout

    documents = import_from(ROOT / "examples", "documents")
    runner = Runner(documents.pipeline, open_store(db))
    for item_id in ("invoice-001", "invoice-002", "invoice-004"):
        st = runner.status(item_id)
        assert st.state == ItemState.COMPLETED
        assert st.stages["extract"].attempt_log[-1]["verdict"]["verdict"] == "accepted"
    escalated = runner.status("invoice-003").stages["extract"]
    assert escalated.review.message.startswith("Escalated after 3 attempt(s)")
    runner.reject("invoice-003", "extract", reason="illegible scan", reviewer="ops")
    runner.run()
    assert runner.status("invoice-003").state == ItemState.REJECTED


def test_async_enrich_example_completes_every_record(tmp_path):
    """async_enrich.py: 200 async lookups against a flaky local API all complete."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    done = run_example("async_enrich.py", db, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "completed 200 of 200 records; failed 0" in done.stdout
    example = import_from(ROOT / "examples", "async_enrich")
    runner = Runner(example.pipeline, open_store(db))
    assert runner.status(150).stages["tag"].output == {"big": True}
    assert runner.status(7).stages["lookup"].output == {"n": 7, "square": 49}


def test_releases_routes_on_a_choice_asks_a_form_and_notifies_a_webhook(tmp_path):
    """releases.py: each review request reaches the webhook once; the choice picks the branch;
    the form's answer reaches publish."""
    from .notify_helpers import http_endpoint

    db = f"sqlite:///{tmp_path / 'r.db'}"
    with http_endpoint() as hook:
        env = {**os.environ, "TREADLE_DB": db, "RELEASES_WEBHOOK": hook.url}
        script = [sys.executable, str(ROOT / "examples" / "releases.py")]

        def run() -> str:
            res = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=120)
            assert res.returncode == 0, res.stderr
            return res.stdout

        assert "t1: waits at triage" in run()
        assert sorted(p["id"] for p in hook.wait_for(2)) == ["releases/t1/triage/1",
                                                             "releases/t2/triage/1"]
        releases = import_from(ROOT / "examples", "releases")
        runner = Runner(releases.pipeline, open_store(db))
        runner.approve("t1", "triage", choice="release", reviewer="ana")
        runner.approve("t2", "triage", choice="legal", reviewer="bo")
        out = run()
        assert 't2: legal: {"ticket": "LEGAL-t2"}' in out and "t1: waits at details" in out
        assert [p["id"] for p in hook.wait_for(3)][2:] == ["releases/t1/details/1"]
        runner.approve("t1", "details", data={"isrc": "US-T1", "label": "Treadle Records"})
        out = run()
    assert ('t1: publish: {"published": "Morning Tide", "isrc": "US-T1", '
            '"label": "Treadle Records", "year": 2026}') in out
    assert len(hook.posts) == 3
    assert runner.status("t2").stages["publish"].state == "skipped"
def test_albums_wait_for_their_tracks_and_export_after_the_review(tmp_path):
    """albums.py: one album exports; the other waits for a track review, then exports."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    first = run_example("albums.py", db, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "a1   completed  split: completed" in first.stdout
    assert "a2   running    split: waiting" in first.stdout
    assert "1 track(s) await review, e.g. a2/3" in first.stdout
    target = f"{ROOT / 'examples' / 'albums.py'}:albums"
    env = {**os.environ, "TREADLE_DB": db}
    status = subprocess.run([sys.executable, "-m", "treadle", "status", target, "a2"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "split    waiting" in status.stdout
    assert "a2/3" in status.stdout and "awaiting_review" in status.stdout
    kids = subprocess.run([sys.executable, "-m", "treadle", "items", target, "--parent", "a2",
                           "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert kids.returncode == 0, kids.stderr
    children = {c["item_id"]: (c["pipeline"], c["stage"], c["state"]) for c in json.loads(kids.stdout)}
    assert children["a2/3"] == ("tracks", "split", "awaiting_review")
    assert all(i.startswith("a2/") for i in children)
    reviews = subprocess.run([sys.executable, "-m", "treadle", "reviews", target], env=env,
                             capture_output=True, text=True, timeout=60)
    assert "children awaiting review:" in reviews.stdout
    assert f"python -m treadle review {ROOT / 'examples' / 'albums.py'}:tracks" in reviews.stdout
    approve = subprocess.run([sys.executable, "-m", "treadle", "approve",
                              f"{ROOT / 'examples' / 'albums.py'}:tracks", "a2/3", "review",
                              "--data", json.dumps({"title": "Blue In Green"})],
                             env=env, capture_output=True, text=True, timeout=60)
    assert approve.returncode == 0, approve.stderr
    second = run_example("albums.py", db, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "exported: ['So What', 'Freddie Freeloader', 'Blue In Green']" in second.stdout

    albums = import_from(ROOT / "examples", "albums")
    runner = Runner(albums.albums, open_store(db))
    assert {s.item_id: s.state for s in runner.items()} == {"a1": ItemState.COMPLETED,
                                                            "a2": ItemState.COMPLETED}
