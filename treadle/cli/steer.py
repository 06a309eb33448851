"""``cancel``, ``pause``, ``resume`` and ``events``: steering and following a pipeline
from any terminal, whichever process or machine runs it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

from ..states import FINISHED_ITEM_STATES
from ..status import Event
from .render import when, whole


def Refused(message: str) -> Exception:
    """The CLI's ``UsageError`` (exit 2) with ``message``."""
    from . import UsageError

    return UsageError(message)


def add_cancel(c: argparse.ArgumentParser) -> None:
    """``cancel TARGET [ITEM...] [--stage S --state X] [--reason R] [--yes]``."""
    c.add_argument("items", metavar="ITEM", nargs="*", help="item ids to cancel")
    c.add_argument("--reason", default="", help="why (kept in the history)")
    c.add_argument("--stage", help="without ITEM: the items whose STAGE is in --state")
    c.add_argument("--state", help="without ITEM: the items having a stage in this state "
                                   "(e.g. pending, running, awaiting_review)")
    c.add_argument("--yes", action="store_true", help="do not ask before a cancel by filter")


def add_pause(c: argparse.ArgumentParser, *, pause: bool) -> None:
    """``pause`` / ``resume`` ``TARGET [--stage S]``."""
    c.add_argument("--stage", help="only this stage (default: the whole pipeline)")
    if pause:
        c.add_argument("--reason", help="why (kept in the history)")


def add_events(c: argparse.ArgumentParser) -> None:
    """``events TARGET [--follow] [--item ID] [--since ID] [--limit N] [--json]``."""
    c.add_argument("--follow", "-f", action="store_true",
                   help="keep printing new events as runners commit them (Ctrl-C ends)")
    c.add_argument("--item", help="only this item's events")
    c.add_argument("--since", type=int, metavar="ID",
                   help="events after this id (default: from the start; with --follow, from now)")
    c.add_argument("--limit", type=int, default=1000, metavar="N",
                   help="at most N events (without --follow; default 1000)")
    c.add_argument("--json", action="store_true", help="one JSON object per line")


def cancel(args: argparse.Namespace, runner: Any, confirm: Callable[[str], bool],
           stdout: TextIO) -> int:
    """Cancel the ITEMs, or (with --stage/--state) the unfinished items the filter finds."""
    if args.items and (args.stage or args.state):
        raise Refused("cancel takes ITEMs or a filter (--stage/--state), not both")
    ids = list(args.items)
    if not ids:
        if not (args.stage or args.state):
            raise Refused("cancel needs ITEMs, or a filter: --stage S --state STATE "
                          "(e.g. --state pending)")
        found = runner.items(stage=args.stage, state=args.state, limit=None)
        ids = [s.item_id for s in found if s.state.value not in FINISHED_ITEM_STATES]
        if not ids:
            stdout.write("no unfinished item matches; nothing to cancel\n")
            return 0
        if not confirm(f"cancel {len(ids)} item(s)"):
            stdout.write("nothing cancelled\n")
            return 0
    done = runner.cancel(ids, reason=args.reason, actor=args.actor)
    states = {i: runner.status(i).state.value for i in done}
    stdout.write(f"cancelled {len(done)} item(s)")
    rolling = [i for i, st in states.items() if st != "cancelled"]
    stdout.write(f"; {len(rolling)} roll back first (the next run does it)\n" if rolling else "\n")
    return 0


def pause(args: argparse.Namespace, runner: Any, stdout: TextIO) -> int:
    what = f"stage {args.stage!r}" if args.stage else "the whole pipeline"
    if runner.pause(args.stage, reason=args.reason, actor=args.actor):
        stdout.write(f"paused {what}: no runner starts it until resume (running stages finish)\n")
    else:
        stdout.write(f"{what} was already paused\n")
    return 0


def resume(args: argparse.Namespace, runner: Any, stdout: TextIO) -> int:
    what = f"stage {args.stage!r}" if args.stage else "every pause"
    if runner.resume(args.stage, actor=args.actor):
        stdout.write(f"resumed {what}; running runners pick the work up, or run again\n")
    else:
        stdout.write(f"nothing to resume: {what.replace('every pause', 'nothing')} was paused\n"
                     if args.stage else "nothing to resume: nothing was paused\n")
    return 0


def events(args: argparse.Namespace, runner: Any, stdout: TextIO) -> int:
    """Print the event feed; with --follow, wait for more until Ctrl-C."""
    if args.limit < 1:
        raise Refused("--limit must be at least 1")
    if args.since is not None and args.since < 0:
        raise Refused("--since is an event id (>= 0)")
    def show(e: Event) -> None:
        stdout.write((json.dumps(event_json(e)) if args.json else event_line(e)) + "\n")

    if not args.follow:
        batch = runner.events(args.since or 0, args.limit, item_id=args.item)
        for e in batch:
            show(e)
        if len(batch) == args.limit:
            stdout.write(f"# more: --since {batch[-1].id}\n" if not args.json else "")
        return 0
    cursor = runner.last_event_id() if args.since is None else args.since
    try:
        while True:
            batch = runner.events(cursor, 1000, item_id=args.item)
            for e in batch:
                show(e)
            stdout.flush()
            if batch:
                cursor = batch[-1].id
            else:
                runner.wait_for_events(1.0)
    except KeyboardInterrupt:
        return 0


def event_json(e: Event) -> dict[str, Any]:
    """An event as plain JSON data (the fields of :class:`~treadle.Event`)."""
    return {"id": e.id, "at": e.at, "item_id": e.item_id, "stage": e.stage, "subtask": e.subtask,
            "state": e.state, "attempt": e.attempt, "actor": e.actor, "error": e.error,
            "details": e.details}


def event_line(e: Event) -> str:
    """One event as one line: id, time, item, stage[/subtask], state, attempt, actor, detail."""
    where = (e.stage or "-") + (f"/{e.subtask}" if e.subtask else "")
    extra = e.error or (whole(e.details) if e.details is not None else "")
    return "  ".join([f"#{e.id}", when(e.at), e.item_id or "(pipeline)", where, e.state,
                      f"attempt {e.attempt}" if e.attempt else "", e.actor, extra]).rstrip()


__all__ = ["Refused", "add_cancel", "add_events", "add_pause", "cancel", "event_json",
           "event_line", "events", "pause", "resume"]
