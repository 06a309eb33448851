"""The scenario of the crash-point test (tests/test_crash_points.py), and its runner process.

``python tests/crash/points.py URL --setup`` creates the store at URL (at
the code's schema version) and submits the items. ``python
tests/crash/points.py URL LOG`` then opens the store at URL (migrating
it with one extra schema step, see :func:`probe_migration`), submits the
items (known ids are ignored) and *drives* the scenario to quiescence: run
until nothing more can move, decide every review still pending, run again,
until nothing awaits a decision. Run with ``TREADLE_CRASH_AT=<point>`` it
dies at that point (exit 86); run again without it, it finishes the work.

The pipeline meets every crash point of ``treadle._crash.CRASH_POINTS``:

    prep -> fan (FanOut: x, y) -> review (Review) -> final

with ``on_failure="rollback"``; ``prep`` and ``fan`` have rollbacks. Items
``a``..``d`` are approved (``a`` with an edit) and complete; ``r`` is
rejected at review and ``bad`` is approved but fails for good at ``final``:
both are rolled back (``fan`` then ``prep``).

Side effects, each one line ``item key attempt pid`` appended to LOG
(``O_APPEND``, one ``write``, ``fsync``) *before* the work, so the log shows
every execution, including one cut short by a crash:

- a stage: ``key`` is the stage name (``attempt`` its attempt);
- a subtask of ``fan``: ``key`` is ``fan/x`` or ``fan/y`` (attempt ``0``:
  a subtask is not told its attempt);
- a rollback: ``key`` is ``<stage>!rollback`` (attempt: the stage's).

Beside LOG, the process appends ``LOG.decisions`` (one JSON line per
decision, written once ``approve``/``reject`` has *returned*, i.e. after
its transaction committed) and ``LOG.signals`` (one line per
``stage_completed`` signal received: ``item stage attempt pid``) and
``LOG.pids`` (its pid, first thing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from treadle import (
    FanOut,
    Pipeline,
    Review,
    Runner,
    SubTask,
    open_store,
    signals,
    stage,
)

NAME = "crashpoints"
ITEMS = ("a", "b", "c", "d", "r", "bad")
APPROVED = ("a", "b", "c", "d", "bad")
REJECTED = ("r",)
FAILING = ("bad",)
STAGES = ("prep", "fan", "review", "final")
SUBTASKS = ("x", "y")
SLOW_SUBTASK, SLOW_SECONDS = "y", 0.05
ROLLBACK_STAGES = ("prep", "fan")
EDIT = {"a": {"title": "EDITED(a)"}}
REJECT_REASON = "duplicate"

#: The column the probe migration adds (see :func:`probe_migration`).
PROBE_COLUMN = "crash_probe"


def items() -> list[dict[str, Any]]:
    return [{"id": i, "n": k} for k, i in enumerate(ITEMS)]


# -- expectations ----------------------------------------------------------------
def expected_item_state(item_id: str) -> str:
    return "completed" if item_id not in REJECTED + FAILING else "rolled_back"


def expected_stage_states(item_id: str) -> dict[str, str]:
    if item_id in REJECTED:
        return {"prep": "rolled_back", "fan": "rolled_back", "review": "rejected", "final": "pending"}
    if item_id in FAILING:
        return {"prep": "rolled_back", "fan": "rolled_back", "review": "completed", "final": "failed"}
    return {s: "completed" for s in STAGES}


def review_data(item_id: str) -> dict[str, Any]:
    return {"title": f"T({item_id})", "fan": {s: f"{s}({item_id})" for s in SUBTASKS}}


def expected_outputs(item_id: str) -> dict[str, Any]:
    """Stage -> output, for the stages that keep one (completed or rolled back)."""
    out: dict[str, Any] = {"prep": {"p": f"P({item_id})"},
                           "fan": {s: f"{s}({item_id})" for s in SUBTASKS}}
    if item_id in APPROVED:
        out["review"] = EDIT.get(item_id, review_data(item_id))
    if item_id in APPROVED and item_id not in FAILING:
        out["final"] = {"title": out["review"]["title"]}
    return out


def expected_executions(item_id: str) -> set[str]:
    """The side-effect keys of ``item_id`` that must have run at least once."""
    keys = {"prep", "fan", "review", *(f"fan/{s}" for s in SUBTASKS)}
    if item_id in APPROVED:
        keys.add("final")
    if item_id in REJECTED + FAILING:
        keys |= {f"{s}!rollback" for s in ROLLBACK_STAGES}
    return keys


# -- the pipeline ------------------------------------------------------------------
def build(log_path: str | None = None) -> Pipeline:
    """The scenario's pipeline; ``log_path=None`` builds it for inspection only."""

    def effect(item_id: str, key: str, attempt: int) -> None:
        if log_path is None:
            raise RuntimeError("this pipeline was built for inspection only")
        line = f"{item_id} {key} {attempt} {os.getpid()}\n".encode()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def undo(item: dict, ctx: Any) -> None:
        effect(item["id"], f"{ctx.stage}!rollback", ctx.attempt)

    def sub(item_id: str, name: str) -> str:
        effect(item_id, f"fan/{name}", 0)
        if name == SLOW_SUBTASK:  # widen the window where x is committed, y is not
            time.sleep(SLOW_SECONDS)
        return f"{name}({item_id})"

    @stage(rollback=undo)
    def prep(item: dict, ctx: Any) -> dict:
        effect(item["id"], ctx.stage, ctx.attempt)
        return {"p": f"P({item['id']})"}

    @stage(after=[prep], rollback=undo)
    def fan(item: dict, ctx: Any) -> FanOut:
        effect(item["id"], ctx.stage, ctx.attempt)
        if ctx.outputs["prep"] != {"p": f"P({item['id']})"}:
            raise AssertionError(f"{item['id']}: prep output {ctx.outputs['prep']!r}")
        return FanOut([SubTask(n, sub, item["id"], n) for n in SUBTASKS])

    @stage(after=[fan])
    def review(item: dict, ctx: Any) -> Review:
        effect(item["id"], ctx.stage, ctx.attempt)
        data = review_data(item["id"])
        if ctx.outputs["fan"] != data["fan"]:
            raise AssertionError(f"{item['id']}: fan output {ctx.outputs['fan']!r}")
        return Review(data, message="check the title")

    @stage(after=[review])
    def final(item: dict, ctx: Any) -> dict:
        effect(item["id"], ctx.stage, ctx.attempt)
        if item["id"] in FAILING:
            raise RuntimeError(f"{item['id']} fails for good")
        return {"title": ctx.outputs["review"]["title"]}

    return Pipeline(NAME, [prep, fan, review, final], on_failure="rollback")


# -- the schema step --------------------------------------------------------------
@contextlib.contextmanager
def probe_migration() -> Iterator[int]:
    """Make this process's treadle one schema version newer than the code's:
    the extra step adds the column :data:`PROBE_COLUMN` (``DEFAULT 0``) to
    ``treadle_item``. A store created without it is migrated when opened.
    Yields the schema version the store has once migrated."""
    import peewee as pw
    from playhouse.migrate import migrate

    from treadle.store import schema

    base = schema.SCHEMA_VERSION
    target = base + 1

    def add_probe(migrator: Any) -> None:
        # Nullable with a server-side default: treadle's own inserts do not name it.
        field = pw.IntegerField(null=True, constraints=[pw.SQL("DEFAULT 0")])
        migrate(migrator.add_column("treadle_item", PROBE_COLUMN, field))

    schema.SCHEMA_VERSION = target
    schema.MIGRATIONS[target] = add_probe
    try:
        yield target
    finally:
        schema.SCHEMA_VERSION = base
        schema.MIGRATIONS.pop(target, None)


# -- driving -------------------------------------------------------------------
def append_line(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def decide(runner: Runner, item_id: str, reviewer: str, decisions_log: str) -> None:
    """Make the scenario's decision on ``item_id``; log it once it has committed."""
    note = f"by {reviewer}"
    if item_id in REJECTED:
        runner.reject(item_id, "review", reason=REJECT_REASON, reviewer=reviewer)
        decision = "rejected"
    elif item_id in EDIT:
        runner.approve(item_id, "review", data=EDIT[item_id], note=note, reviewer=reviewer)
        decision = "approved"
    else:
        runner.approve(item_id, "review", note=note, reviewer=reviewer)
        decision = "approved"
    append_line(decisions_log, json.dumps({"item": item_id, "decision": decision,
                                           "reviewer": reviewer, "pid": os.getpid()}) + "\n")


def drive(runner: Runner, reviewer: str, decisions_log: str, rounds: int = 5) -> list[Any]:
    """Run to quiescence; decide what awaits review; again, until nothing does."""
    reports = []
    for _ in range(rounds):
        reports.append(runner.run())
        waiting = sorted(s.item_id for s in runner.items(stage="review", state="awaiting_review", limit=None))
        if not waiting:
            return reports
        for item_id in waiting:
            decide(runner, item_id, reviewer, decisions_log)
    raise RuntimeError(f"still awaiting review after {rounds} rounds")


def setup(url: str) -> None:
    """Create the store at the code's own schema version (without the probe
    step) and submit the items (actor ``setup``), running nothing."""
    store = open_store(url)
    try:
        Runner(build(None), store).submit(*items(), actor="setup")
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("log", nargs="?")
    ap.add_argument("--setup", action="store_true",
                    help="only create the store (schema without the probe step) and submit")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--lease", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.setup:
        setup(args.url)
        return 0
    if args.log is None:
        ap.error("LOG is required unless --setup")
    append_line(args.log + ".pids", f"{os.getpid()}\n")  # first: the crash may come at open

    def on_completed(sender: Any, **kw: Any) -> None:
        append_line(args.log + ".signals",
                    f"{kw['item_id']} {kw['stage']} {kw.get('attempt')} {os.getpid()}\n")

    signals.stage_completed.connect(on_completed)
    with probe_migration():
        store = open_store(args.url)
        try:
            runner = Runner(build(args.log), store, workers=args.workers, lease=args.lease)
            runner.submit(*items())
            reports = drive(runner, f"pid{os.getpid()}", args.log + ".decisions")
        finally:
            store.close()
    last = reports[-1]
    print(json.dumps({"runs": len(reports), "items": last.items, "interrupted": last.interrupted}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
