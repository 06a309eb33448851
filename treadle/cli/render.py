"""Plain-text tables and JSON for the CLI (no terminal control codes here)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any

import attrs

from ..states import StageState
from ..status import HistoryEntry, ItemStatus

STATE_COLUMNS = [s.value for s in StageState]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def counts_table(counts: dict[str, dict[str, int]]) -> str:
    used = [s for s in STATE_COLUMNS if any(c.get(s) for c in counts.values())] or ["pending"]
    rows = [[stage, *[c.get(s, 0) for s in used], sum(c.values())] for stage, c in counts.items()]
    return table(["stage", *used, "total"], rows)


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def durations(entries: Sequence[HistoryEntry]) -> dict[str, float]:
    """Seconds each stage's last run took (claim to result), from the history."""
    started: dict[str, float] = {}
    out: dict[str, float] = {}
    for h in entries:
        if h.stage is None or h.subtask is not None:
            continue
        if h.state == "running":
            started[h.stage] = h.at
        elif h.stage in started:
            out[h.stage] = max(0.0, h.at - started.pop(h.stage))
    return out


def item_table(status: ItemStatus, took: dict[str, float] | None = None) -> str:
    took = took or {}
    rows = []
    for name, st in status.stages.items():
        extra = ""
        if st.review is not None:
            extra = f"review: {st.review.decision or 'waiting'} {short(st.review.data, 40)}"
        elif st.error:
            extra = short(st.error, 70)
        elif st.output is not None:
            extra = short(st.output, 50)
        secs = f"{took[name]:.2f}s" if name in took else ""
        rows.append([name, st.state.value, st.attempts, secs, when(st.updated_at), extra])
        for sub in st.subtasks.values():
            rows.append([f"  - {sub.name}", sub.state.value, sub.attempts, "", "",
                         short(sub.error or "", 60)])
        for rec in st.attempt_log:
            v = rec.get("verdict", {})
            why = v.get("message") or v.get("reason") or v.get("note") or ""
            rows.append([f"  #{rec.get('attempt')}", v.get("verdict", ""), "", "", when(rec.get("at")),
                         short(f"{why} | output {short(rec.get('output'), 30)}", 70)])
    version = f" (version {status.version})" if status.version is not None else ""
    return f"item {status.item_id}: {status.state.value}{version}\n" + table(
        ["stage", "state", "attempts", "took", "updated", "output / error / review"], rows)


def item_json(status: ItemStatus, took: dict[str, float] | None = None) -> dict[str, Any]:
    """The documented ``status ITEM --json`` schema."""
    took = took or {}
    return {
        "item_id": status.item_id,
        "state": status.state.value,
        "submitted_at": status.submitted_at,
        "version": status.version,
        "stages": {
            name: {
                "state": st.state.value, "attempts": st.attempts, "output": st.output,
                "error": st.error, "updated_at": st.updated_at,
                "duration_s": round(took[name], 4) if name in took else None,
                "review": attrs.asdict(st.review) if st.review else None,
                "subtasks": {n: {"state": s.state.value, "attempts": s.attempts, "error": s.error}
                             for n, s in st.subtasks.items()},
                "attempt_log": st.attempt_log,
                "fingerprint": st.fingerprint, "version": st.version,
            }
            for name, st in status.stages.items()
        },
    }


def earlier(review: Any) -> str:
    """`` (earlier: approved by ana)`` for a review redone after a definition change."""
    prev = getattr(review, "previous", None)
    if not prev:
        return ""
    return f" (earlier: {prev.get('decision')} by {prev.get('reviewer') or 'someone'})"


def history_table(entries: Sequence[HistoryEntry]) -> str:
    rows = []
    for h in entries:
        note = short(h.error, 60) if h.error else (short(h.details, 60) if h.details else "")
        rows.append([when(h.at), h.stage or "-", h.state, h.attempt, h.actor, note])
    return table(["time", "stage", "state", "attempt", "actor", "error / details"], rows)


def history_json(entries: Sequence[HistoryEntry]) -> list[dict[str, Any]]:
    return [attrs.asdict(h) for h in entries]
