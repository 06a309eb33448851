"""A runner process for the fan-out resume kill test: ``python tests/crash/fanworker.py DB LOG``.

Opens the store at DB (an SQLite path, or any store URL), submits the items
of tests/crash/fanpipe.py (known ids are ignored) and runs until nothing more
can move; the stage and its subtasks log to LOG. ``--mode plan|closure``
picks how the subtasks are written (see fanpipe.py). Prints one JSON line
with the report's ``interrupted`` and ``items`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fanpipe

from treadle import Runner, open_store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("db")
    ap.add_argument("log")
    ap.add_argument("--mode", choices=("plan", "closure"), default="plan")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--sleep-max", type=float, default=0.02)
    args = ap.parse_args(argv)
    os.environ["FANRESUME_LOG"] = args.log
    os.environ["FANRESUME_SLEEP"] = str(args.sleep_max)
    store = open_store(args.db if "://" in args.db else f"sqlite:///{args.db}")
    runner = Runner(fanpipe.build(args.mode), store, workers=args.workers)
    runner.submit(*fanpipe.items(args.items))
    report = runner.run()
    print(json.dumps({"interrupted": report.interrupted, "items": report.items,
                      "owner": runner.owner}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
