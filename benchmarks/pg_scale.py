"""PostgreSQL: the plain-psycopg2 floor and W1 scale-out over runner processes.

``python -m benchmarks.pg_scale`` measures, in one run and interleaved round by
round (the machine is shared: medians of ``--repeats`` rounds are reported):

- the **floor**: plain psycopg2, one transaction per transition, the rows of
  the SQLite floor (``floor.py``): ``UPDATE`` the (item, stage) row to
  completed with its output, ``INSERT`` a history row, ``COMMIT``;
- **W1** (N items x 5 no-op stages) run by 1, 2, 4, ... runner *processes* on
  one store (``--runners``), each ``Runner(..., workers=4).run()`` until
  nothing is left. The items are submitted first; the runners start together
  (each is set up, then waits for a go) and the run takes from the go to the
  last runner's exit;
- with ``--no-feed-lock``, the same W1 runs once more per runner count with
  the per-pipeline history lock switched off (``PostgresStore._before_history``
  only notifies): a throwaway measurement of what that lock costs, **not a
  safe setting** (history ids may then commit out of order).

Every measurement gets a fresh schema (see ``postgres.py``). Needs
``$TREADLE_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from . import postgres
from .floor import PIPELINE, STAGES

SCHEMA = """
CREATE TABLE item (id BIGSERIAL PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                   data TEXT NOT NULL, submitted_at DOUBLE PRECISION NOT NULL);
CREATE UNIQUE INDEX item_key ON item (pipeline, item_id);
CREATE TABLE stage (id BIGSERIAL PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                    stage TEXT NOT NULL, state TEXT NOT NULL, output TEXT,
                    updated_at DOUBLE PRECISION NOT NULL);
CREATE UNIQUE INDEX stage_key ON stage (pipeline, item_id, stage);
CREATE TABLE history (id BIGSERIAL PRIMARY KEY, pipeline TEXT NOT NULL, item_id TEXT NOT NULL,
                      stage TEXT, state TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
"""


def pg_floor(url: str, n: int, sample: int) -> dict[str, Any]:
    """Plain psycopg2, one transaction per transition; ``sample`` transitions timed."""
    import psycopg2
    from psycopg2.extras import execute_values

    sample = min(sample, n * len(STAGES))
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
            now = time.time()
            execute_values(cur, "INSERT INTO item (pipeline, item_id, data, submitted_at) VALUES %s",
                           [(PIPELINE, str(i), json.dumps({"id": i}), now) for i in range(n)])
            execute_values(cur, "INSERT INTO stage (pipeline, item_id, stage, state, updated_at) "
                           "VALUES %s", [(PIPELINE, str(i), s, "pending", now)
                                         for i in range(n) for s in STAGES])
        conn.commit()
        update = ("UPDATE stage SET state='completed', output=%s, updated_at=%s "
                  "WHERE pipeline=%s AND item_id=%s AND stage=%s")
        insert = ("INSERT INTO history (pipeline, item_id, stage, state, at) "
                  "VALUES (%s,%s,%s,'completed',%s)")
        keys = [(str(i), s) for i in range(n) for s in STAGES][:sample]
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for item_id, s in keys:
                at = time.time()
                cur.execute(update, (json.dumps({"ok": 1}), at, PIPELINE, item_id, s))
                cur.execute(insert, (PIPELINE, item_id, s, at))
                conn.commit()
        seconds = time.perf_counter() - t0
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM stage WHERE state='completed'")
            row = cur.fetchone()
        if row is None or row[0] != len(keys):
            raise AssertionError(f"floor completed {row} rows, expected {len(keys)}")
    finally:
        conn.close()
    return {"n": n, "transitions": len(keys), "seconds": seconds,
            "transitions_per_s": len(keys) / seconds}


# -- one runner process ----------------------------------------------------------
def _runner_main(url: str, workers: int, feed_lock: bool) -> int:
    """Child: set up a runner, say ``ready``, wait for a line on stdin, run, print JSON."""
    from treadle import Runner, open_store
    from treadle.store.postgres import PostgresStore

    from .workloads import linear_pipeline

    if not feed_lock:  # measurement only: notify, but take no per-pipeline lock
        def notify_only(self: Any, tx: Any, pipelines: Any) -> None:
            for name in pipelines:
                tx._exec("SELECT pg_notify(?, ?)", (self.CHANNEL, name))

        PostgresStore._before_history = notify_only  # type: ignore[method-assign]
    store = open_store(url)
    runner = Runner(linear_pipeline(), store, workers=workers)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    report = runner.run()
    seconds = time.perf_counter() - t0
    store.close()
    print(json.dumps({"completed": report.completed, "run_s": seconds}), flush=True)
    return 0


def scale_run(url: str, n: int, runners: int, workers: int, feed_lock: bool = True
              ) -> dict[str, Any]:
    """Submit ``n`` items, run them with ``runners`` processes at once; returns figures."""
    from treadle import Runner, open_store

    from .workloads import linear_pipeline, make_items

    store = open_store(url)
    Runner(linear_pipeline(), store, workers=workers).submit(*make_items(0, n))
    store.close()
    cmd = [sys.executable, "-m", "benchmarks.pg_scale", "--child", url, str(workers),
           "1" if feed_lock else "0"]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(runners)]
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"runner {p.pid} did not start")
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=900)[0] for p in procs]
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    completed = sum(r["completed"] for r in results)
    if completed != n * len(STAGES) or any(p.returncode for p in procs):
        raise AssertionError(f"{runners} runners completed {completed}, expected {n * len(STAGES)}")
    return {"n": n, "runners": runners, "workers": workers, "feed_lock": feed_lock,
            "run_s": seconds, "transitions_per_s": completed / seconds,
            "per_runner": [r["completed"] for r in results]}


def measure(n: int, runner_counts: list[int], repeats: int, workers: int, sample: int,
            no_feed_lock: bool) -> dict[str, Any]:
    """Interleaved rounds of floor and W1 per runner count; medians and every run."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(repeats):
        with postgres.fresh_schema() as url:
            runs.setdefault("floor", []).append(pg_floor(url, n, sample))
        for k in runner_counts:
            for lock in (True, False) if no_feed_lock else (True,):
                with postgres.fresh_schema() as url:
                    r = scale_run(url, n, k, workers, lock)
                runs.setdefault(f"{k}{'' if lock else '-nolock'}", []).append(r)
                print(f"  {k} runner(s){'' if lock else ' without feed lock'}: "
                      f"{r['transitions_per_s']:,.0f} transitions/s", flush=True)
    med = {key: statistics.median(r["transitions_per_s"] for r in rs) for key, rs in runs.items()}
    floor = med["floor"]
    one = med.get(f"{runner_counts[0]}", 0.0)
    summary = {key: {"transitions_per_s": v, "x_floor": v / floor,
                     "x_first": v / one if one else None} for key, v in med.items()}
    return {"n": n, "repeats": repeats, "workers": workers, "sample": sample,
            "runner_counts": runner_counts, "summary": summary, "runs": runs}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        return _runner_main(argv[1], int(argv[2]), argv[3] == "1")
    p = argparse.ArgumentParser(prog="python -m benchmarks.pg_scale", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="W1 items (default 10,000)")
    p.add_argument("--runners", default="1,2,4", help="runner process counts (default 1,2,4)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, medians kept (default 3)")
    p.add_argument("--workers", type=int, default=4, help="workers per runner (default 4)")
    p.add_argument("--sample", type=int, default=5_000, help="floor transitions timed (default 5,000)")
    p.add_argument("--no-feed-lock", action="store_true",
                   help="also run W1 without the per-pipeline history lock (measurement only)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    why = postgres.unavailable()
    if why is not None:
        print(f"PostgreSQL skipped: {why}")
        return 0
    counts = [int(x) for x in args.runners.split(",") if x.strip()]
    print(f"PostgreSQL W1 scale-out, N={args.n:,}, runners {counts}, {args.repeats} round(s)", flush=True)
    result = measure(args.n, counts, args.repeats, args.workers, args.sample, args.no_feed_lock)
    result["server"] = postgres.server_version()
    for key, s in result["summary"].items():
        first = "" if s["x_first"] is None else f", {s['x_first']:.2f}x {counts[0]} runner(s)"
        print(f"{key:>10}: {s['transitions_per_s']:8,.0f} transitions/s, {s['x_floor']:.2f}x floor{first}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
