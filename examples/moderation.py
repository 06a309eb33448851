"""Moderation: ingest -> auto-classify -> human review of flagged posts -> publish.

    python examples/moderation.py                  # classify; flagged posts wait
    python -m treadle review examples/moderation.py:pipeline --db sqlite:///moderation.db
    python examples/moderation.py                  # publish what was approved

Clean posts are published automatically. Posts the classifier flags wait for
a moderator, who approves (optionally editing the text), or rejects them; a
rejected post is never published.
"""

from __future__ import annotations

import os
import sys

import attrs

from treadle import Pipeline, Review, Runner, open_store, stage


@attrs.frozen
class Post:
    id: str
    author: str
    text: str


POSTS = [
    Post("p1", "ana", "Lovely weather for the market today."),
    Post("p2", "bo", "Buy cheap pills now!!! Click here"),
    Post("p3", "cy", "The meeting moved to 3pm, see you there."),
    Post("p4", "di", "You are an idiot and your code is garbage"),
]
BLOCKLIST = {"idiot": "abuse", "garbage": "abuse", "click here": "spam", "cheap pills": "spam"}


@stage()
def ingest(post: Post):
    return {"text": " ".join(post.text.split()), "author": post.author}


@stage(after=[ingest])
def classify(post: Post, ctx):
    text = ctx.outputs["ingest"]["text"].lower()
    labels = sorted({label for word, label in BLOCKLIST.items() if word in text})
    return {"labels": labels, "flagged": bool(labels)}


@stage(after=[classify])
def moderate(post: Post, ctx):
    verdict = ctx.outputs["classify"]
    if verdict["flagged"]:
        return Review({"text": ctx.outputs["ingest"]["text"], "labels": verdict["labels"]},
                      message=f"Flagged as {', '.join(verdict['labels'])}: approve, edit or reject")
    return {"text": ctx.outputs["ingest"]["text"], "labels": []}


@stage(after=[moderate])
def publish(post: Post, ctx):
    return {"published": ctx.outputs["moderate"]["text"], "by": post.author}


pipeline = Pipeline("moderation", [ingest, classify, moderate, publish], item_type=Post,
                    source=lambda: iter(POSTS))


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///moderation.db")
    runner = Runner(pipeline, open_store(url))
    runner.run()
    for status in runner.items():
        published = status.stages["publish"].output
        line = f"published: {published['published']!r}" if published else status.state.value
        print(f"{status.item_id}: {line}")
    waiting = runner.items(state="awaiting_review")
    if waiting:
        print(f"{len(waiting)} post(s) await a moderator: "
              f"python -m treadle review {os.path.relpath(__file__)}:pipeline --db {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
