"""Pipelines for the flow-control tests; ``python flow_pipeline.py URL MODE LOG [WORKERS]``
runs one runner process over them (the tests start several).

Each stage run writes ``start PID ITEM TIME`` when it begins and ``end PID ITEM TIME``
when it ends to LOG (one small append each, atomic), so a test counts what the
stages themselves saw across processes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from treadle import Pipeline, Runner, open_store, stage

LOG = os.environ.get("FLOW_LOG", "")


def note(what: str, item: Any) -> None:
    if LOG:
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{what} {os.getpid()} {item['id']} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)


@stage(rate="5/s")
def call(item: Any) -> None:
    note("start", item)
    note("end", item)


rated = Pipeline("rated", [call])


@stage(concurrency=3, scope="global")
def slow(item: Any) -> None:
    note("start", item)
    time.sleep(0.15)
    note("end", item)


limited = Pipeline("limited", [slow])
PIPELINES = {"rated": rated, "limited": limited}


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    report = Runner(PIPELINES[mode], open_store(url), workers=workers, lease=60.0).run()
    print(report.completed, flush=True)


if __name__ == "__main__":
    main()
