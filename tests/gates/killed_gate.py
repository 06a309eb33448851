"""A gated stage whose first judgement is slow (for the SIGKILL-before-verdict test)."""

import os
import sys
import time

from treadle import Pipeline, Rejected, Runner, open_store, stage

LOG = os.environ.get("GATE_LOG", "gate.log")


def check(item, output, ctx):
    first = not os.path.exists(LOG)
    with open(LOG, "a") as fh:
        fh.write(f"{ctx.attempt}\n")
        fh.flush()
        os.fsync(fh.fileno())
    if first:
        time.sleep(30)  # killed here: the attempt ran, its verdict is never stored
    return Rejected(f"attempt {ctx.attempt} is not good enough")


@stage(retry=2, gate=check, on_exhausted="escalate")
def extract(item, ctx):
    return {"attempt": ctx.attempt}


pipeline = Pipeline("killed_gate", [extract])

if __name__ == "__main__":
    runner = Runner(pipeline, open_store(sys.argv[1]))
    runner.submit({"id": "doc"})
    runner.run()
