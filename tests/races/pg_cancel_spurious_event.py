"""cancel() racing a result commit on PostgreSQL records a `cancelled` event for a stage
that actually completed (the history/event feed says its result was discarded).

cancel() reads the item's stage rows (a: running), then its UPDATE waits for the
row lock of the runner committing a's result; when that commit lands, the UPDATE
skips a (no longer running) but the history row "a cancelled" built from the
stale read is still written. To make the interleaving deterministic a third
session holds the pipeline's feed lock (the runner's commit waits there, holding
a's row lock); in production the feed lock is taken by every committing runner.

Usage: python attack/pg_cancel_spurious_event.py
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
go = threading.Event()


@stage()
def a(item):
    go.wait(10)
    return 1


@stage(after=[a])
def b(item):
    return 2


pipe = Pipeline("spur", [a, b])
r = Runner(pipe, open_store(URL))
r.submit({"id": "x"})
t = threading.Thread(target=r.run)
t.start()
while r.status("x").stages["a"].state != "running":
    time.sleep(0.02)
blk = psycopg2.connect(BASE)
blk.autocommit = True
bc = blk.cursor()
bc.execute("SELECT pg_advisory_lock(74656164, hashtext('spur'))")  # PostgresStore.FEED_LOCK
go.set()
time.sleep(0.5)  # runner: a's row updated + locked, waiting for the feed lock
ct = threading.Thread(target=lambda: print("cancel ->", Runner(pipe, open_store(URL)).cancel("x")))
ct.start()
time.sleep(0.5)  # cancel read a as running; its UPDATE waits on a's row
bc.execute("SELECT pg_advisory_unlock(74656164, hashtext('spur'))")
ct.join()
t.join()
st = Runner(pipe, open_store(URL)).status("x")
evs = Runner(pipe, open_store(URL)).events(0, 1000, item_id="x")
for e in evs:
    print(e.id, e.stage, e.state, e.actor)
spurious = any(e.stage == "a" and e.state == "cancelled" for e in evs) and st.stages["a"].state == "completed"
print("final:", st.state.value, {k: v.state.value for k, v in st.stages.items()})
print("BUG: 'a cancelled' recorded but a completed" if spurious else "ok")
sys.exit(1 if spurious else 0)
