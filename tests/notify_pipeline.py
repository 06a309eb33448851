"""A review stage that notifies a webhook (URL from $NOTIFY_URL), for subprocess tests."""

from __future__ import annotations

import os

from treadle import Pipeline, Review, stage
from treadle.contrib.notify import webhook


@stage(notify=webhook(os.environ.get("NOTIFY_URL", "http://127.0.0.1:9/"), attempts=2, wait=0.05))
def check(item):
    return Review(item, message="Check it")


pipeline = Pipeline("notified", [check])
