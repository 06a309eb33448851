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
    """One line per stage in run order: its level, its name, what it waits for."""
    level: dict[str, int] = {}
    for s in p.order:
        level[s] = 1 + max((level[d] for d in p.deps[s]), default=0)
    width = max(len(s) for s in p.order)
    lines = [f"pipeline {p.name}: {len(p.order)} stages (level: stages of one level can run together)"]
    for s in p.order:
        after = f"<- {', '.join(p.deps[s])}" if p.deps[s] else "(first)"
        lines.append(f"  {level[s]:>2}  {s:<{width}}  {after}")
    return "\n".join(lines)


FORMATS = {"mermaid": mermaid, "dot": dot, "text": text}
