"""``python -m treadle plan`` and ``rerun --stale``: what a changed pipeline
definition does to the stored items, and recomputing what it made stale."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from .output import table as draw

EXAMPLE = "python -m treadle plan app.py:pipeline --db sqlite:///pipeline.db --json"


def add_arguments(c: argparse.ArgumentParser) -> None:
    """The options of ``plan`` (the parser comes from the CLI's ``cmd`` helper)."""
    c.add_argument("--json", action="store_true", help="print JSON (schema in docs/changes.md)")


def add_rerun_arguments(c: argparse.ArgumentParser) -> None:
    """``rerun --stale [--stage S] [--yes]``."""
    c.add_argument("--stale", action="store_true",
                   help="rerun every result made by an older definition of its stage "
                        "(see plan), and everything downstream")
    c.add_argument("--stage", help="with --stale: only this stage's stale results")
    c.add_argument("--yes", action="store_true", help="with --stale: do not ask on a terminal")


def table(plan: Any) -> str:
    """The plan as a text table and a closing line."""
    if not plan.changes:
        return (f"pipeline {plan.pipeline!r}: {plan.items} item(s) stored; the definition "
                "changes nothing for them.")
    rows = [[c.kind, c.stage or "", c.items, c.downstream or "", c.in_flight or "",
             "yes" if c.needs_decision else "", c.summary] for c in plan.changes]
    body = draw(["change", "stage", "items", "downstream", "in flight", "decide",
                         "what it does"], rows)
    end = ("needs a decision (exit 1): rerun --stale, a migration, or keep as is"
           if plan.needs_decision else "nothing needs a decision")
    return f"pipeline {plan.pipeline!r}: {plan.items} item(s) stored\n{body}\n{end}"


def run(args: argparse.Namespace, runner: Any, url: str, stdin: TextIO, stdout: TextIO,
        stderr: TextIO) -> int:
    """Print the plan; exit 0 when nothing needs a decision, 1 otherwise."""
    plan = runner.plan()
    if args.json:
        stdout.write(json.dumps(plan.to_json(), indent=2) + "\n")
    else:
        stdout.write(table(plan) + "\n")
    return 1 if plan.needs_decision else 0


def rerun_stale(args: argparse.Namespace, runner: Any, url: str, stdin: TextIO, stdout: TextIO,
                stderr: TextIO, *, actor: str, hint: str) -> int:
    """Rerun the stale results (asks first on a terminal unless ``--yes``)."""
    from . import UsageError

    if args.item is not None or args.from_stage is not None:
        raise UsageError("rerun --stale takes no ITEM and no --from: it reruns every stale "
                         "result (narrow it with --stage S)")
    if args.stage is not None:
        runner.pipeline.check_stage(args.stage)
    stale = runner.plan().stale(args.stage)
    if not stale:
        stdout.write("nothing is stale: every result was made by the current definition\n")
        return 0
    for change in stale:
        stdout.write(change.summary + "\n")
    if not args.yes and stdin.isatty():
        total = sum(c.items for c in stale)
        stdout.write(f"rerun {total} stale result(s) and everything downstream? [y/N] ")
        stdout.flush()
        if stdin.readline().strip().lower() not in ("y", "yes"):
            stdout.write("nothing changed\n")
            return 0
    reset = runner.rerun_stale(stage=args.stage, actor=actor)
    items = len({i for i, _ in reset})
    stdout.write(f"{len(reset)} stage result(s) of {items} item(s) back to pending; "
                 f"run: python -m treadle run {hint}\n")
    return 0


__all__ = ["EXAMPLE", "add_arguments", "add_rerun_arguments", "rerun_stale", "run", "table"]
