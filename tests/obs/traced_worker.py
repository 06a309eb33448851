"""A traced runner process: ``python tests/obs/traced_worker.py DB SPANS [--approve ITEM]``.

Pipeline ``traced``: ``prepare -> slow -> check (review) -> publish``, items
``t1`` and ``t2``. ``slow`` creates ``SPANS.inside`` and then hangs, unless
``SPANS.killed`` exists (the test creates it after killing the first
process). Every finished span goes to the JSON-lines file SPANS as it ends.
``--approve ITEM`` approves ITEM's review before running.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.obs.spans import file_provider
from treadle import Pipeline, Review, Runner, open_store, stage
from treadle.contrib import otel


def build(spans: str) -> Pipeline:
    @stage()
    def prepare(item):
        return {"n": len(item["id"])}

    @stage(after=[prepare])
    def slow(item):
        if not os.path.exists(spans + ".killed"):
            open(spans + ".inside", "w").close()
            time.sleep(120)
        return {"slow": True}

    @stage(after=[slow])
    def check(item):
        return Review({"ok": True}, message="all good?")

    @stage(after=[check])
    def publish(item):
        return "published"

    return Pipeline("traced", [prepare, slow, check, publish])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("spans")
    ap.add_argument("--approve")
    args = ap.parse_args()
    provider = file_provider(args.spans)
    runner = Runner(build(args.spans), open_store(f"sqlite:///{args.db}"), workers=2)
    tracing = otel.instrument(provider, runner)
    runner.submit({"id": "t1"}, {"id": "t2"})
    if args.approve:
        runner.approve(args.approve, "check")
    runner.run()
    tracing.close()
    provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
