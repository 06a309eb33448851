"""CPU-bound stages on Dask: N items x a pure-Python loop of about 50 ms, on the
thread pool (the GIL: one core) against 1 and 2 Dask worker processes.

    python -m benchmarks.dask_cpu [--n 200]      # needs treadle[dask]

Figures are ratios to the thread pool measured in the same run (2 cores here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from treadle import Pipeline, Runner, open_store, stage


def burn(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


def calibrate(seconds: float = 0.05) -> int:
    """Loops that take about ``seconds`` here."""
    loops = 100_000
    t0 = time.perf_counter()
    burn(loops)
    return int(loops * seconds / (time.perf_counter() - t0))


def measure(n: int, loops: int, executor: Any, path: str) -> float:
    @stage(name="cpu")
    def cpu(item: Any) -> int:
        return burn(item["loops"])

    runner = Runner(Pipeline("dask_cpu", [cpu]), open_store(f"sqlite:///{path}"),
                    executor=executor, workers=4)
    runner.submit(*({"id": i, "loops": loops} for i in range(n)))
    t0 = time.perf_counter()
    report = runner.run()
    took = time.perf_counter() - t0
    if report.completed != n:
        raise AssertionError(f"completed {report.completed} of {n}")
    return n / took


def main(argv: list[str] | None = None) -> int:
    from distributed import Client, LocalCluster

    from treadle.contrib.dask import DaskExecutor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args(argv)
    loops = calibrate()
    with tempfile.TemporaryDirectory() as tmp:
        threads = measure(args.n, loops, None, f"{tmp}/threads.db")
        rates = {}
        for workers in (1, 2):
            with LocalCluster(  # type: ignore[no-untyped-call]
                    n_workers=workers, threads_per_worker=1, processes=True,
                    dashboard_address=None) as cluster, \
                    Client(cluster) as client:  # type: ignore[no-untyped-call]
                rates[workers] = measure(args.n, loops, DaskExecutor(client),
                                         f"{tmp}/dask{workers}.db")
    print(f"CPU-bound stages, N={args.n} x ~50 ms of pure Python")
    print(f"  thread pool (workers=4): {threads:6.1f} stages/s  1.00x")
    for workers, rate in rates.items():
        print(f"  Dask, {workers} worker process(es): {rate:6.1f} stages/s  "
              f"{rate / threads:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
