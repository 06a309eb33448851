"""A runner process for the crash tests: ``python tests/crash/worker.py DB LOG [options]``.

Opens the store at DB (an SQLite path, or any store URL), submits the crash pipeline's items (known ids
are ignored) and runs until nothing more can move. Stages log to LOG (see
pipeline.py). At the end it prints one JSON line with the RunReport's
``interrupted``, ``executed`` and ``completed`` and the runner's owner.

``--ready FILE`` / ``--go FILE``: after submitting, create FILE (ready) and
wait for the go FILE to exist before running, so that several workers can
start running at the same moment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pipeline as crash_pipeline

from treadle import Runner, open_store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("log")
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--lease", type=float, default=30.0)
    ap.add_argument("--grace", type=float, default=10.0)
    ap.add_argument("--sleep-min", type=float, default=0.0)
    ap.add_argument("--sleep-max", type=float, default=0.02)
    ap.add_argument("--no-tail", action="store_true", help="leave out stage e (4 stages)")
    ap.add_argument("--ready", help="file to create once submitted")
    ap.add_argument("--go", help="file to wait for before running")
    args = ap.parse_args(argv)

    pipe = crash_pipeline.build(args.log, sleep_min=args.sleep_min, sleep_max=args.sleep_max,
                                tail=not args.no_tail)
    store = open_store(args.db if "://" in args.db else f"sqlite:///{args.db}")
    runner = Runner(pipe, store, workers=args.workers, lease=args.lease, grace=args.grace)
    runner.submit(*crash_pipeline.items(args.items))
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(runner.owner)
    if args.go:
        deadline = time.monotonic() + 60
        while not os.path.exists(args.go):
            if time.monotonic() > deadline:
                print("worker: timed out waiting for the go file", file=sys.stderr)
                return 3
            time.sleep(0.002)
    report = runner.run()
    print(json.dumps({"interrupted": report.interrupted, "executed": report.executed,
                      "completed": report.completed, "owner": runner.owner,
                      "items": report.items}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
