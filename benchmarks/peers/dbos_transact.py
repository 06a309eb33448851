"""DBOS Transact peer (SQLite system database). Imported only in a child process."""

from __future__ import annotations

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dbos import DBOS

from ..measure import peak_rss_kb

WIDTH = 8


# -- W1 linear ---------------------------------------------------------------------
@DBOS.step()
def s1(item: dict[str, int]) -> dict[str, int]:
    return {"ok": 1}


@DBOS.step()
def s2(item: dict[str, int]) -> dict[str, int]:
    return {"ok": 1}


@DBOS.step()
def s3(item: dict[str, int]) -> dict[str, int]:
    return {"ok": 1}


@DBOS.step()
def s4(item: dict[str, int]) -> dict[str, int]:
    return {"ok": 1}


@DBOS.step()
def s5(item: dict[str, int]) -> dict[str, int]:
    return {"ok": 1}


@DBOS.workflow()
def linear(item: dict[str, int]) -> dict[str, Any]:
    return {name: fn(item) for name, fn in
            (("s1", s1), ("s2", s2), ("s3", s3), ("s4", s4), ("s5", s5))}


# -- W2 fan-out ----------------------------------------------------------------------
def _subtask(i: int) -> Any:
    def run() -> dict[str, int]:
        return {"v": i}
    run.__name__ = run.__qualname__ = f"sub{i}"
    return DBOS.step(name=f"sub{i}")(run)


SUBTASKS = {f"s{i}": _subtask(i) for i in range(WIDTH)}


@DBOS.step()
def fan(outputs: dict[str, Any]) -> dict[str, Any]:
    return outputs


@DBOS.step()
def join(outputs: dict[str, Any]) -> dict[str, int]:
    if len(outputs) != WIDTH:
        raise AssertionError(f"join saw {len(outputs)} subtask outputs")
    return {"n": len(outputs)}


@DBOS.workflow()
def fanout(item: dict[str, int]) -> dict[str, Any]:
    outputs = fan({name: fn() for name, fn in SUBTASKS.items()})
    return {"fan": outputs, "join": join(outputs)}


WORKFLOWS = {"W1": (linear, 5), "W2": (fanout, WIDTH + 2)}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    n, callers, path = int(spec["n"]), int(spec["callers"]), spec["path"]
    workflow, per_item = WORKFLOWS[spec["workload"]]
    t0 = time.perf_counter()
    DBOS(config={"name": "treadle-bench", "system_database_url": f"sqlite:///{path}",
                 "log_level": "WARNING"})
    DBOS.launch()
    setup_s = time.perf_counter() - t0
    items = [{"id": i} for i in range(n)]
    base_rss = peak_rss_kb()
    try:
        t0 = time.perf_counter()
        if callers == 1:
            results = [workflow(item) for item in items]
        else:
            with ThreadPoolExecutor(callers) as pool:
                results = list(pool.map(workflow, items))
        run_s = time.perf_counter() - t0
    finally:
        DBOS.destroy()
    if len(results) != n:
        raise AssertionError(f"{len(results)} workflows returned, expected {n}")
    conn = sqlite3.connect(path)
    try:
        (steps,) = conn.execute("SELECT count(*) FROM operation_outputs").fetchone()
        (done,) = conn.execute(
            "SELECT count(*) FROM workflow_status WHERE status='SUCCESS'").fetchone()
    finally:
        conn.close()
    if steps != n * per_item or done != n:
        raise AssertionError(f"{steps} step checkpoints and {done} finished workflows, "
                             f"expected {n * per_item} and {n}")
    return {"n": n, "callers": callers, "transitions": n * per_item,
            "checkpoints": steps, "setup_s": setup_s, "run_s": run_s,
            "base_rss_kb": base_rss}
