"""A pipeline whose rollbacks are slow and logged (for the SIGKILL-mid-rollback test)."""

import os
import sys
import time

from treadle import Pipeline, Runner, open_store, stage

LOG = os.environ.get("ROLLBACK_LOG", "rollback.log")


def undo(name):
    def rollback(item):
        with open(LOG, "a") as fh:
            fh.write(f"{name}\n")
            fh.flush()
            os.fsync(fh.fileno())
        time.sleep(0.4)
    return rollback


@stage(rollback=undo("s1"))
def s1(item):
    return 1


@stage(after=[s1], rollback=undo("s2"))
def s2(item):
    return 2


@stage(after=[s2], rollback=undo("s3"))
def s3(item):
    return 3


@stage(after=[s3])
def boom(item):
    raise RuntimeError("final stage broke")


pipeline = Pipeline("slowrb", [s1, s2, s3, boom], on_failure="rollback")

if __name__ == "__main__":
    runner = Runner(pipeline, open_store(sys.argv[1]), workers=2)
    runner.submit({"id": "only"})
    runner.run()
