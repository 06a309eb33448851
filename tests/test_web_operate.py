"""The console's live event feed (GET /events), cancel, pause / resume and stage metrics, over HTTP."""

from __future__ import annotations

import json
import time
from urllib.parse import unquote

import pytest

pytest.importorskip("starlette", reason="the web console needs the web extra (pip install 'treadle[web]')")

from tests.web_helpers import TOKEN, client, csrf, live_server, waiting_store
from tests.web_pipeline import pipeline
from treadle import Runner, open_store
from treadle.web import create_app

NEW_GETS = ["/events", "/fragments/metrics"]
NEW_POSTS = ["/item/cancel", "/items/cancel", "/pause", "/resume"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def runner(store_url):
    return waiting_store(store_url, 6)


@pytest.fixture
def app(runner):
    return create_app(pipeline, runner.store, token=TOKEN)


def _post(c, path, page="/", **fields):
    """POST a form with the CSRF token of ``page``; returns (status, flash message)."""
    r = c.post(path, data={"csrf": csrf(c.get(page).text), **fields})
    flash = unquote(r.headers.get("location", "").partition("flash=")[2])
    return r.status_code, flash


def _sse(lines, n, timeout=10.0):
    """The next ``n`` events of an SSE stream as (id, event, data)."""
    out, ident, event, data = [], None, None, []
    deadline = time.monotonic() + timeout
    for line in lines:
        if line.startswith("id: "):
            ident = int(line[4:])
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            out.append((ident, event, "\n".join(data)))
            ident, event, data = None, None, []
            if len(out) == n:
                return out
        assert time.monotonic() < deadline, f"only {len(out)} of {n} events within {timeout} s"
    return out


# -- access ----------------------------------------------------------------------

def test_new_routes_need_the_token_and_csrf(app, runner):
    """The feed, metrics, cancel and pause routes answer 401 without the token, 403 without CSRF."""
    anon, c = client(app, login=False), client(app)
    for path in NEW_GETS:
        assert anon.get(path).status_code == 401, path
    form = {"item": "d00", "stage": "draft", "reason": "x", "sel": "d00"}
    for path in NEW_POSTS:
        assert anon.post(path, data=form).status_code == 401, path
        assert c.post(path, data=form).status_code == 403, path
    assert runner.paused() == [] and runner.status("d00").state == "awaiting_review"


def test_read_only_offers_and_allows_no_steering(runner):
    """--read-only: no cancel or pause buttons, and their POSTs are 403."""
    app = create_app(pipeline, runner.store, token=TOKEN, read_only=True)
    c = client(app)
    assert 'id="cancel"' not in c.get("/item?id=d00").text
    assert "cancel-selected" not in c.get("/items").text
    overview = c.get("/").text
    assert "pause-pipeline" not in overview and 'class="pause"' not in overview
    good = csrf(client(create_app(pipeline, runner.store, token=TOKEN)).get("/").text)
    for path in NEW_POSTS:
        r = c.post(path, data={"csrf": good, "item": "d00", "stage": "draft", "reason": "x", "sel": "d00"})
        assert r.status_code == 403, path
    assert runner.paused() == [] and runner.status("d00").state == "awaiting_review"


# -- the event feed ------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_events_once_in_order_across_runner_and_server_restarts(store_url):
    """An SSE client sees every committed event once, in commit order: across a runner restart,
    and across a server restart when it resumes with Last-Event-ID."""
    import httpx

    store = open_store(store_url)
    first = Runner(pipeline, store)
    first.submit({"id": "a"}, {"id": "b"})
    seen: list[tuple[int, dict]] = []
    app = create_app(pipeline, store, token=TOKEN)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http, \
            http.stream("GET", "/events?since=0") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        seen += [(i, json.loads(d)) for i, _, d in _sse(lines, 2)]  # the two submissions
        first.run()
        want = len(first.events(0))
        seen += [(i, json.loads(d)) for i, _, d in _sse(lines, want - len(seen))]
        # a runner "restarts" (a new Runner on a new connection) and commits more
        second = Runner(pipeline, open_store(store_url) if store_url != "memory://" else store)
        second.approve("a", "review", reviewer="ann")
        second.run()
        want = len(first.events(0))
        seen += [(i, json.loads(d)) for i, _, d in _sse(lines, want - len(seen))]
    # the server stops; meanwhile more commits; a new server, the client resumes where it was
    second.reject("b", "review", reason="no", reviewer="bo")
    app = create_app(pipeline, store, token=TOKEN)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http, \
            http.stream("GET", "/events", headers={"Last-Event-ID": str(seen[-1][0])}) as resp:
        lines = resp.iter_lines()
        want = len(first.events(0, limit=10_000))
        seen += [(i, json.loads(d)) for i, _, d in _sse(lines, want - len(seen))]
    every = first.events(0, limit=10_000)
    assert [i for i, _ in seen] == [e.id for e in every]  # each once, in commit order
    assert all(i == d["id"] for i, d in seen)
    assert any(d["item_id"] == "b" and d["state"] == "rejected" for _, d in seen)


@pytest.mark.timeout(30)
def test_events_start_at_the_newest_and_refuse_a_bad_cursor(runner):
    """Without a cursor the feed starts after the newest event; a bad Last-Event-ID is 400."""
    import httpx

    app = create_app(pipeline, runner.store, token=TOKEN)
    newest = runner.events(0, limit=10_000)[-1].id
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http:
        assert http.get("/events", headers={"Last-Event-ID": "x"}).status_code == 400
        assert http.get("/events?since=-3").status_code == 400
        with http.stream("GET", "/events") as resp:
            lines = resp.iter_lines()
            time.sleep(0.3)
            started = time.monotonic()
            runner.approve("d03", "review", reviewer="zed")
            got = _sse(lines, 1)
            assert time.monotonic() - started < 2
    ident, event, data = got[0]
    assert event == "event" and ident > newest
    assert json.loads(data)["item_id"] == "d03" and json.loads(data)["stage"] == "review"


@pytest.mark.timeout(30)
def test_counts_stream_follows_pauses(runner):
    """A pause made elsewhere shows on the overview's live fragment."""
    import httpx

    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http, \
            http.stream("GET", "/stream") as resp:
        lines = resp.iter_lines()
        first = _sse(lines, 2)
        assert [e[1] for e in first] == ["changed", "counts"] and "data-paused" not in first[1][2]
        runner.pause("publish", actor="elsewhere")
        ident, event, html = _sse(lines, 2)[1]
        assert event == "counts" and 'data-paused="publish"' in html


# -- cancel --------------------------------------------------------------------------

def test_cancel_an_item_with_a_reason(app, runner):
    """The item page's cancel button cancels the item, records the reason; a second cancel is refused."""
    c = client(app)
    c.cookies.set("treadle_reviewer", "Cat")
    page = c.get("/item?id=d00").text
    assert 'id="cancel"' in page
    status, flash = _post(c, "/item/cancel", "/item?id=d00", item="d00", reason="")
    assert status == 303 and "needs a reason" in flash
    assert runner.status("d00").state == "awaiting_review"
    status, flash = _post(c, "/item/cancel", "/item?id=d00", item="d00", reason="duplicate")
    assert status == 303 and "cancelled 1 item(s): d00" in flash
    assert runner.status("d00").state == "cancelled"
    last = runner.history("d00")[-1]
    assert (last.state, last.actor, last.details) == ("cancelled", "web:Cat", {"reason": "duplicate"})
    page = c.get("/item?id=d00").text
    assert 'id="cancel"' not in page and "state-cancelled" in page
    status, flash = _post(c, "/item/cancel", "/items", item="d00", reason="again")
    assert "refused" in flash and "already cancelled" in flash
    status, flash = _post(c, "/item/cancel", "/items", item="nope", reason="x")
    assert "refused" in flash and "nope" in flash


def test_bulk_cancel_from_the_items_list(app, runner):
    """Select items on the list and cancel them at once; a finished one refuses the whole batch."""
    c = client(app)
    page = c.get("/items").text
    assert 'id="cancel-selected"' in page and page.count('class="sel"') == 6
    status, flash = _post(c, "/items/cancel", "/items", sel=["d01", "d02"], reason="batch")
    assert "cancelled 2 item(s)" in flash
    assert {s.item_id for s in runner.items() if s.state == "cancelled"} == {"d01", "d02"}
    status, flash = _post(c, "/items/cancel", "/items", sel=["d03", "d01"], reason="again")
    assert "refused" in flash and "nothing was changed" in flash.lower()
    assert runner.status("d03").state == "awaiting_review"
    status, flash = _post(c, "/items/cancel", "/items", reason="none picked")
    assert "Nothing selected" in flash


def test_cancelled_shows_in_filters_counts_and_colours(app, runner):
    """`cancelled` is a state filter of the items page, a count of the overview, and has its colour."""
    runner.cancel(["d04", "d05"], reason="gone")
    c = client(app)
    items = c.get("/items").text
    assert "<option >cancelled</option>" in items or "<option>cancelled</option>" in items
    only = c.get("/items?state=cancelled").text
    assert only.count('class="row"') == 2 and 'data-item="d04"' in only and 'data-item="d00"' not in only
    assert 'class="state state-cancelled"' in only
    overview = c.get("/").text
    assert '<span class="state-cancelled">2 cancelled</span>' in overview
    assert ".state-cancelled" in c.get("/static/console.css").text


# -- pause and resume ----------------------------------------------------------------

def test_pause_and_resume_a_stage_and_the_pipeline(app, runner):
    """Pause / resume per stage and for the whole pipeline; shown on the overview; stale ones refused."""
    c = client(app)
    assert 'class="pause" data-stage="draft"' in c.get("/").text
    status, flash = _post(c, "/pause", stage="draft")
    assert status == 303 and "paused stage 'draft'" in flash and runner.paused() == ["draft"]
    page = c.get("/").text
    assert 'data-paused="draft"' in page and 'class="resume" data-stage="draft"' in page
    status, flash = _post(c, "/pause", stage="draft")
    assert "paused already; nothing was changed" in flash and runner.paused() == ["draft"]
    status, flash = _post(c, "/pause", stage="")
    assert "paused the whole pipeline" in flash and runner.paused() == [None, "draft"]
    assert 'id="pipeline-paused"' in c.get("/").text
    status, flash = _post(c, "/resume", stage="draft")
    assert "resumed stage 'draft'" in flash and runner.paused() == [None]
    status, flash = _post(c, "/resume", stage="draft")
    assert "was not paused" in flash
    status, flash = _post(c, "/resume", stage="")
    assert "resumed the whole pipeline" in flash and runner.paused() == []
    status, flash = _post(c, "/pause", stage="drat")
    assert "refused" in flash and "draft" in flash and runner.paused() == []
    events = [e for e in runner.events(0, limit=10_000) if e.state in ("paused", "resumed")]
    assert {e.actor for e in events} == {"web:web"}


# -- stage metrics -------------------------------------------------------------------

def test_overview_shows_stage_metrics(app, runner):
    """The overview's metrics table has each stage's done count, durations and waiting reviews."""
    c = client(app)
    page = c.get("/").text
    assert 'id="metrics-table"' in page and 'hx-get="/fragments/metrics"' in page
    frag = c.get("/fragments/metrics").text
    metrics = runner.stage_metrics()
    assert f'<td data-metric="done">{metrics["draft"].done}</td>' in frag
    assert '<td data-metric="done">6</td>' in frag
    assert 'href="/inbox?stage=review">6</a>' in frag
    assert "ms" in frag or " s<" in frag  # p50 / p95 shown as durations


def test_metric_formatting():
    from treadle.web.operate import percent, seconds

    assert [seconds(None), seconds(0.0123), seconds(4.25), seconds(90), seconds(7200)] == \
        ["-", "12 ms", "4.2 s", "1.5 min", "2.0 h"]
    assert [percent(None), percent(0.125)] == ["-", "12 %"]


@pytest.mark.timeout(30)
def test_events_of_one_item(runner):
    """?item= keeps one item's events; the stream's id still advances past the others."""
    import httpx

    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http, \
            http.stream("GET", "/events?since=0&item=d02") as resp:
        got = _sse(resp.iter_lines(), len(runner.events(0, limit=10_000, item_id="d02")))
    assert [i for i, _, _ in got] == [e.id for e in runner.events(0, limit=10_000, item_id="d02")]
    assert {json.loads(d)["item_id"] for _, _, d in got} == {"d02"}


@pytest.mark.timeout(60)
def test_clients_leaving_never_stall_the_others(runner):
    """Streams closed by their clients while they wait leave the feed working for the others."""
    import httpx

    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, httpx.Client(base_url=base, timeout=10, headers=AUTH) as http, \
            http.stream("GET", "/stream") as stay:
        lines = stay.iter_lines()
        assert [e[1] for e in _sse(lines, 2)] == ["changed", "counts"]
        for _ in range(3):
            leaving = [httpx.Client(base_url=base, timeout=10, headers=AUTH) for _ in range(10)]
            streams = [c.stream("GET", "/stream") for c in leaving]
            for s in streams:
                _sse(s.__enter__().iter_lines(), 2)
            time.sleep(0.3)  # every stream is waiting for the next change now
            for s, c in zip(streams, leaving):
                s.__exit__(None, None, None)
                c.close()
            time.sleep(0.3)
        started = time.monotonic()
        runner.approve("d05", "review", reviewer="zed")
        assert [e[1] for e in _sse(lines, 2)] == ["changed", "counts"]
        assert time.monotonic() - started < 2
