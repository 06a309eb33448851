"""A small diamond pipeline used as a fixture: fetch -> left/right -> join -> publish."""

from treadle import Pipeline, stage


@stage()
def fetch(item):
    return {"n": item["n"]}


@stage(after=[fetch])
def left(item, ctx):
    return ctx.outputs["fetch"]["n"] + 1


@stage(after=[fetch])
def right(item, ctx):
    return ctx.outputs["fetch"]["n"] * 2


@stage(after=[left, right])
def join(item, ctx):
    return {"left": ctx.outputs["left"], "right": ctx.outputs["right"]}


@stage(after=[join])
def publish(item, ctx):
    return {"published": ctx.outputs["join"], "seen": sorted(ctx.outputs)}


pipeline = Pipeline("diamond", [fetch, left, right, join, publish])
