"""Nested pipelines in the engine: a Spawn's children, and one run over a pipeline tree.

A stage declared with ``@stage(spawns=child)`` may return
:class:`~treadle.Spawn`; the store submits the children and settles the
parent (``treadle/store/nested.py``). A runner of a pipeline with children
runs the whole tree (the pipeline and every pipeline it spawns into, at any
depth) in *rounds*: each round runs each pipeline, parents first, until
nothing more can move in it; a round that ran nothing, with no work ready or
held by another runner anywhere in the tree, ends the run. A pipeline
without children never comes here: its run is unchanged. See docs/nested.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidStageError
from .outcomes import Spawn
from .serialization import normalize_id
from .stage import StageSpec

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .runner import Runner
    from .status import RunReport


def child_rows(spec: StageSpec, parent_id: str, outcome: Spawn) -> list[tuple[str, str, str]]:
    """(child pipeline, child id, item JSON) of a Spawn; raises InvalidStageError when
    it names a pipeline the stage does not declare, or gives duplicate or too few ids."""
    target = outcome.pipeline
    name = target if isinstance(target, str) else getattr(target, "name", None)
    child = next((p for p in spec.spawns if p is target or p.name == name), None)
    if child is None:
        declared = ", ".join(repr(p.name) for p in spec.spawns) or "none"
        raise InvalidStageError(
            f"Stage {spec.name!r} returned Spawn into {name or target!r}, which it does not "
            f"declare (declared: {declared}); add it to @stage(spawns=...).", stage=spec.name)
    items = list(outcome.items)
    codec = child.codec
    if outcome.ids is not None:
        ids = [normalize_id(i) for i in outcome.ids]
        if len(ids) != len(items):
            raise InvalidStageError(
                f"Stage {spec.name!r} returned Spawn with {len(items)} items but {len(ids)} ids; "
                "give one id per item (or none).", stage=spec.name)
    else:
        ids = [f"{parent_id}/{codec.item_id(item)}" for item in items]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InvalidStageError(
                f"Stage {spec.name!r} returned Spawn with two children whose id is {i!r}; child "
                "ids must be unique.", stage=spec.name)
        seen.add(i)
    return [(child.name, i, codec.dump(item)) for i, item in zip(ids, items)]


def tree_runners(runner: Runner) -> list[Runner]:
    """A runner for each pipeline of the tree (the given one first), kept on ``runner``
    so that each is prepared once."""
    from .runner import Runner

    kept: list[Runner] | None = runner.__dict__.get("_tree_runners")
    if kept is None:
        kept = [runner] + [
            Runner(p, runner.store, workers=runner.workers, executor=runner.executor,
                   lease=runner.lease, grace=runner.grace, async_limit=runner.async_limit)
            for p in runner.pipeline.tree()[1:]]
        runner.__dict__["_tree_runners"] = kept
    return kept


def advance_tree(runner: Runner) -> RunReport:
    """Run the pipeline of ``runner`` and every pipeline it spawns into, in rounds."""
    from .engine import Scheduler
    from .engine.report import Counters
    from .status import RunReport

    runners = tree_runners(runner)
    for r in runners:
        r._prepare()
        r.apply_review_timeouts()
    total = Counters()
    stages: dict[str, Sequence[str] | None] = {}
    while True:
        executed = 0
        for r in runners:
            runner.store.settle_waiting(r.pipeline)
            r.owner = r._new_owner()
            sched = Scheduler(r.pipeline, r.store, owner=r.owner, workers=r.workers,
                              executor=r.executor, lease=r.lease, grace=r.grace,
                              async_limit=r.async_limit)
            c = sched.run()
            stages[r.pipeline.name] = sched.control.stages
            total.add_counts(c)
            executed += c.executed
            if c.interrupted:
                break
        if total.interrupted:
            break
        if executed:
            continue
        if not any(_busy(r, stages.get(r.pipeline.name)) for r in runners):
            break
    return RunReport(
        executed=total.executed, completed=total.completed, failed=total.failed,
        skipped=total.skipped, awaiting_review=total.awaiting_review, refused=total.refused,
        items=runner._item_counts(), interrupted=total.interrupted,
        failures=runner._failures(), skipped_downstream=total.skipped_downstream,
        cancelled=total.cancelled, paused=0,
    )


def _busy(runner: Runner, stages: Sequence[str] | None) -> bool:
    look = runner.store.outlook(runner.pipeline, None, stages)
    return bool(look.ready or look.running)


def parent_of(pipeline: Pipeline, store: Any, item_id: Any) -> tuple[str, str, str] | None:
    """(parent pipeline, parent id, stage) of a child item, or None."""
    rows = store.parents(pipeline.name, [normalize_id(item_id)])
    return None if not rows else (rows[0][1], rows[0][2], rows[0][3])


__all__ = ["advance_tree", "child_rows", "parent_of", "tree_runners"]
