"""Nested pipelines against fan-out: the same W2-like work both ways.

    python -m benchmarks.nested [--parents 100] [--children 10] [--store sqlite|memory|postgresql]
                                [--repeat 3]

Each parent does ``fan -> join``. As a fan-out, ``fan`` returns ``FanOut`` of
``children`` no-op subtasks; nested, it returns ``Spawn`` of ``children``
child items into a one-stage pipeline. ``join`` checks it saw every output.
The two sides run alternately, each on a fresh store, ``repeat`` times; the
figure to read is the ratio of the median wall times, measured in the same
run (nested / fan-out: how many times longer the nested form takes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from typing import Any

from treadle import FanOut, Pipeline, Runner, Spawn, open_store, stage


def _pipelines(kind: str, children: int) -> Pipeline:
    tag = uuid.uuid4().hex[:8]  # PostgreSQL: one database, a fresh pipeline name per run
    subtasks = {f"s{i}": (lambda i=i: {"v": i}) for i in range(children)}

    @stage(name="work")
    def work(item: Any) -> dict[str, int]:
        return {"v": int(item["n"])}

    kids = Pipeline(f"bench_kids_{tag}", [work])
    if kind == "nested":
        @stage(name="fan", spawns=kids)
        def fan(item: Any) -> Any:
            return Spawn(kids, [{"id": i, "n": i} for i in range(children)])
    else:
        @stage(name="fan")
        def fan(item: Any) -> Any:
            return FanOut(dict(subtasks))

    @stage(name="join", after=["fan"])
    def join(item: Any, ctx: Any) -> dict[str, int]:
        if len(ctx.outputs["fan"]) != children:
            raise AssertionError(f"join saw {len(ctx.outputs['fan'])} outputs")
        return {"n": children}

    return Pipeline(f"bench_{kind}_{tag}", [fan, join])


def one(kind: str, parents: int, children: int, url: str) -> float:
    """Seconds to submit and run ``parents`` items of the ``kind`` form."""
    pipeline = _pipelines(kind, children)
    runner = Runner(pipeline, open_store(url), workers=4)
    start = time.perf_counter()
    runner.submit(*({"id": p} for p in range(parents)))
    report = runner.run()
    took = time.perf_counter() - start
    if report.items != {"completed": parents}:
        raise AssertionError(f"{kind}: {report.items}")
    return took


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nested", description=__doc__)
    p.add_argument("--parents", type=int, default=100)
    p.add_argument("--children", type=int, default=10)
    p.add_argument("--store", choices=("sqlite", "memory", "postgresql"), default="sqlite")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {"fanout": [], "nested": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeat):
            for kind in ("fanout", "nested"):
                if args.store == "sqlite":
                    url = f"sqlite:///{os.path.join(tmp, f'{kind}{n}.db')}"
                elif args.store == "memory":
                    url = "memory://"
                else:
                    from .postgres import fresh_schema

                    with fresh_schema() as pg:
                        times[kind].append(one(kind, args.parents, args.children, pg))
                    continue
                times[kind].append(one(kind, args.parents, args.children, url))
    med = {k: statistics.median(v) for k, v in times.items()}
    work = args.parents * args.children
    for kind in ("fanout", "nested"):
        print(f"{kind:7} {args.parents} parents x {args.children}: median {med[kind]:.2f} s "
              f"({work / med[kind]:.0f} children/s; runs {', '.join(f'{t:.2f}' for t in times[kind])})")
    print(f"nested / fan-out wall time: {med['nested'] / med['fanout']:.2f}x ({args.store})")


if __name__ == "__main__":
    main()
