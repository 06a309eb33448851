"""cancel() racing runners' result commits on PostgreSQL: deadlocks surface to the caller.

A result commit locks the stage rows it applies, then the item rows (to record
item states); cancel() locks the item rows, then updates the stage rows. Both
orders at once -> PostgreSQL aborts one transaction with DeadlockDetected. A
runner retries it (as a "lost connection"), but Runner.cancel() / `treadle
cancel` raise it raw (a psycopg2 error, not a TreadleError: the CLI prints a traceback / exit 1?).

Usage: python attack/pg_cancel_deadlock.py [URL]
"""

import collections
import os
import random
import sys
import threading
import time
import uuid

from treadle import Pipeline, Runner, TreadleError, open_store, stage

BASE = os.environ.get("TREADLE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
URL = sys.argv[1] if len(sys.argv) > 1 else f"{BASE}?schema=atk_{uuid.uuid4().hex[:8]}"


@stage()
def only(item):
    time.sleep(0.1 + random.random() * 0.2)
    return 1


pipe = Pipeline("dl", [only])
N = 1500
Runner(pipe, open_store(URL)).submit(*[{"id": f"i{n:05d}"} for n in range(N)])
stop = threading.Event()


def run():
    while not stop.is_set():
        Runner(pipe, open_store(URL), workers=16).run()
        return


threads = [threading.Thread(target=run) for _ in range(3)]
for t in threads:
    t.start()
errs = collections.Counter()
c = Runner(pipe, open_store(URL))
t0 = time.time()
while any(t.is_alive() for t in threads) and time.time() - t0 < 60:
    running = [s.item_id for s in c.items(stage="only", state="running", limit=20)]
    if not running:
        continue
    try:
        c.cancel(random.sample(running, 1), reason="x")
        errs["ok"] += 1
    except TreadleError as e:
        errs[type(e).__name__] += 1
    except Exception as e:
        errs[f"{type(e).__module__}.{type(e).__name__}"] += 1
        if errs[f"{type(e).__module__}.{type(e).__name__}"] == 1:
            print("first non-treadle error:", type(e), str(e).splitlines()[0])
stop.set()
for t in threads:
    t.join()
print(dict(errs))
bad = [k for k in errs if k not in ("ok", "InvalidTransitionError")]
print("BUG: cancel raised non-TreadleError exceptions" if bad else "ok")
sys.exit(1 if bad else 0)
