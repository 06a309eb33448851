"""The web console in a real browser (headless Chromium): review at volume, live overview, races."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("starlette", reason="the web console needs the web extra (pip install 'treadle[web]')")

from tests.web_browser import chromium, css, require_chromium, wait_for
from tests.web_helpers import TOKEN, decisions, live_server, stage_of, waiting_store
from tests.web_pipeline import pipeline
from treadle.web import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _chromium():
    require_chromium()


def _text(driver, selector):
    """The text of a live element (htmx may swap it between finding and reading)."""
    return wait_for(driver, lambda d: css(d, selector).text)


def _cell(driver, stage, state):
    """The count shown for (stage, state); the live fragment may be swapped while we read."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            cells = driver.find_elements(
                "css selector", f'#counts-table tr[data-stage="{stage}"] td[data-state="{state}"]')
            return cells[0].text if cells else "0"
        except StaleElementReferenceException:  # swapped by htmx between find and read
            time.sleep(0.02)
    raise AssertionError(f"the count of {stage}/{state} kept changing under the reader")


def test_review_fifty_then_live_overview(tmp_path):
    """Inbox of 50: approve one with an edit (diff shown), reject one, bulk-approve 10; the store has
    exactly those decisions with the reviewer's name; a runner in another process moves them on and
    the overview's counts change without a reload within 2 s."""
    db = f"sqlite:///{tmp_path / 'store.db'}"
    runner = waiting_store(db, 50)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/inbox?token={TOKEN}")
        assert len(browser.find_elements("css selector", "table.inbox tr.row")) == 50
        css(browser, "#reviewer-input").send_keys("Rita Reviewer\n")
        wait_for(browser, lambda d: d.find_elements("css selector", "#reviewer-name"))

        # approve d00 with an edit: the diff is shown before saving
        css(browser, 'tr[data-item="d00"] a.open').click()
        editor = wait_for(browser, lambda d: d.find_element("css selector", "#data-editor"))
        editor.clear()
        editor.send_keys(json.dumps({"title": "Edited in the browser", "tags": ["a", "b"]}))
        css(browser, "#preview-diff").click()
        wait_for(browser, lambda d: "/title" in d.find_element("css selector", "#diff-preview").text)
        css(browser, "#approve-edited").click()
        wait_for(browser, lambda d: d.find_element("css selector", "#confirm-form"))
        diff = css(browser, "#diff")
        assert "/title" in diff.text and "Edited in the browser" in diff.text
        assert stage_of(runner, "d00").state == "awaiting_review"  # not saved before confirming
        css(browser, "#confirm-approve").click()
        wait_for(browser, lambda d: "approved d00" in d.find_element("css selector", "#flash").text)

        # reject d01 with a reason
        css(browser, 'tr[data-item="d01"] a.open').click()
        wait_for(browser, lambda d: d.find_element("css selector", "#reject-reason")).send_keys("duplicate of d00")
        css(browser, "#reject").click()
        wait_for(browser, lambda d: "rejected d01" in d.find_element("css selector", "#flash").text)

        # bulk-approve ten selected
        assert len(browser.find_elements("css selector", "table.inbox tr.row")) == 48
        for i in range(2, 12):
            css(browser, f'tr[data-item="d{i:02d}"] input.sel').click()
        css(browser, "#approve-selected").click()
        wait_for(browser, lambda d: "approved 10" in d.find_element("css selector", "#flash").text)
        assert len(browser.find_elements("css selector", "table.inbox tr.row")) == 38

        got = sorted(decisions(runner))
        assert got == sorted([("d00", "approved", "Rita Reviewer"), ("d01", "rejected", "Rita Reviewer")]
                             + [(f"d{i:02d}", "approved", "Rita Reviewer") for i in range(2, 12)])
        assert "38 waiting" in _text(browser, "#waiting-now")
        assert stage_of(runner, "d00").output["title"] == "Edited in the browser"
        assert stage_of(runner, "d01").review.note == "duplicate of d00"

        # the inbox's count is live
        runner.approve("d12", "review", reviewer="someone else")
        wait_for(browser, lambda d: d.find_element("css selector", "#waiting-now").text == "37 waiting",
                 timeout=5.0)

        # the overview follows a runner in another process, without a reload
        browser.get(f"{base}/")
        wait_for(browser, lambda d: _cell(d, "review", "awaiting_review") == "37")
        browser.execute_script("window.__noReload = true;")
        assert _cell(browser, "publish", "completed") == "0"
        proc = subprocess.run([sys.executable, "-m", "treadle", "run", "tests/web_pipeline.py:pipeline",
                               "--db", db, "--no-source"], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        done = time.monotonic()
        # typically well under a second (the feed polls every 0.5 s); the bound leaves room
        # for a loaded CI machine
        wait_for(browser, lambda d: _cell(d, "publish", "completed") == "12", timeout=5.0)
        assert time.monotonic() - done < 5.0
        assert browser.execute_script("return window.__noReload === true;")
        assert _cell(browser, "review", "rejected") == "1"


def test_two_sessions_decide_the_same_review(tmp_path):
    """Two browsers open the same review; the second decision is refused clearly; one is stored."""
    runner = waiting_store(f"sqlite:///{tmp_path / 'store.db'}", 3)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as ann, chromium() as bo:
        for browser, name in ((ann, "Ann"), (bo, "Bo")):
            browser.get(f"{base}/inbox?token={TOKEN}")
            css(browser, "#reviewer-input").send_keys(f"{name}\n")
            wait_for(browser, lambda d: d.find_elements("css selector", "#reviewer-name"))
            browser.get(f"{base}/review?item=d01&stage=review")
        css(ann, "#approve").click()
        wait_for(ann, lambda d: "approved d01" in d.find_element("css selector", "#flash").text)
        css(bo, "#reject-reason").send_keys("not good")
        css(bo, "#reject").click()
        error = wait_for(bo, lambda d: d.find_element("css selector", "#error"))
        assert "no longer awaiting review" in error.text and "approved by Ann" in error.text
    assert decisions(runner) == [("d01", "approved", "Ann")]
    assert stage_of(runner, "d01").state == "completed"


def test_keyboard_shortcuts(tmp_path):
    """j/k move, x selects, Enter opens; on a review page `a` approves."""
    from selenium.webdriver.common.keys import Keys

    runner = waiting_store(f"sqlite:///{tmp_path / 'store.db'}", 5)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/inbox?token={TOKEN}")
        css(browser, "#reviewer-input").send_keys("Kim\n")
        wait_for(browser, lambda d: d.find_elements("css selector", "#reviewer-name"))
        body = css(browser, "body")
        body.send_keys("j", "x", "j", "j", "x", "k")  # select d00 and d02; cursor back on d01
        assert [b.get_attribute("value") for b in browser.find_elements("css selector", "input.sel:checked")] \
            == [json.dumps(["d00", "review", 1]), json.dumps(["d02", "review", 1])]
        assert css(browser, "tr.row.cursor").get_attribute("data-item") == "d01"
        css(browser, "#approve-selected").click()
        wait_for(browser, lambda d: "approved 2" in d.find_element("css selector", "#flash").text)
        css(browser, 'tr[data-item="d04"] input.sel').click()
        css(browser, "#bulk-reason").send_keys("off topic\n")  # Enter in the reason rejects
        wait_for(browser, lambda d: "rejected 1" in d.find_element("css selector", "#flash").text)
        css(browser, "body").send_keys("j", Keys.ENTER)  # the first row is now d01
        wait_for(browser, lambda d: "d01" in d.find_element("css selector", "h1").text)
        css(browser, "body").send_keys("a")
        wait_for(browser, lambda d: "approved d01" in d.find_element("css selector", "#flash").text)
    assert sorted(decisions(runner)) == [("d00", "approved", "Kim"), ("d01", "approved", "Kim"),
                                         ("d02", "approved", "Kim"), ("d04", "rejected", "Kim")]


def test_item_page_follows_the_store(tmp_path):
    """An open item page shows a decision taken elsewhere within 2 s, without a reload."""
    runner = waiting_store(f"sqlite:///{tmp_path / 'store.db'}", 2)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/item?id=d00&token={TOKEN}")
        state = 'tr[data-stage="review"] .state'
        assert _text(browser, state) == "awaiting_review"
        browser.execute_script("window.__noReload = true;")
        runner.approve("d00", "review", reviewer="elsewhere")
        wait_for(browser, lambda d: d.find_element("css selector", state).text == "completed", timeout=5.0)
        assert "approved by elsewhere" in _text(browser, "#item-live")
        assert browser.execute_script("return window.__noReload === true;")
