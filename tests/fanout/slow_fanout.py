"""A fan-out of 50 slow subtasks that log each execution (for the SIGKILL test)."""

import os
import sys
import time

from treadle import FanOut, Pipeline, Runner, SubTask, open_store, stage

LOG = os.environ.get("FANOUT_LOG", "fanout.log")


def work(name: str) -> str:
    time.sleep(0.05)
    with open(LOG, "a") as fh:
        fh.write(f"{name}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return name.upper()


@stage()
def spread(item):
    return FanOut([SubTask(f"s{i:02d}", work, f"s{i:02d}") for i in range(50)])


@stage(after=[spread])
def gather(item, ctx):
    return len(ctx.outputs["spread"])


pipeline = Pipeline("slowfan", [spread, gather])

if __name__ == "__main__":
    runner = Runner(pipeline, open_store(sys.argv[1]), workers=4)
    runner.submit({"id": "only"})
    runner.run()
