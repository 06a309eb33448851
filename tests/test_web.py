"""The web console over HTTP: access token, CSRF, read-only, escaping, decisions (store checked after each)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("starlette", reason="the web console needs the web extra (pip install 'treadle[web]')")

from tests.web_helpers import (
    TOKEN,
    client,
    csrf,
    decisions,
    live_server,
    stage_of,
    waiting_store,
)
from tests.web_pipeline import pipeline
from treadle.store.memory import MemoryStore
from treadle.web import create_app

GETS = ["/", "/inbox", "/review?item=d00&stage=review", "/items", "/item?id=d00",
        "/fragments/overview", "/fragments/waiting", "/stream", "/static/console.css", "/static/htmx-2.0.11.min.js", "/nowhere"]
POSTS = ["/review/approve", "/review/reject", "/review/changes", "/review/preview", "/inbox/decide",
         "/reviewer", "/item/retry", "/item/rerun"]


@pytest.fixture
def runner(store_url):
    return waiting_store(store_url, 6)


@pytest.fixture
def app(runner):
    return create_app(pipeline, runner.store, token=TOKEN)


def _form(page: str, **fields):
    return {"csrf": csrf(page), **fields}


def _approve(c, item="d00", **fields):
    page = c.get(f"/review?item={item}&stage=review").text
    return c.post("/review/approve", data=_form(page, item=item, stage="review", attempt="1", **fields))


def test_every_route_needs_the_token(app, runner):
    """Without the token every route answers 401, GET or POST, and nothing changes."""
    c = client(app, login=False)
    for path in GETS:
        assert c.get(path).status_code == 401, path
    for path in POSTS:
        assert c.post(path, data={"item": "d00", "stage": "review", "reviewer": "x"}).status_code == 401, path
    assert c.get("/?token=wrong").status_code == 401
    wrong = client(app, login=False)
    wrong.cookies.set("treadle_token", "wrong")
    assert wrong.get("/").status_code == 401
    assert stage_of(runner, "d00").state == "awaiting_review"


def test_token_once_then_cookie(app):
    """?token= is answered with a cookie and a redirect that drops the token from the URL."""
    c = client(app, login=False)
    r = c.get(f"/inbox?stage=review&token={TOKEN}")
    assert r.status_code == 303 and r.headers["location"] == "/inbox?stage=review"
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/inbox?stage=review").status_code == 200
    assert client(app, login=False).get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_security_headers(app):
    """Every response forbids framing and inline scripts, also the 401."""
    for c in (client(app), client(app, login=False)):
        r = c.get("/inbox")
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "script-src 'self';" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"


def test_serve_warns_off_loopback():
    from treadle.cli.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.4")


def test_post_without_csrf_is_refused(app, runner):
    """A POST with the cookie but without the page's CSRF token is refused (403); the store is unchanged."""
    c = client(app)
    base = {"item": "d00", "stage": "review", "attempt": "1", "reviewer": "ann"}
    for path in POSTS:
        assert c.post(path, data=base).status_code == 403, path
        assert c.post(path, data={**base, "csrf": "0" * 64}).status_code == 403, path
    assert stage_of(runner, "d00").state == "awaiting_review"
    assert decisions(runner) == []


def test_read_only_refuses_every_change(runner):
    """--read-only: pages show everything, offer no decision, and every POST is 403."""
    app = create_app(pipeline, runner.store, token=TOKEN, read_only=True)
    c = client(app)
    page = c.get("/review?item=d00&stage=review")
    assert page.status_code == 200 and "read-only" in page.text and 'id="approve"' not in page.text
    assert 'class="sel"' not in c.get("/inbox").text
    good = csrf(client(create_app(pipeline, runner.store, token=TOKEN)).get("/inbox").text)
    for path in POSTS:
        r = c.post(path, data={"csrf": good, "item": "d00", "stage": "review", "attempt": "1",
                               "reviewer": "ann", "reason": "x", "feedback": "y", "sel": '["d00","review",1]'})
        assert r.status_code == 403, path
    assert stage_of(runner, "d00").state == "awaiting_review" and decisions(runner) == []


def test_item_data_is_escaped(store_url):
    """A <script> in an item, an output or a review message is shown as text on every page."""
    evil = "<script>alert('x')</script>"
    runner = waiting_store(store_url, 2, title=evil, message=evil, text=evil)
    c = client(create_app(pipeline, runner.store, token=TOKEN))
    for path in ["/", "/inbox", "/review?item=d00&stage=review", "/items", "/item?id=d00"]:
        page = c.get(path).text
        assert "<script>alert" not in page, path
    assert "&lt;script&gt;alert" in c.get("/review?item=d00&stage=review").text
    assert "&lt;script&gt;alert" in c.get("/inbox").text


def test_database_password_never_shown(tmp_path):
    """The store URL in the header is masked."""
    store = MemoryStore()
    store.url = "postgresql://ann:s3cret-pw@db.example/prod"
    runner_app = create_app(pipeline, store, token=TOKEN)
    page = client(runner_app).get("/").text
    assert "s3cret-pw" not in page and "postgresql://ann:***@db.example/prod" in page


def test_reviewer_name_asked_once(app, runner):
    """A decision without a name is refused; the name given once is remembered (cookie) and recorded."""
    c = client(app)
    r = _approve(c)
    assert r.status_code == 400 and "your name" in r.text
    assert stage_of(runner, "d00").state == "awaiting_review"
    page = c.get("/inbox").text
    r = c.post("/reviewer", data=_form(page, reviewer="Ann Lee", next="/inbox"))
    assert r.status_code == 303
    assert "reviewing as" in c.get("/inbox").text
    assert _approve(c).status_code == 303
    assert _approve(c, item="d01", reviewer="").status_code == 303
    assert decisions(runner) == [("d00", "approved", "Ann Lee"), ("d01", "approved", "Ann Lee")]


def test_approve_as_is(app, runner):
    """Approve completes the stage with the data as it was, records the reviewer and the note."""
    c = client(app)
    r = _approve(c, reviewer="ann", note="fine")
    assert r.status_code == 303 and r.headers["location"].startswith("/inbox?flash=approved")
    st = stage_of(runner, "d00")
    assert st.state == "completed" and st.output == {"title": "Title d00", "tags": ["a", "b"]}
    assert st.review.reviewer == "ann" and st.review.note == "fine"


def test_approve_with_edit_shows_the_diff_before_saving(app, runner):
    """Edited JSON is validated, its diff shown on a confirm page; only the confirmation saves it."""
    c = client(app)
    edited = json.dumps({"title": "Better", "tags": ["a", "b"]})
    r = _approve(c, reviewer="ann", data=edited)
    assert r.status_code == 200 and 'id="diff"' in r.text and "Better" in r.text and "/title" in r.text
    assert stage_of(runner, "d00").state == "awaiting_review"
    r = c.post("/review/approve", data=_form(r.text, item="d00", stage="review", attempt="1",
                                             reviewer="ann", data=edited, confirm="1"))
    assert r.status_code == 303
    st = stage_of(runner, "d00")
    assert st.state == "completed" and st.output["title"] == "Better"
    [entry] = [h for h in runner.history("d00") if isinstance(h.details, dict) and h.details.get("diff")]
    assert entry.details["diff"] == [{"op": "replace", "path": "/title", "old": "Title d00", "new": "Better"}]
    assert "Better" in c.get("/item?id=d00").text  # the timeline shows the edit's diff


def test_approve_with_unchanged_editor_is_a_plain_approval(app, runner):
    c = client(app)
    r = _approve(c, reviewer="ann", data=json.dumps({"title": "Title d00", "tags": ["a", "b"]}))
    assert r.status_code == 303 and stage_of(runner, "d00").state == "completed"


def test_invalid_json_is_refused(app, runner):
    """Edited data that is not JSON is refused with the parser's message; the text is kept for fixing."""
    c = client(app)
    r = _approve(c, reviewer="ann", data='{"title": "oops",}')
    assert r.status_code == 400 and "not valid JSON" in r.text and "oops" in r.text
    assert stage_of(runner, "d00").state == "awaiting_review"


def test_preview_diff_fragment(app, runner):
    c = client(app)
    page = c.get("/review?item=d00&stage=review").text
    r = c.post("/review/preview", data=_form(page, item="d00", stage="review", data='{"title": "New"}'))
    assert r.status_code == 200 and "/title" in r.text and "/tags" in r.text
    assert stage_of(runner, "d00").state == "awaiting_review"


def test_reject_needs_a_reason_and_records_it(app, runner):
    c = client(app)
    page = c.get("/review?item=d01&stage=review").text
    fields = {"item": "d01", "stage": "review", "attempt": "1", "reviewer": "bo"}
    assert c.post("/review/reject", data=_form(page, **fields, reason="  ")).status_code == 400
    assert stage_of(runner, "d01").state == "awaiting_review"
    assert c.post("/review/reject", data=_form(page, **fields, reason="duplicate")).status_code == 303
    st = stage_of(runner, "d01")
    assert st.state == "rejected" and st.review.note == "duplicate" and st.review.reviewer == "bo"
    assert runner.status("d01").state == "rejected"


def test_request_changes_sends_the_stage_back(app, runner):
    c = client(app)
    page = c.get("/review?item=d02&stage=review").text
    r = c.post("/review/changes", data=_form(page, item="d02", stage="review", attempt="1", reviewer="cy",
                                             feedback="shorter title"))
    assert r.status_code == 303
    assert stage_of(runner, "d02").state == "pending"
    assert [h for h in runner.history("d02") if h.actor == "cy"]


def test_decision_on_a_decided_review_is_refused(app, runner):
    """A second decision on the same review gets a clear 409; the store keeps the first one only."""
    first, second = client(app), client(app)
    page2 = second.get("/review?item=d03&stage=review").text
    assert _approve(first, item="d03", reviewer="ann").status_code == 303
    r = second.post("/review/reject", data=_form(page2, item="d03", stage="review", attempt="1",
                                                 reviewer="bo", reason="dup"))
    assert r.status_code == 409 and "no longer awaiting review" in r.text and "approved by ann" in r.text
    assert decisions(runner) == [("d03", "approved", "ann")]


def test_stale_attempt_is_refused(app, runner):
    """A decision carrying another attempt than the stage's is refused; nothing changes."""
    c = client(app)
    page = c.get("/review?item=d04&stage=review").text
    r = c.post("/review/approve", data=_form(page, item="d04", stage="review", attempt="7", reviewer="ann"))
    assert r.status_code == 409 and "produced again" in r.text
    assert stage_of(runner, "d04").state == "awaiting_review"


def test_bulk_approve_selected(app, runner):
    """Approve selected: exactly the selected reviews, each recorded with the reviewer."""
    c = client(app)
    page = c.get("/inbox").text
    sel = [json.dumps([f"d0{i}", "review", 1]) for i in (1, 3, 5)]
    r = c.post("/inbox/decide", data={"csrf": csrf(page), "sel": sel, "reviewer": "dee", "do": "approve"})
    assert r.status_code == 303 and "approved%203" in r.headers["location"]
    assert sorted(decisions(runner)) == [(f"d0{i}", "approved", "dee") for i in (1, 3, 5)]
    assert stage_of(runner, "d00").state == "awaiting_review"
    # again: the three are refused (already decided), with the reason
    r = c.post("/inbox/decide", data={"csrf": csrf(page), "sel": sel[:1]})
    assert "nothing%20was%20changed" in r.headers["location"]
    r = c.post("/inbox/decide", data={"csrf": csrf(page), "sel": sel[:1], "do": "approve"})
    assert "approved%200" in r.headers["location"] and "no%20longer%20awaiting" in r.headers["location"]


def test_bulk_reject_selected_needs_a_reason(app, runner):
    c = client(app)
    page = c.get("/inbox").text
    sel = [json.dumps([f"d0{i}", "review", 1]) for i in (0, 2)]
    base = {"csrf": csrf(page), "sel": sel, "reviewer": "dee", "do": "reject"}
    r = c.post("/inbox/decide", data=base)
    assert "needs%20a%20reason" in r.headers["location"] and decisions(runner) == []
    r = c.post("/inbox/decide", data={**base, "reason": "off topic"})
    assert "rejected%202" in r.headers["location"]
    assert sorted(decisions(runner)) == [("d00", "rejected", "dee"), ("d02", "rejected", "dee")]
    assert stage_of(runner, "d02").review.note == "off topic"


def test_inbox_filters_oldest_first_and_pages(store_url):
    """Oldest first, 50 a page, filters on stage and message text."""
    runner = waiting_store(store_url, 55)
    c = client(create_app(pipeline, runner.store, token=TOKEN))
    first = c.get("/inbox").text
    assert "55 waiting" in first and first.count('class="row"') == 50
    assert first.index(">d00<") < first.index(">d01<") < first.index(">d49<")
    second = c.get("/inbox?page=1").text
    assert second.count('class="row"') == 5 and ">d54<" in second and ">d00<" not in second
    only = c.get("/inbox?q=OF+D07").text
    assert only.count('class="row"') == 1 and ">d07<" in only and "1 match" in only
    assert c.get("/fragments/waiting").text == "55 waiting"
    assert c.get("/fragments/waiting?stage=publish").text == "0 waiting"
    assert c.get("/inbox?stage=publish").text.count('class="row"') == 0
    assert c.get("/inbox?stage=nope").status_code == 400


def test_items_and_item_page(app, runner):
    """Items filter by stage and state; an item's page shows stages, outputs and the history."""
    c = client(app)
    page = c.get("/items?stage=review&state=awaiting_review").text
    assert page.count('class="row"') == 6
    assert c.get("/items?state=completed").text.count('class="row"') == 6  # fetch, draft done
    assert c.get("/items?state=bogus").status_code == 400
    item = c.get("/item?id=d00").text
    assert "awaiting_review" in item and "Title d00" in item and "History" in item
    assert c.get("/item?id=nope").status_code == 404


def test_retry_and_rerun_buttons(app, runner):
    c = client(app)
    page = c.get("/item?id=d05").text
    r = c.post("/item/rerun", data=_form(page, item="d05", stage="draft"))
    assert r.status_code == 303 and "back%20to%20pending" in r.headers["location"]
    assert runner.status("d05").stages["draft"].state == "pending"
    r = c.post("/item/retry", data=_form(page, item="d05"))
    assert r.status_code == 303


def test_overview_counts(app):
    page = client(app).get("/").text
    assert 'data-stage="review"' in page and "<svg" in page
    assert 'href="/inbox?stage=review">6</a>' in page


@pytest.mark.timeout(30)
def test_stream_emits_when_the_store_changes(runner):
    """The SSE stream sends the counts at once, then again within 2 s of a decision."""
    import httpx

    app = create_app(pipeline, runner.store, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=auth) as http, \
            http.stream("GET", "/stream") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        events = _events(lines, 2)
        assert [e[0] for e in events] == ["changed", "counts"]
        assert ">6</a>" in events[1][1]
        started = time.monotonic()
        runner.approve("d00", "review", reviewer="zed")
        events = _events(lines, 2)
        assert time.monotonic() - started < 2
        assert events[0][0] == "changed" and 'data-state="completed"' in events[1][1]


def _events(lines, n):
    out, event, data = [], None, []
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            out.append((event, "\n".join(data)))
            event, data = None, []
            if len(out) == n:
                return out
    return out


@pytest.mark.timeout(60)
def test_serve_command(tmp_path):
    """`serve` prints a URL with a token, binds 127.0.0.1, answers 401 without the token."""
    import httpx

    db = f"sqlite:///{tmp_path / 's.db'}"
    waiting_store(db, 2)
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "serve", "tests/web_pipeline.py:pipeline",
                             "--db", db, "--port", "0", "--read-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "(read-only)" in lines[0]
        url = lines[1].split("open: ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        base = url.split("/?token=")[0]
        assert httpx.get(base + "/inbox").status_code == 401
        with httpx.Client(follow_redirects=True) as http:
            r = http.get(url)
            assert r.status_code == 200 and "read-only" in r.text
    finally:
        proc.terminate()
        proc.wait(15)


def test_serve_refuses_a_missing_store(tmp_path):
    r = subprocess.run([sys.executable, "-m", "treadle", "serve", "tests/web_pipeline.py:pipeline",
                        "--db", f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2 and "no store at" in r.stderr


@pytest.mark.timeout(30)
def test_streams_share_one_poller(runner, monkeypatch):
    """Ten open streams read the event feed through one reader, and each sees every change."""
    import httpx

    from treadle.web import feed

    reads, snaps = [], []
    real_read, real_snap = feed.wait_and_read, feed.snapshot
    monkeypatch.setattr(feed, "wait_and_read", lambda *a: reads.append(1) or real_read(*a))
    monkeypatch.setattr(feed, "snapshot", lambda *a: snaps.append(1) or real_snap(*a))
    app = create_app(pipeline, runner.store, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=auth) as http:
        streams = [http.stream("GET", "/stream") for _ in range(10)]
        try:
            lines = [s.__enter__().iter_lines() for s in streams]
            for it in lines:
                assert [e[0] for e in _events(it, 2)] == ["changed", "counts"]
            reads.clear()
            snaps.clear()
            time.sleep(1.2)
            # one reader: a wait of at most 0.2 s between reads (polling stores), not ten readers;
            # PostgreSQL wakes on any commit's notification on the server (other tests' too)
            assert len(reads) <= 8 or type(runner.store).__name__ == "PostgresStore"
            assert len(snaps) <= 1  # counts are read again only after events (or every 5 s)
            runner.approve("d00", "review", reviewer="zed")
            for it in lines:
                assert _events(it, 1)[0][0] == "changed"
        finally:
            for s in streams:
                s.__exit__(None, None, None)


def test_escalated_review_shows_attempts_and_takes_one(store_url):
    """An escalated gated stage lists every attempt with its verdict; one can be approved as the output."""
    from tests.web_gated import pipeline as gated
    from treadle import Runner, open_store

    runner = Runner(gated, open_store(store_url))
    runner.submit({"id": "g1"})
    runner.run()
    c = client(create_app(gated, runner.store, token=TOKEN))
    page = c.get("/review?item=g1&stage=extract").text
    assert 'id="attempts"' in page and "attempt 2 is not good enough" in page and "100" in page
    r = c.post("/review/approve", data={"csrf": csrf(page), "item": "g1", "stage": "extract",
                                        "attempt": "2", "take": "1", "reviewer": "ann"})
    assert r.status_code == 303 and "attempt%201" in r.headers["location"]
    st = runner.status("g1").stages["extract"]
    assert st.state == "completed" and st.output == {"total": "100"} and st.review.reviewer == "ann"


def test_failed_item_shows_its_error_and_retries(store_url):
    """A failed stage's error is on the item page; Retry puts it back to pending."""
    from tests.web_gated import pipeline as gated
    from treadle import Runner, open_store

    runner = Runner(gated, open_store(store_url))
    runner.submit({"id": "bad", "fail": True})
    runner.run()
    c = client(create_app(gated, runner.store, token=TOKEN))
    page = c.get("/item?id=bad").text
    assert "cannot read bad" in page and 'id="retry"' in page
    assert c.get("/items?state=failed").text.count('class="row"') == 1
    assert c.get("/items?error=CANNOT+READ").text.count('class="row"') == 1
    assert c.get("/items?error=no+such+error").text.count('class="row"') == 0
    r = c.post("/item/retry", data={"csrf": csrf(page), "item": "bad"})
    assert r.status_code == 303 and "1%20stage" in r.headers["location"]
    assert runner.status("bad").stages["extract"].state == "pending"


def test_mounted_under_a_prefix(runner):
    """create_app mounts in another Starlette app: links, cookie and redirects keep the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    outer = Starlette(routes=[Mount("/treadle", app=create_app(pipeline, runner.store, token=TOKEN))])
    c = TestClient(outer, follow_redirects=False)
    r = c.get(f"/treadle/inbox?token={TOKEN}")
    assert r.headers["location"] == "/treadle/inbox" and "Path=/treadle" in r.headers["set-cookie"]
    page = c.get("/treadle/inbox").text
    assert 'href="/treadle/static/console.css"' in page and 'name="next" value="/inbox"' in page
    r = c.post("/treadle/review/approve", data={"csrf": csrf(page), "item": "d00", "stage": "review",
                                                 "attempt": "1", "reviewer": "x", "next": "/inbox"})
    assert r.headers["location"].startswith("/treadle/inbox?flash=approved")


def test_next_never_leaves_the_app(app):
    c = client(app)
    page = c.get("/inbox").text
    for evil in ("https://evil.example/", "//evil.example/x", "/\\\\evil"):
        r = c.post("/reviewer", data={"csrf": csrf(page), "reviewer": "x", "next": evil})
        assert r.headers["location"].startswith("/inbox?flash="), evil


def test_serve_metrics_port_exposes_the_stores_gauges(tmp_path):
    """`serve --metrics-port 0` also serves Prometheus /metrics: the waiting reviews show."""
    import httpx

    db = f"sqlite:///{tmp_path / 'm.db'}"
    waiting_store(db, 3)
    proc = subprocess.Popen([sys.executable, "-m", "treadle", "serve", "tests/web_pipeline.py:pipeline",
                             "--db", db, "--port", "0", "--metrics-port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        metrics_url = lines[2].split("metrics: ", 1)[1].strip()
        body = httpx.get(metrics_url, timeout=10).text
        waiting = [ln for ln in body.splitlines()
                   if ln.startswith('treadle_reviews_waiting{pipeline="web-docs",stage="review"}')]
        assert waiting == ['treadle_reviews_waiting{pipeline="web-docs",stage="review"} 3.0']
    finally:
        proc.terminate()
        proc.wait(15)


def test_serve_socket_listens_before_the_url_is_printed():
    """`serve` binds and listens before printing the URL: a client connecting at once is queued."""
    import socket

    from treadle.cli.serve import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=2):
            pass  # refused (ECONNREFUSED) if the socket were bound but not listening
    finally:
        sock.close()
