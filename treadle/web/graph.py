"""A server-made drawing of the DAG: stages in columns by depth, as plain SVG coordinates."""

from __future__ import annotations

from typing import Any

import attrs

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 58, 60, 22, 10


@attrs.frozen
class Box:
    name: str
    x: int
    y: int


@attrs.frozen
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int


@attrs.frozen
class Layout:
    boxes: list[Box]
    edges: list[Edge]
    width: int
    height: int


def layout(pipeline: Any) -> Layout:
    """Columns by longest path from a root (topological order within a column)."""
    depth: dict[str, int] = {}
    for name in pipeline.order:
        after = pipeline.stages[name].after
        depth[name] = 1 + max((depth[a] for a in after if a in depth), default=-1)
    rows: dict[int, int] = {}
    boxes: dict[str, Box] = {}
    for name in pipeline.order:
        col = depth[name]
        row = rows.get(col, 0)
        rows[col] = row + 1
        boxes[name] = Box(name, PAD + col * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
    edges = [Edge(boxes[a].x + BOX_W, boxes[a].y + BOX_H // 2, b.x, b.y + BOX_H // 2)
             for b in boxes.values() for a in pipeline.stages[b.name].after if a in boxes]
    width = PAD * 2 + (max(depth.values(), default=0) + 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=1) * (BOX_H + GAP_Y) - GAP_Y
    return Layout(list(boxes.values()), edges, width, height)
