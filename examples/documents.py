"""Documents: an unreliable extractor, a quality gate, and a human when it gives up.

    python examples/documents.py
    python -m treadle review examples/documents.py:pipeline --db sqlite:///documents.db

The "extract" stage stands for an unreliable worker (an OCR tool, an LLM):
it is simulated and deterministic, seeded by the document id and the attempt
number. A structural gate checks every output; a rejected output is retried
with the gate's feedback (visible to the next attempt in ``ctx.feedback``).
After 3 attempts the document is escalated to a human, who can approve one
of the attempts, edit, reject, or send it back with their own feedback.
"""

from __future__ import annotations

import os
import random
import sys

from treadle import Accepted, Pipeline, Rejected, Runner, Uncertain, open_store, stage

DOCS = [
    {"id": "invoice-001", "text": "Invoice 001 total 120.00 EUR due 2026-12-01"},
    {"id": "invoice-002", "text": "Invoice 002 total 75.50 EUR due 2026-12-15"},
    {"id": "invoice-003", "text": "Invoice 003 t0tal ??? EUR due ????"},
    {"id": "invoice-004", "text": "Invoice 004 total 42.00 EUR due 2027-01-10"},
]
FIELDS = ("number", "total", "currency", "due")


@stage()
def load(doc):
    return {"chars": len(doc["text"])}


def structure(doc, fields, ctx):
    """The gate: every field present, and a number for a total."""
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        return Rejected(f"missing {', '.join(missing)}", details={"missing": missing})
    if "?" in fields["total"] or "?" in fields["due"]:
        return Rejected("unreadable total or due date", details={"unreadable": True})
    try:
        float(fields["total"])
    except ValueError:
        return Uncertain(f"total {fields['total']!r} is not a number")
    return Accepted("all fields present")


@stage(after=[load], retry=3, on_exhausted="escalate", gate=structure)
def extract(doc, ctx):
    """Pretend to extract fields; some attempts drop fields. Feedback helps."""
    rng = random.Random(f"{doc['id']}:{ctx.attempt}")
    words = doc["text"].split()
    fields = {"number": words[1], "total": words[3], "currency": words[4], "due": words[6]}
    told = {m for f in ctx.feedback for m in ((f.get("details") or {}).get("missing") or [])}
    for name in FIELDS:
        if name not in told and rng.random() < 0.35:
            fields.pop(name)  # the worker "forgot" this field, unless told about it
    return fields


@stage(after=[extract])
def file_it(doc, ctx):
    return {"filed": ctx.outputs["extract"]["number"]}


pipeline = Pipeline("documents", [load, extract, file_it], source=lambda: iter(DOCS))


def main() -> int:
    url = os.environ.get("TREADLE_DB", "sqlite:///documents.db")
    runner = Runner(pipeline, open_store(url))
    runner.run()
    for status in runner.items():
        log = status.stages["extract"].attempt_log
        verdicts = ", ".join(f"#{r['attempt']} {r['verdict']['verdict']}" for r in log)
        print(f"{status.item_id}: {status.state.value:16} extract attempts: {verdicts}")
    waiting = runner.items(state="awaiting_review")
    if waiting:
        print(f"{len(waiting)} document(s) escalated to a human: python -m treadle review "
              f"{os.path.relpath(__file__)}:pipeline --db {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
