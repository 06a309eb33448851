"""A gated stage that escalates to review, and one that fails on demand (web console tests)."""

from __future__ import annotations

from treadle import Pipeline, Rejected, stage


def never_good(item, output, ctx):
    return Rejected(f"attempt {ctx.attempt} is not good enough")


@stage(gate=never_good, retry=2, on_exhausted="escalate")
def extract(item, ctx):
    if item.get("fail"):
        raise RuntimeError(f"cannot read {item['id']}")
    return {"total": f"{ctx.attempt}00"}


pipeline = Pipeline("web-gated", [extract])
