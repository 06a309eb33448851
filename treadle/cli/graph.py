"""Rendering a pipeline's DAG as Mermaid, Graphviz dot, or text."""

from __future__ import annotations

from ..pipeline import Pipeline


def mermaid(p: Pipeline) -> str:
    lines = ["flowchart TD"]
    for s in p.order:
        lines.append(f"    {s}[{s}]")
    for s in p.order:
        for d in p.deps[s]:
            lines.append(f"    {d} --> {s}")
    return "\n".join(lines)


def dot(p: Pipeline) -> str:
    lines = [f'digraph "{p.name}" {{', "    rankdir=LR;"]
    lines += [f'    "{s}";' for s in p.order]
    lines += [f'    "{d}" -> "{s}";' for s in p.order for d in p.deps[s]]
    lines.append("}")
    return "\n".join(lines)


def text(p: Pipeline) -> str:
    """One line per stage in run order, with what it waits for, indented by depth."""
    depth: dict[str, int] = {}
    for s in p.order:
        depth[s] = 1 + max((depth[d] for d in p.deps[s]), default=-1)
    lines = [f"pipeline {p.name}"]
    for s in p.order:
        after = f"  (after {', '.join(p.deps[s])})" if p.deps[s] else ""
        lines.append(f"{'    ' * depth[s]}└─ {s}{after}")
    return "\n".join(lines)


FORMATS = {"mermaid": mermaid, "dot": dot, "text": text}
