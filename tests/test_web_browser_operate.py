"""The console's cancel and pause buttons and live pages, in a real browser (headless Chromium)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytest.importorskip("starlette", reason="the web console needs the web extra (pip install 'treadle[web]')")

from tests.web_browser import chromium, css, require_chromium, wait_for
from tests.web_helpers import TOKEN, live_server, waiting_store
from tests.web_pipeline import pipeline
from treadle.web import create_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _chromium():
    require_chromium()


def _click(driver, selector):
    """Click an element of the live fragment (htmx may swap it between finding and clicking)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            css(driver, selector).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError(f"{selector} kept changing under the clicker")


def _flash(driver, text):
    wait_for(driver, lambda d: text in d.find_element("css selector", "#flash").text)


def _state(driver, selector):
    """The text of an element htmx may swap while we read it ('' while it is missing)."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(50):
        try:
            found = driver.find_elements("css selector", selector)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.02)
    raise AssertionError(f"{selector} kept changing under the reader")


def test_item_page_follows_a_runner_in_another_process(tmp_path):
    """An open item page shows what a runner in another process commits, within 2 s, without a reload."""
    db = f"sqlite:///{tmp_path / 'store.db'}"
    runner = waiting_store(db, 2)
    runner.approve("d00", "review", reviewer="ann")
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/item?id=d00&token={TOKEN}")
        publish = 'tr[data-stage="publish"] .state'
        assert _state(browser, publish) == "pending"
        browser.execute_script("window.__noReload = true;")
        proc = subprocess.run([sys.executable, "-m", "treadle", "run", "tests/web_pipeline.py:pipeline",
                               "--db", db, "--no-source"], capture_output=True, text=True, timeout=60,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        done = time.monotonic()
        wait_for(browser, lambda d: _state(d, publish) == "completed", timeout=5.0)
        assert time.monotonic() - done < 2.0
        assert browser.execute_script("return window.__noReload === true;")
    assert runner.status("d00").state == "completed"


def test_cancel_buttons(tmp_path):
    """Cancel one item from its page with a reason, then two at once from the items list."""
    runner = waiting_store(f"sqlite:///{tmp_path / 'store.db'}", 4)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/item?id=d00&token={TOKEN}")
        css(browser, "#cancel-reason").send_keys("sent twice")
        css(browser, "#cancel").click()
        _flash(browser, "cancelled 1 item(s): d00")
        assert "cancelled" in css(browser, "h1 .state").text
        assert not browser.find_elements("css selector", "#cancel")

        browser.get(f"{base}/items")
        assert not browser.find_elements("css selector", 'tr[data-item="d00"] input.sel')
        for item in ("d01", "d02"):
            css(browser, f'tr[data-item="{item}"] input.sel').click()
        css(browser, "#cancel-reason").send_keys("out of scope")
        css(browser, "#cancel-selected").click()
        _flash(browser, "cancelled 2 item(s)")
        browser.get(f"{base}/items?state=cancelled")
        rows = [r.get_attribute("data-item") for r in browser.find_elements("css selector", "tr.row")]
        assert sorted(rows) == ["d00", "d01", "d02"]
    states = {s.item_id: s.state for s in runner.items()}
    assert states == {"d00": "cancelled", "d01": "cancelled", "d02": "cancelled", "d03": "awaiting_review"}
    reasons = {h.item_id: h.details["reason"] for i in ("d00", "d01")
               for h in runner.history(i) if h.state == "cancelled" and h.stage is None}
    assert reasons == {"d00": "sent twice", "d01": "out of scope"}


def test_pause_buttons(tmp_path):
    """Pause a stage and the whole pipeline from the overview, see them shown, resume them."""
    runner = waiting_store(f"sqlite:///{tmp_path / 'store.db'}", 2)
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium() as browser:
        browser.get(f"{base}/?token={TOKEN}")
        _click(browser, 'button.pause[data-stage="publish"]')
        _flash(browser, "paused stage 'publish'")
        assert runner.paused() == ["publish"]
        wait_for(browser, lambda d: d.find_element("css selector", '[data-paused="publish"]'))
        _click(browser, "#pause-pipeline")
        _flash(browser, "paused the whole pipeline")
        assert runner.paused() == [None, "publish"]
        wait_for(browser, lambda d: "paused" in _state(d, "#pipeline-paused"))
        # a pause lifted elsewhere shows without a reload
        browser.execute_script("window.__noReload = true;")
        runner.resume("publish", actor="elsewhere")
        wait_for(browser, lambda d: not d.find_elements("css selector", '[data-paused="publish"]'),
                 timeout=5.0)
        assert browser.execute_script("return window.__noReload === true;")
        _click(browser, "#resume-pipeline")
        _flash(browser, "resumed the whole pipeline")
    assert runner.paused() == []
