"""The cost of observability: W1 with ``treadle.contrib.otel`` and
``treadle.contrib.prometheus`` both connected, against W1 without, in the same run.

    python -m benchmarks.obs_overhead [--n 5000] [--repeats 3] [--store sqlite|sqlite-normal|memory]

W1 is the suite's: N items through five no-op stages in a line, submit + run.
"observed" connects both: OpenTelemetry (an SDK tracer provider with a batch span
processor and an exporter that drops the spans, so the measure is treadle's
side, not an exporter's) and Prometheus (a registry of its own, not scraped).
"otel" and "prometheus" (``--sides``) connect one each. Sides alternate,
each in a fresh child process; the median of each side is kept and the
figure to read is the ratio observed / plain of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from .measure import peak_rss_kb

URLS = {"sqlite": "sqlite:///{path}", "sqlite-normal": "sqlite:///{path}?synchronous=normal",
        "memory": "memory://"}


def child(side: str, n: int, url: str, workers: int) -> dict[str, Any]:
    """One side: submit N items, run them through W1's pipeline, return timings."""
    from treadle import Runner, open_store

    from .workloads import STAGES, linear_pipeline, make_items

    pipeline = linear_pipeline()
    store = open_store(url)
    runner = Runner(pipeline, store, workers=workers)
    handles: list[Any] = []
    exported = [0]
    tracing, metering = side in ("observed", "otel"), side in ("observed", "prometheus")
    if tracing:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from treadle.contrib import otel

        class Drop(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                exported[0] += len(spans)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=100_000))
        handles.append(otel.instrument(provider, runner))
    if metering:
        from prometheus_client import CollectorRegistry

        from treadle.contrib import prometheus

        handles.append(prometheus.instrument(runner, registry=CollectorRegistry()))
    items = make_items(0, n)
    t0 = time.perf_counter()
    runner.submit(*items)
    report = runner.run()
    wall = time.perf_counter() - t0
    if report.completed != n * len(STAGES):
        raise AssertionError(f"{side}: completed {report.completed} of {n * len(STAGES)}")
    for h in handles:
        h.close()
    if tracing:
        provider.shutdown()
        if exported[0] != n * (len(STAGES) + 1):  # a span per stage + the item span
            raise AssertionError(f"observed: {exported[0]} spans exported")
    store.close()
    return {"side": side, "n": n, "wall_s": wall, "stages_per_s": n * len(STAGES) / wall,
            "spans": exported[0], "peak_rss_mb": peak_rss_kb() / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--store", choices=sorted(URLS), default="sqlite")
    ap.add_argument("--sides", default="plain,observed",
                    help="comma-separated, of plain, observed (both), otel, prometheus")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.url, args.workers)))
        return 0
    sides = [s for s in args.sides.split(",") if s]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for side in sides:
                url = URLS[args.store].format(path=os.path.join(tmp, f"{side}{i}.db"))
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.obs_overhead", "--child", side, "--n", str(args.n),
                     "--workers", str(args.workers), "--url", url],
                    check=True, capture_output=True, text=True)
                runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    median = {side: statistics.median(r["wall_s"] for r in rs) for side, rs in runs.items()}
    base = median.get("plain")
    result = {"n": args.n, "store": args.store, "workers": args.workers, "repeats": args.repeats,
              "median_wall_s": median, "runs": runs,
              "ratio": {side: m / base for side, m in median.items()} if base else {}}
    print(f"W1 N={args.n} on {args.store}, {args.workers} workers, median of {args.repeats}:")
    for side, m in median.items():
        ratio = f"  ratio to plain {m / base:.2f}" if base else ""
        print(f"  {side:<11} {m:6.2f} s  {args.n * 5 / m:7.0f} stages/s{ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
