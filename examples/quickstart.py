"""Quickstart: a small document pipeline with a human review gate.

    python examples/quickstart.py            # run it (again: it resumes)

Items are stored in ./quickstart.db (or the URL in $TREADLE_DB). Stages:

    extract -> count_words ─┐
            -> detect_lang ─┴-> summarize -> review -> publish

``review`` asks a human to confirm the summaries of long documents; the
others pass straight through. Run it twice: the second run does nothing,
because every result is already in the store.
"""

from __future__ import annotations

import os
import sys

import attrs

from treadle import Pipeline, Review, Runner, Skipped, open_store, stage


@attrs.frozen
class Doc:
    id: str
    text: str


DOCS = [
    Doc("memo-1", "The quarterly numbers look good. Ship the new release on Monday."),
    Doc("memo-2", "Le rapport est prêt. Merci de le relire avant vendredi."),
    Doc("essay-3", " ".join(["Durable pipelines keep every result they commit."] * 12)),
    Doc("draft-4", ""),
]


def documents():
    """The pipeline's source: a run submits the ones not yet known."""
    yield from DOCS


@stage()
def extract(doc: Doc):
    if not doc.text.strip():
        return Skipped("empty document", propagate=True)
    return {"text": doc.text.strip()}


@stage(after=[extract])
def count_words(doc: Doc, ctx):
    return len(ctx.outputs["extract"]["text"].split())


@stage(after=[extract])
def detect_lang(doc: Doc, ctx):
    french = {"le", "la", "est", "de", "merci"}
    words = set(ctx.outputs["extract"]["text"].lower().split())
    return "fr" if words & french else "en"


@stage(after=[count_words, detect_lang])
def summarize(doc: Doc, ctx):
    text = ctx.outputs["extract"]["text"]
    return {"summary": text[:60], "words": ctx.outputs["count_words"],
            "lang": ctx.outputs["detect_lang"]}


@stage(after=[summarize])
def review(doc: Doc, ctx):
    summary = ctx.outputs["summarize"]
    if summary["words"] > 50:
        return Review(summary, message="Long document: check the summary before publishing")
    return summary


@stage(after=[review])
def publish(doc: Doc, ctx):
    return {"published": True, "title": ctx.outputs["review"]["summary"][:20]}


pipeline = Pipeline(
    "quickstart", [extract, count_words, detect_lang, summarize, review, publish],
    item_type=Doc, source=documents,
)


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///quickstart.db")
    runner = Runner(pipeline, open_store(url), workers=4)
    report = runner.run()
    print(f"store: {url}")
    print(f"this run executed {report.executed} stage(s): {report.completed} completed, "
          f"{report.skipped} skipped, {report.failed} failed, "
          f"{report.awaiting_review} sent to review"
          + (f" ({report.skipped_downstream} more skipped downstream)"
             if report.skipped_downstream else ""))
    for status in runner.items():
        print(f"  {status.item_id:8} {status.state.value}")
    waiting = runner.items(state="awaiting_review")
    if waiting:
        here = os.path.relpath(__file__)
        review_info = waiting[0].stages["review"].review
        message = review_info.message if review_info is not None else ""
        print(f"{len(waiting)} item(s) await review, e.g. {waiting[0].item_id}: {message}")
        print(f"review them:   python -m treadle review {here}:pipeline --db {url}")
        print(f"then continue: python {here}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
