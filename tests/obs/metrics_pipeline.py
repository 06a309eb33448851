"""A pipeline for ``run --metrics-port``: stage ``wait`` holds every item until
the file named by ``$TREADLE_OBS_GO`` exists; ``confirm`` asks for a review.

    python -m treadle run tests/obs/metrics_pipeline.py:pipeline --metrics-port PORT
"""

from __future__ import annotations

import os
import time

from treadle import Pipeline, Review, stage


@stage()
def wait(item):
    go = os.environ["TREADLE_OBS_GO"]
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:
        time.sleep(0.02)
    return {"waited": True}


@stage(after=[wait])
def confirm(item):
    return Review({"id": item["id"]}, message="publish?")


pipeline = Pipeline("metered", [wait, confirm])
