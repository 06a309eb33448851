"""Chained claims end to end: every stage gets exactly its upstream outputs, on every store."""

from __future__ import annotations

from typing import Any

import pytest

from treadle import Pipeline, Runner, open_store, stage
from treadle.context import StageContext

pytestmark = pytest.mark.timeout(120)


def _pipeline(seen: dict[tuple[str, str], dict[str, Any]]) -> Pipeline:
    """Two chains side by side (a -> b -> c and x -> y) and a join of both (z)."""
    def make(name: str, after: list[Any]) -> Any:
        def run(item: Any, ctx: StageContext) -> dict[str, Any]:
            seen[(item["id"], name)] = dict(ctx.outputs)
            return {"stage": name, "id": item["id"]}
        run.__name__ = run.__qualname__ = name
        return stage(name=name, after=after)(run)

    a = make("a", [])
    b = make("b", [a])
    c = make("c", [b])
    x = make("x", [])
    y = make("y", [x])
    z = make("z", [c, y])
    return Pipeline("chained", [a, b, c, x, y, z])


UPSTREAM = {"a": [], "b": ["a"], "c": ["a", "b"], "x": [], "y": ["x"],
            "z": ["a", "b", "c", "x", "y"]}


@pytest.mark.parametrize("workers", [1, 4])
def test_every_stage_gets_its_upstream_outputs_and_nothing_else(store_url: str,
                                                                 workers: int) -> None:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    pipeline = _pipeline(seen)
    store = open_store(store_url)
    try:
        runner = Runner(pipeline, store, workers=workers)
        runner.submit(*({"id": f"i{k}"} for k in range(40)))
        report = runner.run()
        assert report.completed == 40 * 6
        for k in range(40):
            item = f"i{k}"
            for name, ups in UPSTREAM.items():
                assert seen[(item, name)] == {u: {"stage": u, "id": item} for u in ups}, \
                    (item, name)
    finally:
        store.close()

