"""A pause committed out of control-row id order is never seen by a running runner (PostgreSQL).

treadle_control ids come from a sequence at INSERT time, but runners read
`id > last_seen`. If a pause row gets id N and a cancel (or any other control
row) gets N+1 and commits first, a runner that reads in between moves its
cursor to N+1 and never sees the pause: it keeps claiming the paused stage for
the rest of its run (run --watch: for ever).

The window is widened deterministically with a trigger that sleeps 1.5 s after
the pause row is inserted (any slow moment between INSERT and COMMIT does the
same: the pause transaction also waits for the feed lock held by committing runners).

Usage: TREADLE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python attack/pg_pause_missed.py
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


@stage()
def work(item):
    time.sleep(0.02)
    return item["id"]


pipe = Pipeline("pm", [work])
Runner(pipe, open_store(URL)).submit(*[{"id": f"i{n:04d}"} for n in range(400)])
conn = psycopg2.connect(BASE, options=f"-c search_path={SCHEMA}")
conn.autocommit = True
conn.cursor().execute("""
CREATE FUNCTION slow_pause() RETURNS trigger AS $$
BEGIN IF NEW.kind = 'pause' THEN PERFORM pg_sleep(1.5); END IF; RETURN NEW; END $$ LANGUAGE plpgsql;
CREATE TRIGGER slow_pause AFTER INSERT ON treadle_control FOR EACH ROW EXECUTE FUNCTION slow_pause();
""")

runner = Runner(pipe, open_store(URL), workers=2)
rt = threading.Thread(target=runner.run)
rt.start()
time.sleep(0.5)
pt = threading.Thread(target=lambda: Runner(pipe, open_store(URL)).pause("work"))
pt.start()
time.sleep(0.3)  # pause row inserted (id N), not committed
if not os.environ.get("NO_CANCEL"):
    Runner(pipe, open_store(URL)).cancel(["i0399"], reason="x")  # id N+1, commits first
pt.join()
paused_at = time.time()
print("paused:", Runner(pipe, open_store(URL)).paused())
time.sleep(1.0)
ev = Runner(pipe, open_store(URL)).events(0, 100000)
pause_id = [e.id for e in ev if e.state == "paused"][0]
started = [e for e in ev if e.id > pause_id and e.state == "running" and e.at > paused_at + 0.3]
print("stages started more than 0.3 s after the pause:", len(started))
Runner(pipe, open_store(URL)).resume()
rt.join()
print("BUG: runner ignores the pause" if started else "ok")
sys.exit(1 if started else 0)
