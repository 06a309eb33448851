"""W3 in bulk: ``Runner.approve_all`` on N items waiting at a review gate.

``python -m benchmarks.bulk_approve`` runs the W3 diamond (``workloads.py``)
to its review gate, then times one ``runner.approve_all(stage="review")``
(selection included: it finds what awaits review, then decides it in batches
of 500, one transaction each) and checks every review was approved. Stores:
SQLite at the default durability and, when ``$TREADLE_TEST_POSTGRES_URL`` is
set, PostgreSQL (a fresh schema per measurement). Rounds interleave the
stores; medians of ``--repeats`` are reported as approvals/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from . import postgres


def approve_all_run(url: str, n: int, workers: int) -> dict[str, Any]:
    """Run N diamond items to the review gate, then time ``approve_all``."""
    from treadle import Runner, open_store

    from .workloads import diamond_pipeline, make_items

    store = open_store(url)
    try:
        runner = Runner(diamond_pipeline(), store, workers=workers)
        runner.submit(*make_items(0, n))
        report = runner.run()
        if report.awaiting_review != n:
            raise AssertionError(f"run to the gate: {report}")
        t0 = time.perf_counter()
        result = runner.approve_all(stage="review")
        seconds = time.perf_counter() - t0
        if len(result.done) != n or result.skipped:
            raise AssertionError(f"approve_all decided {len(result.done)}, skipped {len(result.skipped)}")
        if runner.counts()["review"] != {"completed": n}:
            raise AssertionError(f"review counts {runner.counts()['review']}")
    finally:
        store.close()
    return {"n": n, "seconds": seconds, "approvals_per_s": n / seconds}


def measure(n: int, repeats: int, workers: int, stores: list[str]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stores}
    for _ in range(repeats):
        for name in stores:
            if name == "sqlite":
                with tempfile.TemporaryDirectory() as d:
                    r = approve_all_run(f"sqlite:///{os.path.join(d, 'w3.db')}", n, workers)
            else:
                with postgres.fresh_schema() as url:
                    r = approve_all_run(url, n, workers)
            runs[name].append(r)
            print(f"  {name}: {r['approvals_per_s']:,.0f} approvals/s", flush=True)
    summary = {name: statistics.median(r["approvals_per_s"] for r in rs) for name, rs in runs.items()}
    return {"n": n, "repeats": repeats, "summary": summary, "runs": runs}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bulk_approve",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="items awaiting review (default 10,000)")
    p.add_argument("--repeats", type=int, default=3, help="rounds, medians kept (default 3)")
    p.add_argument("--workers", type=int, default=4, help="Runner workers (default 4)")
    p.add_argument("--stores", default="sqlite,postgresql",
                   help="comma-separated subset of sqlite,postgresql (default both)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = p.parse_args(argv)
    stores = [s for s in ("sqlite", "postgresql") if s in args.stores.split(",")]
    if not stores:
        p.error(f"--stores: choose from sqlite,postgresql, got {args.stores!r}")
    why = postgres.unavailable() if "postgresql" in stores else None
    if why is not None:
        stores.remove("postgresql")
        print(f"PostgreSQL skipped: {why}")
    if not stores:
        return 0
    print(f"W3 approve_all, N={args.n:,}, {args.repeats} round(s)", flush=True)
    result = measure(args.n, args.repeats, args.workers, stores)
    for name, v in result["summary"].items():
        print(f"{name:>10}: {v:8,.0f} approvals/s (median)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
