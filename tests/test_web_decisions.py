"""The web console offers choices, renders a form, and filters the inbox by assignee (over HTTP)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette", reason="the web console needs the web extra (pip install 'treadle[web]')")

from tests.decisions_pipeline import pipeline
from tests.web_helpers import TOKEN, client, csrf
from treadle import Runner, StageState, open_store
from treadle.web import create_app

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runner(store_url):
    runner = Runner(pipeline, open_store(store_url))
    runner.submit({"id": "p1", "text": "hi"}, {"id": "p2", "text": "yo"})
    runner.run()
    return runner


@pytest.fixture
def c(runner):
    return client(create_app(pipeline, runner.store, token=TOKEN))


def _post(c, page_url, path, **fields):
    page = c.get(page_url).text
    return c.post(path, data={"csrf": csrf(page), **fields})


def test_the_review_page_offers_the_options_and_approves_a_choice(c, runner):
    """Radio buttons for the options; the chosen one is the decision; assignees are enforced."""
    url = "/review?item=p1&stage=moderate"
    page = c.get(url).text
    assert 'type="radio" name="choice" value="publish"' in page
    assert "assigned to ana" in page
    r = _post(c, url, "/review/approve", item="p1", stage="moderate", attempt="1",
              reviewer="zed", choice="publish")
    assert r.status_code == 409 and "may only be decided by ana" in r.text
    assert runner.status("p1").stages["moderate"].state == StageState.AWAITING_REVIEW
    r = _post(c, url, "/review/approve", item="p1", stage="moderate", attempt="1",
              reviewer="ana", choice="nope")
    assert r.status_code == 400 and "choose from &#39;publish&#39;, &#39;archive&#39;" in r.text
    r = _post(c, url, "/review/approve", item="p1", stage="moderate", attempt="1",
              reviewer="ana", choice="publish")
    assert r.status_code == 303 and "choosing%20publish" in r.headers["location"]
    assert runner.status("p1").stages["moderate"].output == {"choice": "publish",
                                                             "data": {"text": "hi"}}


def test_the_review_page_renders_the_form_and_validates_the_answer(c, runner):
    """One input per field, pre-filled; a wrong type is refused naming the field; a right one flows on."""
    runner.approve("p1", "moderate", choice="publish", reviewer="ana")
    runner.run()
    url = "/review?item=p1&stage=tag"
    page = c.get(url).text
    assert 'name="field:isrc"' in page and 'name="field:label"' in page
    assert 'value="Acme"' in page and 'value="2000"' in page
    fields = {"item": "p1", "stage": "tag", "attempt": "1", "reviewer": "bo", "answer": "1",
              "field:isrc": "US-9", "field:label": "Acme"}
    r = _post(c, url, "/review/approve", **{**fields, "field:year": "soon"})
    assert r.status_code == 400 and "form field &#39;year&#39; must be a int" in r.text
    assert runner.status("p1").stages["tag"].state == StageState.AWAITING_REVIEW
    r = _post(c, url, "/review/approve", **{**fields, "field:year": "1999"})
    assert r.status_code == 303
    runner.run()
    assert runner.status("p1").stages["release"].output == {"isrc": "US-9", "year": 1999}


def test_the_inbox_shows_what_is_asked_and_filters_mine(c, runner):
    """Columns for what a review asks and who may decide; 'only mine' keeps the reviewer's."""
    page = c.get("/inbox").text
    assert "choose publish / archive" in page and ">ana<" in page
    _post(c, "/inbox", "/reviewer", reviewer="zed", next="/inbox")
    assert "p1" not in c.get("/inbox?mine=1").text
    _post(c, "/inbox", "/reviewer", reviewer="ana", next="/inbox")
    mine = c.get("/inbox?mine=1").text
    assert "p1" in mine and "p2" in mine


def test_an_edit_with_a_choice_keeps_the_choice_through_the_confirmation(c, runner):
    """Approve with edits shows the diff first; the confirmation carries the choice."""
    url = "/review?item=p2&stage=moderate"
    r = _post(c, url, "/review/approve", item="p2", stage="moderate", attempt="1",
              reviewer="ana", choice="archive", data='{"text": "YO"}')
    assert r.status_code == 200 and 'name="choice" value="archive"' in r.text
    page = r.text
    r = c.post("/review/approve", data={"csrf": csrf(page), "item": "p2", "stage": "moderate",
                                        "attempt": "1", "reviewer": "ana", "confirm": "1",
                                        "choice": "archive", "data": '{"text": "YO"}'})
    assert r.status_code == 303
    assert runner.status("p2").stages["moderate"].output == {"choice": "archive",
                                                             "data": {"text": "YO"}}
