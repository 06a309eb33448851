"""retry() racing cancel() on PostgreSQL un-cancels the item and lets a stage run.

Pipeline: a -> (b, c). b fails for good, c is slow: the item is `running`, so
cancellable. A retry of the item reads the item state (not cancelled), then
blocks updating b's row (a third session holds that row lock to widen the
window deterministically; in real life any scheduling delay does). Meanwhile
cancel() commits. The retry then goes on: b back to pending+ready, and the item
row overwritten to `pending`. A runner then claims and completes b of the
cancelled item.

Usage: TREADLE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python attack/pg_retry_cancel_race.py
"""

import os
import sys
import threading
import time
import uuid

import psycopg2

from treadle import Pipeline, Runner, open_store, stage

BASE = os.environ.get("TREADLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "atk_" + uuid.uuid4().hex[:8]
URL = f"{BASE}?schema={SCHEMA}"
FAIL = {"on": True}


@stage()
def a(item):
    return 1


@stage(after=[a])
def b(item):
    if FAIL["on"]:
        raise RuntimeError("b broke")
    return "b ran"


@stage(after=[a])
def c(item, ctx):
    ctx.cancelled.wait(3)
    return "c"


pipe = Pipeline("race", [a, b, c])
store = open_store(URL)
r = Runner(pipe, store, workers=4)
r.submit({"id": "x"})
t = threading.Thread(target=r.run)  # c runs ~3 s; b fails meanwhile
t.start()
for _ in range(100):
    if r.status("x").stages["b"].state == "failed":
        break
    time.sleep(0.05)
FAIL["on"] = False  # a retry would now succeed
print("before:", r.status("x").state, {k: v.state for k, v in r.status("x").stages.items()})

# hold b's row lock from another session
blk = psycopg2.connect(BASE, options=f"-c search_path={SCHEMA}")
bc = blk.cursor()
bc.execute("BEGIN")
bc.execute("SELECT 1 FROM treadle_stage WHERE item_id='x' AND stage='b' FOR UPDATE")

err = []


def do_retry():
    try:
        Runner(pipe, open_store(URL)).retry("x")
    except Exception as e:  # expected: refused because cancelled
        err.append(e)


rt = threading.Thread(target=do_retry)
rt.start()
time.sleep(0.5)  # retry has read the item state and waits on b's row
ct = threading.Thread(
    target=lambda: print("cancel ->", Runner(pipe, open_store(URL)).cancel(["x"], reason="stop"))
)
ct.start()
time.sleep(1.0)  # unfixed: cancel has committed; fixed: it waits for the retry's item lock
bc.execute("ROLLBACK")
blk.close()
ct.join()
rt.join()
t.join()
print("retry error:", err)
Runner(pipe, open_store(URL)).run()
st = Runner(pipe, open_store(URL)).status("x")
print("after:", st.state, {k: v.state for k, v in st.stages.items()})
for h in Runner(pipe, open_store(URL)).history("x"):
    print("  ", h.stage, h.state, h.actor)
bad = st.state != "cancelled" or st.stages["b"].state == "completed"
print("BUG: cancelled item un-cancelled / stage completed after cancel" if bad else "ok")
sys.exit(1 if bad else 0)
