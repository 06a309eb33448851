"""``python -m treadle items``: list items by stage, state, error and age, a page at a time."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, TextIO

from ..states import DONE_STATES, StageState
from ..status import ItemStatus, StageStatus
from ..store.query import Filter, passes
from .output import Look, table

if TYPE_CHECKING:
    from ..runner import Runner

DEFAULT_LIMIT = 100
MAX_COUNT = 1_000_000_000  # --limit / --offset: far beyond any store, inside every integer type
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class SinceError(ValueError):
    """A ``--since`` that is neither a date/time nor an age."""


def add_arguments(c: argparse.ArgumentParser) -> None:
    """The options of ``items``."""
    c.add_argument("--stage", help="only items whose this stage passes the other filters")
    c.add_argument("--state", choices=[*(s.value for s in StageState), "cancelled"],
                   metavar="STATE",
                   help="a stage in this state (with --stage: that stage); "
                        f"one of {', '.join(s.value for s in StageState)}; or cancelled "
                        "(the cancelled items)")
    c.add_argument("--error", metavar="TEXT",
                   help="the stage's last error contains TEXT (case-insensitive)")
    c.add_argument("--since", metavar="WHEN",
                   help="the stage changed at or after WHEN: 2026-11-30, 2026-11-30T14:05, "
                        "or an age: 30s, 10m, 2h, 3d, 1w")
    c.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"at most N items (default {DEFAULT_LIMIT})")
    c.add_argument("--offset", type=int, default=0, metavar="N",
                   help="skip the first N (the next page: --offset N+limit, as the footer says)")
    c.add_argument("--parent", metavar="ID",
                   help="the child items that item ID of this pipeline spawned (nested "
                        "pipelines: docs/nested.md), with their pipeline and state")
    c.add_argument("--version", dest="item_version", metavar="V",
                   help="only items submitted at pipeline version V (Pipeline(version=...); "
                        "docs/changes.md)")
    c.add_argument("--json", action="store_true", help="print a JSON list (schema in docs/cli.md)")


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``--since``: an ISO date or date-time (local time unless it
    names a zone; ``Z`` is UTC), or an age before ``now`` like ``10m``, ``2h``, ``3d``."""
    now = time.time() if now is None else now
    m = _AGE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SinceError(
            f"--since {text!r} is neither a date/time (2026-11-30, 2026-11-30T14:05) nor an "
            "age (30s, 10m, 2h, 3d, 1w)") from None
    return when.timestamp()


def concerned(status: ItemStatus, flt: Filter) -> tuple[str, StageStatus]:
    """The stage an item is listed for: the first passing the filter, or without a
    filter the first not done yet (the last stage when all are)."""
    stages = list(status.stages.items())
    for name, st in stages:
        if flt.empty:
            if st.state.value not in DONE_STATES:
                return name, st
        elif passes(flt, name, st.state.value, st.error, st.updated_at or 0.0):
            return name, st
    return stages[-1]


def ago(seconds: float) -> str:
    """A short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{max(0, int(seconds))}s"


def rows_of(statuses: list[ItemStatus], flt: Filter) -> list[dict[str, Any]]:
    """The documented ``items --json`` objects."""
    out = []
    for status in statuses:
        name, st = concerned(status, flt)
        out.append({"item_id": status.item_id, "state": status.state.value, "stage": name,
                    "stage_state": st.state.value, "error": st.error,
                    "updated_at": st.updated_at})
    return out


def _children(args: argparse.Namespace, runner: Runner, stdout: TextIO) -> int:
    """``items --parent ID``: the children of one item, a page of them."""
    runner.status(args.parent)  # an unknown parent: ItemNotFoundError (exit 2)
    kids = runner.children(args.parent)[args.offset:args.offset + args.limit]
    rows = [{"item_id": c.item_id, "pipeline": c.pipeline, "stage": c.stage,
             "state": c.state.value} for c in kids]
    if args.json:
        stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        stdout.write(table(["child", "pipeline", "spawned by", "state"],
                           [[r["item_id"], r["pipeline"], r["stage"], r["state"]] for r in rows],
                           Look.of(stdout)) + "\n")
    return 0


def run(args: argparse.Namespace, runner: Runner, url: str,
        stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """List the items passing the filters, a page at a time."""
    if not 1 <= args.limit <= MAX_COUNT:
        raise ValueError(f"--limit must be between 1 and {MAX_COUNT:,}")
    if not 0 <= args.offset <= MAX_COUNT:
        raise ValueError(f"--offset must be between 0 and {MAX_COUNT:,}")
    if args.parent is not None:
        return _children(args, runner, stdout)
    since = parse_since(args.since) if args.since is not None else None
    # one more than asked: is there a next page?
    if getattr(args, "priority", None) is not None:  # items --priority: treadle/cli/flow.py
        from .flow import items_at_priority

        found = items_at_priority(runner, args, since)
    elif args.item_version is not None:  # items --version: the version recorded at submission
        ids = [i for i, v, _, _ in runner.store.item_versions(runner.pipeline)
               if v == args.item_version]
        if args.stage or args.state or args.error or since is not None:
            keep = {s.item_id for s in runner.items(args.stage, args.state, args.error, since,
                                                    None)}
            ids = [i for i in ids if i in keep]
        found = [runner.status(i) for i in ids[args.offset:args.offset + args.limit + 1]]
    else:
        found = runner.items(args.stage, args.state, args.error, since, args.limit + 1,
                             offset=args.offset)
    more = len(found) > args.limit
    flt = Filter(args.stage, args.state, args.error, since)
    rows = rows_of(found[:args.limit], flt)
    if getattr(args, "priority", None) is not None:
        prios = runner.store.item_priorities(runner.pipeline, [r["item_id"] for r in rows])
        for r in rows:
            r["priority"] = prios.get(r["item_id"], 0)
    if args.json:
        stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    if not rows:
        stdout.write("No item matches." if args.offset == 0 else
                     f"No item matches after the first {args.offset}.")
        stdout.write("\n")
        return 0
    _table(rows, stdout)
    first, last = args.offset + 1, args.offset + len(rows)
    footer = f"items {first}-{last}"
    if more:
        footer += f"; next page: --offset {last}"
    stdout.write(footer + "\n")
    return 0


def _table(rows: list[dict[str, Any]], out: TextIO) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    now = time.time()
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, highlight=False)
    prio = bool(rows) and "priority" in rows[0]  # items --priority
    for name, style in (("item", "bold"), *([("priority", "")] if prio else []), ("state", ""),
                        ("stage", ""), ("stage state", ""), ("age", ""), ("last error", "")):
        table.add_column(name, style=style or None, overflow="fold")
    for r in rows:
        age = ago(now - r["updated_at"]) if r["updated_at"] is not None else ""
        table.add_row(r["item_id"], *([str(r["priority"])] if prio else []), r["state"],
                      r["stage"], r["stage_state"], age, r["error"] or "")
    # a terminal's width, or $COLUMNS; else (a pipe, a CI log) 120 columns
    width = None if out.isatty() or os.environ.get("COLUMNS") else 120
    console = Console(file=out, width=width, soft_wrap=False,
                      markup=False, emoji=False, highlight=False)
    console.print(table)


__all__ = ["DEFAULT_LIMIT", "SinceError", "add_arguments", "ago", "concerned", "parse_since",
           "rows_of", "run"]
