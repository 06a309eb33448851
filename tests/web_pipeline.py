"""A small review pipeline for the web console's tests: fetch -> draft -> review -> publish."""

from __future__ import annotations

from treadle import Pipeline, Review, stage


@stage()
def fetch(item):
    return {"text": item.get("text", f"text of {item['id']}")}


@stage(after=[fetch])
def draft(item, ctx):
    return {"title": item.get("title", f"Title {item['id']}"), "words": len(ctx.outputs["fetch"]["text"].split())}


@stage(after=[draft])
def review(item, ctx):
    return Review({"title": ctx.outputs["draft"]["title"], "tags": ["a", "b"]},
                  message=item.get("message", f"Check the title of {item['id']}"))


@stage(after=[review])
def publish(item, ctx):
    return {"published": ctx.outputs["review"]["title"]}


pipeline = Pipeline("web-docs", [fetch, draft, review, publish])
