"""Flow control's cost per claim: a one-stage pipeline of no-op runs with no limit,
with a rate limit, with a global concurrency limit, with both, and with a named
limit of the Pipeline (concurrency, rate), none of which binds (the rate is far
above what is reached, the limit above what is claimed), so the difference is the
price of taking them in the claim transaction. A fan-out of two subtasks per item,
one of them with a key rate (``FanOut(rate=...)``), is measured against the same
fan-out without it.

    python -m benchmarks.flow [--n 5000] [--repeats 3] [--stores sqlite,postgresql]

PostgreSQL is measured when $TREADLE_TEST_POSTGRES_URL is set. Variants alternate
within each repeat (each repeat starts with the next one, after a warm-up round); the
figure to read is each variant's throughput over "none"'s, measured in the same run
(docs/flow-control.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "rate": {"rate": "1000000/s"},
    "global": {"concurrency": 100_000, "scope": "global"},
    "rate+global": {"rate": "1000000/s", "concurrency": 100_000, "scope": "global"},
    # a named limit of the Pipeline (Pipeline(limits=...)), taken by the stage
    "named": {"limits": {"api": 1}},
    "named-rate": {"limits": {"rate-api": 1}},
}
#: Pipeline(limits=...) of every variant (only the "named" ones take them)
LIMITS: dict[str, int | str] = {"api": 100_000, "rate-api": "1000000/s"}
#: fan-out variants: each item's stage fans out to two subtasks, "mb:1" and "free";
#: "fanout+key-rate" gives the "mb" key a rate (FanOut(rate=...)), measured against "fanout"
FANOUTS: dict[str, dict[str, Any]] = {
    "fanout": {},
    "fanout+key-rate": {"rate": {"mb": "1000000/s"}},
}
#: the variant each one is measured against
BASE = {**dict.fromkeys(VARIANTS, "none"), **dict.fromkeys(FANOUTS, "fanout")}


def once(variant: str, url: str, n: int, workers: int) -> float:
    """Stage runs per second for one variant on a fresh pipeline."""
    from treadle import FanOut, Pipeline, Runner, open_store, stage

    if variant in FANOUTS:
        rate = FANOUTS[variant]

        @stage(name="work")
        def work(item: Any) -> Any:
            return FanOut({"mb:1": _noop, "free": _noop}, **rate)
    else:
        @stage(name="work", **VARIANTS[variant])
        def work(item: Any) -> Any:
            return None

    name = f"flow_{variant.replace('+', '_').replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    store = open_store(url)
    runner = Runner(Pipeline(name, [work], limits=LIMITS), store, workers=workers)
    runner.submit([{"id": i} for i in range(n)])
    t0 = time.perf_counter()
    report = runner.run()
    took = time.perf_counter() - t0
    store.close()
    if report.completed != n:
        raise AssertionError(f"{variant}: completed {report.completed} of {n}")
    return n / took


def _noop() -> None:
    return None


def measure(store: str, n: int, repeats: int, workers: int) -> dict[str, float]:
    """Median stage runs per second of each variant on ``store``."""
    from .postgres import fresh_schema

    runs: dict[str, list[float]] = {v: [] for v in BASE}
    with tempfile.TemporaryDirectory() as tmp:
        names = list(BASE)
        for rep in range(-1, repeats):  # rep -1 warms up (imports, caches); not counted
            for variant in names[rep % len(names):] + names[:rep % len(names)]:
                if store == "postgresql":
                    with fresh_schema() as url:
                        rate = once(variant, url, n, workers)
                else:
                    url = f"sqlite:///{tmp}/{variant.replace('+', '_')}{rep + 1}.db"
                    rate = once(variant, url, n, workers)
                if rep >= 0:
                    runs[variant].append(rate)
    return {v: statistics.median(r) for v, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--stores", default="sqlite,postgresql")
    args = ap.parse_args(argv)
    for store in args.stores.split(","):
        if store == "postgresql" and not os.environ.get("TREADLE_TEST_POSTGRES_URL"):
            print("postgresql: skipped ($TREADLE_TEST_POSTGRES_URL is not set)")
            continue
        rates = measure(store, args.n, args.repeats, args.workers)
        print(f"{store}, N={args.n:,} one-stage items, workers={args.workers}, "
              f"median of {args.repeats} (fan-outs: items per second, two subtasks each):")
        for variant, rate in rates.items():
            base = rates[BASE[variant]]
            print(f"  {variant:16} {rate:9,.0f} runs/s  {rate / base:5.2f}x {BASE[variant]:7} "
                  f"{1e6 / rate - 1e6 / base:+7.1f} us per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
