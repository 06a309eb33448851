"""``prioritize``, ``--priority`` on ``submit`` and ``run``, and the limits ``status``
shows: flow control from the shell (docs/flow-control.md)."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from ..store.limits import LimitStatus
from .output import Look, table


def add_prioritize(c: argparse.ArgumentParser) -> None:
    """``prioritize TARGET ITEM... --priority N``."""
    c.add_argument("items", metavar="ITEM", nargs="+", help="item ids")
    c.add_argument("--priority", type=int, required=True, metavar="N",
                   help="the new priority (higher runs first; 0 is the default)")


def add_priority_option(c: argparse.ArgumentParser) -> None:
    """``--priority N`` for the items ``submit`` and ``run`` add."""
    c.add_argument("--priority", type=int, metavar="N",
                   help="priority of the items added (higher runs first; default: each "
                        "stage's, else 0)")


def add_items_priority(c: argparse.ArgumentParser) -> None:
    """``items --priority N``."""
    c.add_argument("--priority", type=int, metavar="N",
                   help="only items of priority N or more, highest first (shows their priority)")


def items_at_priority(runner: Any, args: argparse.Namespace, since: float | None) -> list[Any]:
    """The page of ``items --priority N`` (with the other filters, if any): one more
    than ``--limit``, so the caller can tell there is a next page."""
    ids = runner.store.items_at_priority(runner.pipeline, args.priority)
    if args.stage or args.state or args.error or since is not None:
        keep = {s.item_id for s in runner.items(args.stage, args.state, args.error, since, None)}
        ids = [i for i in ids if i in keep]
    return [runner.status(i) for i in ids[args.offset:args.offset + args.limit + 1]]


def prioritize(args: argparse.Namespace, runner: Any, stdout: TextIO) -> int:
    """Give the ITEMs the new priority (all or none: an unknown id changes nothing)."""
    ids = runner.prioritize(args.items, args.priority, actor=args.actor)
    stdout.write(f"priority {args.priority} for {len(ids)} item(s): {', '.join(ids)}\n")
    return 0


def limits_json(limits: list[LimitStatus]) -> list[dict[str, Any]]:
    """``status --json``'s ``limits``: one object per limited stage, then one per named
    limit (``"stage": null``, with its ``"limit"`` name and the ``"stages"`` taking it)."""
    out: list[dict[str, Any]] = []
    for s in limits:
        row: dict[str, Any] = {"stage": s.stage, "rate": s.rate, "concurrency": s.concurrency,
                               "tokens": s.tokens, "waiting": s.waiting, "in_use": s.in_use}
        if s.limit is not None:
            row.update(limit=s.limit, stages=list(s.stages))
        out.append(row)
    return out


def limits_table(limits: list[LimitStatus], look: Look) -> str:
    """``status``'s table of the limits every runner shares."""
    def dash(value: Any) -> Any:
        return "-" if value is None else value

    def name(s: LimitStatus) -> str:
        return s.stage if s.stage is not None else f"{s.limit} ({', '.join(s.stages) or '-'})"

    rows = [[name(s), dash(s.rate), dash(s.tokens), dash(s.concurrency), s.in_use, s.waiting]
            for s in limits]
    return table(["stage / limit (stages)", "rate", "tokens", "global limit", "in use",
                  "waiting"], rows, look)


__all__ = ["add_items_priority", "add_prioritize", "add_priority_option", "items_at_priority",
           "limits_json", "limits_table", "prioritize"]
