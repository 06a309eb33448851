"""Take the screenshots of docs/web.md: ``python -m tests.web_screenshots docs/img``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from tests.web_browser import chromium, wait_for
from tests.web_helpers import TOKEN, live_server
from tests.web_pipeline import pipeline
from treadle import Runner, open_store
from treadle.web import create_app

TITLES = ["Quarterly report draft", "Onboarding guide", "Release notes 2.4", "Incident review: db failover",
          "Pricing page copy", "API deprecation notice", "Hiring plan", "Security policy update"]


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{tempfile.mkdtemp()}/docs.db"
    runner = Runner(pipeline, open_store(db), workers=4)
    runner.submit(*[{"id": f"doc-{i:03d}", "title": TITLES[i % len(TITLES)],
                     "message": f"Confirm the title and tags of {TITLES[i % len(TITLES)].lower()}"}
                    for i in range(64)])
    runner.run()
    runner.approve("doc-000", "review", data={"title": "Quarterly report (Q3)", "tags": ["finance"]},
                   reviewer="Rita", note="fixed the quarter")
    runner.reject("doc-001", "review", reason="duplicate of doc-009", reviewer="Rita")
    for i in range(2, 9):
        runner.approve(f"doc-{i:03d}", "review", reviewer="Sam")
    runner.run()
    app = create_app(pipeline, runner.store, token=TOKEN)
    with live_server(app) as base, chromium(1280, 820) as b:
        b.get(f"{base}/inbox?token={TOKEN}")
        b.find_element("css selector", "#reviewer-input").send_keys("Rita\n")
        wait_for(b, lambda d: d.find_elements("css selector", "#reviewer-name"))
        for i in (10, 11, 12):
            b.find_element("css selector", f'tr[data-item="doc-{i:03d}"] input.sel').click()
        b.save_screenshot(str(folder / "web-inbox.png"))
        b.get(f"{base}/review?item=doc-014&stage=review")
        b.set_window_size(1280, 1180)
        b.save_screenshot(str(folder / "web-review.png"))
        b.set_window_size(1280, 1700)
        editor = b.find_element("css selector", "#data-editor")
        editor.clear()
        editor.send_keys(json.dumps({"title": "Incident review: database failover", "tags": ["ops", "b"]},
                                    indent=2))
        b.find_element("css selector", "#preview-diff").click()
        wait_for(b, lambda d: d.find_elements("css selector", "#diff-preview table"))
        b.find_element("css selector", "#edit-form").screenshot(str(folder / "web-edit.png"))
        b.find_element("css selector", "#approve-edited").click()
        wait_for(b, lambda d: d.find_element("css selector", "#confirm-approve"))
        b.save_screenshot(str(folder / "web-confirm.png"))
        b.get(f"{base}/item?id=doc-000")
        b.set_window_size(1280, 1500)
        b.save_screenshot(str(folder / "web-item.png"))
        # the overview once a stage is paused and two items are cancelled (stage metrics below)
        runner.pause("publish", reason="waiting for the CMS window", actor="Rita")
        runner.cancel(["doc-062", "doc-063"], reason="withdrawn by the author", actor="Rita")
        b.set_window_size(1280, 1000)
        b.get(f"{base}/")
        wait_for(b, lambda d: d.find_element("css selector", '[data-paused="publish"]'))
        b.save_screenshot(str(folder / "web-overview.png"))
        b.get(f"{base}/items?state=cancelled")
        b.set_window_size(1280, 600)
        b.save_screenshot(str(folder / "web-cancelled.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
