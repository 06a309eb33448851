"""How long ``Runner.plan()`` takes on a large store (docs/changes.md).

    python -m benchmarks.plan [--items 100000] [--store sqlite|postgresql|memory] [--repeats 3]

The store holds N items of a three-stage line (``a -> b -> c``), every stage
completed by version 1 of the pipeline; it is filled with bulk inserts (the
rows a run would leave), not by running N items. The plan is then made for
version 2, where ``b`` has a new dependency ``x`` and an attrs ``item_type``:
every item is counted as added (``x``), stale (``b``, with ``c`` downstream)
and restore-checked. The figure is the median seconds of ``plan()``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import attrs

from treadle import Pipeline, Runner, open_store, stage


@attrs.frozen
class Item:
    id: str
    n: int


def pipelines() -> tuple[Pipeline, Pipeline]:
    """Version 1 (a -> b -> c) and version 2 (a, x -> b -> c)."""

    @stage()
    def a(item: Any) -> int:
        return 1

    @stage(after=[a])
    def b(item: Any, ctx: Any) -> int:
        return 2

    @stage(after=[b])
    def c(item: Any, ctx: Any) -> int:
        return 3

    @stage()
    def x(item: Any) -> int:
        return 4

    @stage(after=[a, x], name="b")
    def b2(item: Any, ctx: Any) -> int:
        return 2

    v1 = Pipeline("plan-bench", [a, b, c], item_type=Item, version="1")
    v2 = Pipeline("plan-bench", [a, x, b2, c], item_type=Item, version="2")
    return v1, v2


def fill(url: str, n: int, v1: Pipeline) -> Any:
    """A store of ``n`` items whose stages v1 completed (bulk inserts)."""
    store: Any = open_store(url)
    Runner(v1, store).submit(Item("seed", 0))  # schema, stage rows, recorded definitions
    with store.transaction() as tx:
        if hasattr(tx, "_many"):
            tx._many("INSERT INTO treadle_item (pipeline, item_id, data, state, submitted_at, "
                     "updated_at, version) VALUES (?,?,?,?,?,?,?)",
                     [(v1.name, f"i{k}", json.dumps({"id": f"i{k}", "n": k}), "completed",
                       tx.now, tx.now, "1") for k in range(n)])
            tx._many("INSERT INTO treadle_stage (pipeline, item_id, stage, state, ready, attempt, "
                     "not_before, output, updated_at, fingerprint, version) "
                     "VALUES (?,?,?,?,0,1,0,?,?,?,?)",
                     [(v1.name, f"i{k}", s, "completed", "1", tx.now, v1.fingerprints[s], "1")
                      for k in range(n) for s in v1.order])
        else:  # the memory store: through its primitives
            from treadle.store.records import Transition

            tx.insert_items(v1.name, [(f"i{k}", json.dumps({"id": f"i{k}", "n": k}))
                                      for k in range(n)], "1")
            tx.insert_stage_rows(v1.name, ((f"i{k}", s, False) for k in range(n)
                                           for s in v1.order))
            for k in range(n):
                for s in v1.order:
                    row = tx.s.stages[(v1.name, f"i{k}", s)]
                    row.state, row.attempt, row.owner = "running", 1, "bench"
                tx.apply(v1.name, "bench", [Transition(f"i{k}", s, 1, "completed", output="1")
                                            for s in v1.order], v1.stamps)
    return store


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--store", choices=["sqlite", "postgresql", "memory"], default="sqlite")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    v1, v2 = pipelines()
    with tempfile.TemporaryDirectory() as tmp:
        if args.store == "sqlite":
            url = f"sqlite:///{os.path.join(tmp, 'plan.db')}"
        elif args.store == "postgresql":
            url = os.environ["TREADLE_TEST_POSTGRES_URL"]
        else:
            url = "memory://"
        t0 = time.perf_counter()
        store = fill(url, args.items, v1)
        filled = time.perf_counter() - t0
        runner = Runner(v2, store)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            plan = runner.plan()
            times.append(time.perf_counter() - t0)
        if args.store == "postgresql":
            with store.transaction() as tx:
                for table in ("treadle_item", "treadle_stage", "treadle_definition",
                              "treadle_history"):
                    tx._exec(f"DELETE FROM {table} WHERE pipeline=?", (v1.name,))
        store.close()
    kinds = {f"{c.kind} {c.stage}": c.items for c in plan.changes}
    print(json.dumps({"store": args.store, "items": args.items, "fill_s": round(filled, 2),
                      "plan_s": [round(t, 3) for t in times],
                      "median_s": round(statistics.median(times), 3), "changes": kinds}))


if __name__ == "__main__":
    main()
