"""LangGraph peer (``SqliteSaver`` checkpointer, ``durability="sync"``).
Imported only in a child process."""

from __future__ import annotations

import operator
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from ..measure import peak_rss_kb

WIDTH = 8
LINEAR = ("s1", "s2", "s3", "s4", "s5")


class LinearState(TypedDict, total=False):
    id: int
    s1: dict[str, int]
    s2: dict[str, int]
    s3: dict[str, int]
    s4: dict[str, int]
    s5: dict[str, int]


class FanState(TypedDict, total=False):
    id: int
    fan: dict[str, int]
    subtasks: Annotated[dict[str, Any], operator.or_]  # the 8 parallel writes merge
    join: dict[str, int]


def _linear_node(name: str) -> Any:
    def node(state: LinearState) -> dict[str, Any]:
        return {name: {"ok": 1}}
    return node


def _subtask_node(name: str, i: int) -> Any:
    def node(state: FanState) -> dict[str, Any]:
        return {"subtasks": {name: {"v": i}}}
    return node


def _join(state: FanState) -> dict[str, Any]:
    if len(state["subtasks"]) != WIDTH:
        raise AssertionError(f"join saw {len(state['subtasks'])} subtask outputs")
    return {"join": {"n": len(state["subtasks"])}}


def linear_graph() -> StateGraph[Any]:
    g = StateGraph(LinearState)
    prev = START
    for name in LINEAR:
        g.add_node(name, _linear_node(name))
        g.add_edge(prev, name)
        prev = name
    g.add_edge(prev, END)
    return g


def fanout_graph() -> StateGraph[Any]:
    g = StateGraph(FanState)
    g.add_node("fan", lambda state: {"fan": {"ok": 1}})
    g.add_edge(START, "fan")
    names = [f"s{i}" for i in range(WIDTH)]
    for i, name in enumerate(names):
        g.add_node(name, _subtask_node(name, i))
        g.add_edge("fan", name)
    g.add_node("join", _join)
    g.add_edge(names, "join")
    g.add_edge("join", END)
    return g


GRAPHS = {"W1": (linear_graph, 5, "s5"), "W2": (fanout_graph, WIDTH + 2, "join")}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    n, callers, path = int(spec["n"]), int(spec["callers"]), spec["path"]
    build, per_item, last = GRAPHS[spec["workload"]]
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, check_same_thread=False)  # SqliteSaver locks around use
    saver = SqliteSaver(conn)
    saver.setup()
    app = build().compile(checkpointer=saver)
    setup_s = time.perf_counter() - t0

    def one(i: int) -> dict[str, Any]:
        out: dict[str, Any] = app.invoke({"id": i}, {"configurable": {"thread_id": f"item-{i}"}},
                                         durability="sync")
        return out

    base_rss = peak_rss_kb()
    try:
        t0 = time.perf_counter()
        if callers == 1:
            results = [one(i) for i in range(n)]
        else:
            with ThreadPoolExecutor(callers) as pool:
                results = list(pool.map(one, range(n)))
        run_s = time.perf_counter() - t0
        (threads,) = conn.execute("SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()
        (checkpoints,) = conn.execute("SELECT count(*) FROM checkpoints").fetchone()
    finally:
        conn.close()
    missing = sum(1 for r in results if last not in r)
    if len(results) != n or missing or threads != n:
        raise AssertionError(f"{len(results)} runs, {missing} unfinished, {threads} threads; "
                             f"expected {n} finished")
    return {"n": n, "callers": callers, "transitions": n * per_item,
            "checkpoints": checkpoints, "setup_s": setup_s, "run_s": run_s,
            "base_rss_kb": base_rss}
