"""A moderation step with choices, a form and assigned reviewers, for CLI tests."""

from __future__ import annotations

from tests.decision_forms import Label
from treadle import Pipeline, Review, chose, stage


@stage(reviewers=["ana"])
def moderate(item):
    return Review({"text": item["text"]}, message="Where does it go?",
                  options=["publish", "archive"])


@stage(after=[moderate], when=chose("moderate", "publish"), output_type=Label)
def tag(item):
    return Review({"isrc": "", "label": "Acme"}, message="Fill in the ISRC", form=Label)


@stage(after=[tag], when=chose("moderate", "publish"))
def release(item, ctx):
    return {"isrc": ctx.outputs["tag"].isrc, "year": ctx.outputs["tag"].year}


pipeline = Pipeline("decisions", [moderate, tag, release])
