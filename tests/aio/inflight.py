"""An async pipeline for the SIGKILL test: ``python tests/aio/inflight.py DB``.

Stage ``wait`` logs ``start <item>`` when its coroutine starts and
``done <item>`` when it finishes (after 2 s of simulated I/O, so many
coroutines are in flight when the test kills the process); stage ``after``
logs ``after <item>``. The log is $TREADLE_AIO_LOG.
"""

from __future__ import annotations

import asyncio
import os
import sys

from treadle import Pipeline, Runner, open_store, stage

LOG = os.environ.get("TREADLE_AIO_LOG", "aio.log")


def log(line: str) -> None:
    with open(LOG, "a") as f:
        f.write(line + "\n")


@stage()
async def wait(item):
    log(f"start {item['id']}")
    await asyncio.sleep(float(os.environ.get("TREADLE_AIO_SLEEP", "2")))
    log(f"done {item['id']}")
    return item["id"]


@stage(after=[wait])
def after(item, ctx):
    log(f"after {item['id']}")
    return ctx.outputs["wait"]


pipeline = Pipeline("aio_inflight", [wait, after])

if __name__ == "__main__":
    runner = Runner(pipeline, open_store(f"sqlite:///{sys.argv[1]}"), workers=2)
    runner.submit(*({"id": i} for i in range(int(os.environ.get("TREADLE_AIO_ITEMS", "500")))))
    runner.run()
