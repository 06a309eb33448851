"""Pipeline used by the CLI tests: load -> check (review for 'big') -> save; 'bad' fails."""

import attrs

from treadle import Pipeline, Review, stage


@attrs.frozen
class Rec:
    id: str
    size: int = 1


@stage()
def load(item):
    if item.id.startswith("bad"):
        raise RuntimeError(f"cannot load {item.id}")
    return {"size": item.size}


@stage(after=[load])
def check(item, ctx):
    if ctx.outputs["load"]["size"] > 10:
        return Review({"size": ctx.outputs["load"]["size"]}, message="Big one: confirm")
    return {"size": ctx.outputs["load"]["size"]}


@stage(after=[check])
def save(item, ctx):
    return {"saved": ctx.outputs["check"]}


pipeline = Pipeline("cli", [load, check, save], item_type=Rec)
