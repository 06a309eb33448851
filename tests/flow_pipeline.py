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

from treadle import FanOut, Pipeline, Runner, open_store, stage

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


def _busy(item: Any) -> None:
    note("start", item)
    time.sleep(0.1)
    note("end", item)


@stage(limits={"api": 1})
def first(item: Any) -> None:
    _busy({"id": f"{item['id']}:first"})


@stage(after=[first], limits=["api"])
def second(item: Any) -> None:
    _busy({"id": f"{item['id']}:second"})


shared = Pipeline("shared", [first, second], limits={"api": 3})


def _lookup(item_id: str, key: str) -> str:
    note("start", {"id": f"{item_id}:{key}"})
    note("end", {"id": f"{item_id}:{key}"})
    return key


@stage()
def enrich(item: Any) -> FanOut:
    time.sleep(0.05)  # the runners share the fan-outs (and so the key's bucket)
    # the "musicbrainz:..." subtask's key is "musicbrainz"; "local" has no rate
    return FanOut({"musicbrainz:recording": lambda: _lookup(item["id"], "mb"),
                   "local": lambda: item["id"]}, rate={"musicbrainz": "5/s"})


keyed = Pipeline("keyed", [enrich])
PIPELINES = {"rated": rated, "limited": limited, "shared": shared, "keyed": keyed}


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    report = Runner(PIPELINES[mode], open_store(url), workers=workers, lease=60.0).run()
    print(report.completed, flush=True)


if __name__ == "__main__":
    main()
