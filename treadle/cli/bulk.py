"""Bulk decisions from the shell: ``approve --all``, ``reject --all``, ``retry --all-failed``.

Each selects by filter, says how many it will touch at which stages, asks on
a terminal (``--yes`` skips the question; without a terminal ``--yes`` is
required), then applies exactly that selection in batches (one transaction
each). What someone else decided or retried in between is skipped and counted.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, TextIO

from .. import _bulk
from ..status import BulkResult

if TYPE_CHECKING:
    from ..runner import Runner


class NeedsYes(ValueError):
    """A bulk change asked for without a terminal to confirm it on, and without ``--yes``."""


def add_arguments(approve: argparse.ArgumentParser, reject: argparse.ArgumentParser,
                  retry: argparse.ArgumentParser) -> None:
    """The bulk options of ``approve``, ``reject`` and ``retry``."""
    for c, verb in ((approve, "approve"), (reject, "reject")):
        c.add_argument("--all", action="store_true",
                       help=f"{verb} every review waiting (narrowed by --stage, --where-message) "
                            "instead of ITEM STAGE")
        c.add_argument("--stage", dest="only_stage", metavar="S", help="with --all: only at stage S")
        c.add_argument("--where-message", metavar="TEXT",
                       help="with --all: only reviews whose message contains TEXT (case-insensitive)")
    retry.add_argument("--error", metavar="TEXT",
                       help="with --all-failed: only stages whose last error contains TEXT "
                            "(case-insensitive)")
    for c in (approve, reject, retry):
        c.add_argument("--yes", "-y", action="store_true",
                       help="do not ask before a bulk change (needed when not on a terminal)")


def per_stage(keys: Iterable[tuple[str, str] | tuple[str, str, int]]) -> str:
    """``600 at check, 400 at review``."""
    counts = Counter(k[1] for k in keys)
    return ", ".join(f"{n} at {stage}" for stage, n in counts.items())


def confirm(question: str, yes: bool, stdin: TextIO, stdout: TextIO) -> bool:
    """True to go ahead: ``--yes``, or "y" typed on a terminal."""
    if yes:
        return True
    if not stdin.isatty():
        raise NeedsYes(f"not a terminal, so nobody can confirm: {question}? Pass --yes to go ahead.")
    stdout.write(f"{question}? [y/N] ")
    stdout.flush()
    return stdin.readline().strip().lower() in ("y", "yes")


def _check_single_options(args: argparse.Namespace, name: str) -> None:
    if args.item is not None or args.stage is not None:
        raise ValueError(f"{name} --all takes no ITEM or STAGE; narrow it with --stage S "
                         "and --where-message TEXT")
    if getattr(args, "data", None) is not None or args.expect is not None:
        raise ValueError(f"--data and --expect are for one decision, not {name} --all")


def decide(args: argparse.Namespace, runner: Runner, approve: bool, reviewer: str,
           hint: str, stdin: TextIO, stdout: TextIO) -> int:
    """``approve --all`` / ``reject --all``."""
    name = "approve" if approve else "reject"
    _check_single_options(args, name)
    stage = runner.pipeline.check_stage(args.only_stage) if args.only_stage else None
    keys = _bulk.select_reviews(runner.store, runner.pipeline, stage, args.where_message)
    if not _go_ahead(keys, name, "review(s)", "no review waiting matches", args.yes, stdin, stdout):
        return 0
    runner._prepare()
    note = args.note if approve else args.reason
    result = _bulk.decide(runner.store, runner.pipeline, keys, approve=approve, note=note,
                          reviewer=reviewer)
    _report("approved" if approve else "rejected", result, "decided by someone else meanwhile", stdout)
    if approve and result.done:
        stdout.write(f"continue with: python -m treadle run {hint}\n")
    return 0


def retry(args: argparse.Namespace, runner: Runner, actor: str, hint: str,
          stdin: TextIO, stdout: TextIO) -> int:
    """``retry --all-failed``."""
    stage = runner.pipeline.check_stage(args.stage) if args.stage else None
    flt = _bulk.make_filter(runner.pipeline, stage, error=args.error)
    keys = _bulk.select_failed(runner.store, runner.pipeline, flt.stage, flt.error)
    if not _go_ahead(keys, "retry", "failed stage(s)", "no failed stage matches", args.yes,
                     stdin, stdout):
        return 0
    runner._prepare()
    result = _bulk.retry(runner.store, runner.pipeline, keys, actor=actor)
    _report("back to pending:", result, "retried by someone else meanwhile, or rolled back", stdout)
    if result.done:
        stdout.write(f"run: python -m treadle run {hint}\n")
    return 0


def _go_ahead(keys: Sequence[tuple[str, str] | tuple[str, str, int]], verb: str, what: str,
              none: str, yes: bool, stdin: TextIO, stdout: TextIO) -> bool:
    """Say what the selection holds and ask (unless ``--yes``); True to go ahead."""
    if not keys:
        stdout.write(f"nothing to {verb}: {none}.\n")
        return False
    stdout.write(f"{len(keys)} {what} match: {per_stage(keys)}\n")
    if not confirm(f"{verb} these {len(keys)} {what}", yes, stdin, stdout):
        stdout.write("nothing changed.\n")
        return False
    return True


def _report(did: str, result: BulkResult, why: str, stdout: TextIO) -> None:
    line = f"{did} {len(result.done)}"
    if result.done:
        line += f" ({per_stage(result.done)})"
    if result.skipped:
        line += f"; skipped {len(result.skipped)} ({why})"
    stdout.write(line + "\n")


__all__ = ["NeedsYes", "add_arguments", "confirm", "decide", "per_stage", "retry"]
