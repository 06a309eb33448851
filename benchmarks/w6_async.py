"""W6, simulated I/O: N stages that each wait 50 ms, as ``async def`` on the runner's
event loop against plain stages on a thread pool of 32 workers.

    python -m benchmarks.w6_async [--n 10000] [--wait 0.05] [--store sqlite|memory]

Each side runs in a fresh child process (so peak RSS is its own); the figure
to read is the throughput ratio async / threads, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from .measure import peak_rss_kb


def child(kind: str, n: int, wait: float, url: str) -> dict[str, Any]:
    """One side: submit N items, run, return stages/s and peak RSS."""
    import asyncio

    from treadle import Pipeline, Runner, open_store, stage

    if kind == "async":
        @stage(name="io")
        async def io_async(item: Any) -> int:
            await asyncio.sleep(wait)
            return 1
        pipeline = Pipeline("w6_async", [io_async])
        runner = Runner(pipeline, open_store(url), workers=4, async_limit=1000)
    else:
        @stage(name="io")
        def io_sync(item: Any) -> int:
            time.sleep(wait)
            return 1
        pipeline = Pipeline("w6_threads", [io_sync])
        runner = Runner(pipeline, open_store(url), workers=32)
    runner.submit(*({"id": i} for i in range(n)))
    t0 = time.perf_counter()
    report = runner.run()
    run_s = time.perf_counter() - t0
    if report.completed != n:
        raise AssertionError(f"{kind}: completed {report.completed} of {n}")
    return {"kind": kind, "n": n, "run_s": run_s, "stages_per_s": n / run_s,
            "peak_rss_mb": peak_rss_kb() / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--wait", type=float, default=0.05)
    ap.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, url = args.child.split("|", 1)
        print(json.dumps(child(kind, args.n, args.wait, url)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("threads", "async"):
            url = "memory://" if args.store == "memory" else f"sqlite:///{tmp}/{kind}.db"
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.w6_async", "--n", str(args.n), "--wait",
                 str(args.wait), "--child", f"{kind}|{url}"],
                capture_output=True, text=True, check=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    a, t = results["async"], results["threads"]
    print(f"W6 simulated I/O, N={args.n:,} stages waiting {args.wait * 1000:g} ms, "
          f"store {args.store}")
    print(f"  threads (workers=32): {t['stages_per_s']:8,.0f} stages/s  "
          f"peak RSS {t['peak_rss_mb']:.0f} MB")
    print(f"  async (workers=4):    {a['stages_per_s']:8,.0f} stages/s  "
          f"peak RSS {a['peak_rss_mb']:.0f} MB")
    print(f"  async / threads: {a['stages_per_s'] / t['stages_per_s']:.1f}x throughput, "
          f"{a['peak_rss_mb'] / t['peak_rss_mb']:.2f}x peak RSS")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
