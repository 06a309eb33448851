"""``status ITEM`` of nested pipelines: the item's parent and its tree of children."""

from __future__ import annotations

from typing import Any

from ..pipeline import Pipeline
from ..status import ItemStatus
from ..store.base import StateStore

#: Children listed per stage before "... and N more".
SHOWN = 50


def tree_lines(pipeline: Pipeline, store: StateStore, status: ItemStatus) -> list[str]:
    """Lines saying the item's parent and its children (their children indented)."""
    lines = []
    if status.parent is not None:
        p, item, stage = status.parent
        lines.append(f"parent: {item} (pipeline {p}, stage {stage})")
    if status.children:
        lines.append("children:")
        lines += _children(pipeline, store, status.item_id, 1)
    return lines


def _children(pipeline: Pipeline, store: StateStore, item_id: str, depth: int) -> list[str]:
    out: list[str] = []
    rows = store.children(pipeline, item_id)
    for n, (stage, child_pipeline, child, state) in enumerate(rows):
        if n == SHOWN:
            out.append(f"{'  ' * depth}... and {len(rows) - SHOWN} more")
            break
        out.append(f"{'  ' * depth}{child:24} {state:16} ({child_pipeline}, from {stage})")
        sub = pipeline.children.get(child_pipeline)
        if sub is not None and sub.children:
            out += _children(sub, store, child, depth + 1)
    return out


def tree_json(status: ItemStatus) -> dict[str, Any]:
    """The parent and children of ``status`` as JSON data."""
    parent = None
    if status.parent is not None:
        parent = dict(zip(("pipeline", "item_id", "stage"), status.parent))
    return {"parent": parent,
            "children": [{"stage": c.stage, "pipeline": c.pipeline, "item_id": c.item_id,
                          "state": c.state.value} for c in status.children]}



def child_reviews(runner: Any) -> list[tuple[Pipeline, str, str, Any, str | None]]:
    """(child pipeline, child id, stage, review, parent id) of every review waiting in
    the pipelines ``runner``'s pipeline spawns into, at any depth."""
    from ..runner import Runner

    out = []
    for p in runner.pipeline.tree()[1:]:
        for s in Runner(p, runner.store).items(state="awaiting_review"):
            parent = s.parent[1] if s.parent is not None else None
            out += [(p, s.item_id, name, st.review, parent) for name, st in s.stages.items()
                    if st.state == "awaiting_review"]
    return out


def child_target(target: str, parent: Pipeline, child: Pipeline) -> str:
    """``target`` with the child pipeline's variable in place of the parent's."""
    import sys

    module_part = target.rpartition(":")[0] or target
    for module in list(sys.modules.values()):
        names = vars(module) if module is not None else {}
        if any(v is parent for v in names.values()):
            for name, value in names.items():
                if value is child:
                    return f"{module_part}:{name}"
    return f"{module_part}:<{child.name}>"


__all__ = ["child_reviews", "child_target", "tree_json", "tree_lines"]
