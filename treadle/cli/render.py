"""The CLI's tables (through rich, see ``output.py``) and JSON documents."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from typing import Any

import attrs

from ..metrics import StageMetrics
from ..states import ItemState, StageState
from ..status import HistoryEntry, ItemStatus
from .output import PLAIN, Look, table

#: Columns of the counts table: the stage states, then ``cancelled`` (the stages of
#: cancelled items that never ran to the end: see ``store/counts.py``).
STATE_COLUMNS = [*(s.value for s in StageState), ItemState.CANCELLED.value]


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def counts_table(counts: dict[str, dict[str, int]], look: Look = PLAIN) -> str:
    used = [s for s in STATE_COLUMNS if any(c.get(s) for c in counts.values())] or ["pending"]
    rows = [[stage, *[c.get(s, 0) for s in used], sum(c.values())] for stage, c in counts.items()]
    return table(["stage", *used, "total"], rows, look)


def whole(value: Any) -> str:
    """A value as one compact text, never cut (a string as it is, anything else as JSON)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


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


def item_table(status: ItemStatus, took: dict[str, float] | None = None, look: Look = PLAIN) -> str:
    took = took or {}
    rows = []
    for name, st in status.stages.items():
        extra = ""
        if st.review is not None:
            extra = f"review: {st.review.decision or 'waiting'} {whole(st.review.data)}"
            if st.review.message:
                extra += f"\nmessage: {st.review.message}"
        elif st.error:
            extra = st.error
        elif st.output is not None:
            extra = whole(st.output)
        secs = f"{took[name]:.2f}s" if name in took else ""
        rows.append([name, st.state.value, st.attempts, secs, when(st.updated_at), extra])
        for sub in st.subtasks.values():
            rows.append([f"  - {sub.name}", sub.state.value, sub.attempts, "", "", sub.error or ""])
        for rec in st.attempt_log:
            v = rec.get("verdict", {})
            why = v.get("message") or v.get("reason") or v.get("note") or ""
            rows.append([f"  #{rec.get('attempt')}", v.get("verdict", ""), "", "", when(rec.get("at")),
                         f"{why} | output {whole(rec.get('output'))}"])
    version = f" (version {status.version})" if status.version is not None else ""
    return f"item {status.item_id}: {status.state.value}{version}\n" + table(
        ["stage", "state", "attempts", "took", "updated", "output / error / review"], rows, look)


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


def history_table(entries: Sequence[HistoryEntry], look: Look = PLAIN) -> str:
    rows = [[when(h.at), h.stage or "-", h.subtask or "", h.state, h.attempt, h.actor,
             "\n".join(filter(None, [h.error or "", details_text(h.details)]))]
            for h in entries]
    return table(["time", "stage", "subtask", "state", "attempt", "actor", "error / details"], rows, look)


def details_text(details: Any) -> str:
    """A history entry's details for people: a decision's fields and its diff one per line."""
    if not isinstance(details, dict):
        return whole(details)
    lines = []
    rest = {k: v for k, v in details.items() if k not in ("diff", "edited")}
    if rest:
        lines.append(", ".join(f"{k}: {whole(v)}" for k, v in rest.items() if v is not None))
    for op in details.get("diff") or []:
        if not isinstance(op, dict):
            continue
        path = op.get("path", "/")
        if op.get("op") == "add":
            lines.append(f"+ {path}: {whole(op.get('new'))}")
        elif op.get("op") == "remove":
            lines.append(f"- {path}: {whole(op.get('old'))}")
        else:
            lines.append(f"~ {path}: {whole(op.get('old'))} -> {whole(op.get('new'))}")
    return "\n".join(line for line in lines if line)


def seconds(value: float | None) -> str:
    """A duration for people: 0.042s, 12.5s, 3m05s, 2h07m."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.3f}s" if value < 1 else f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    m = int(value // 60)
    if m < 60:
        return f"{m}m{int(value % 60):02d}s"
    return f"{m // 60}h{m % 60:02d}m"


def metrics_table(metrics: dict[str, StageMetrics], look: Look = PLAIN) -> str:
    """``status``'s per-stage metrics (see :class:`treadle.StageMetrics`)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:.1f}%"

    rows = [[m.stage, m.done, m.runs, seconds(m.p50), seconds(m.p95), pct(m.failure_rate),
             pct(m.retry_rate), f"{m.throughput:.1f}", m.waiting_reviews,
             seconds(m.oldest_review_age) if m.waiting_reviews else "-"]
            for m in metrics.values()]
    return table(["stage", "done", "runs", "p50", "p95", "failed", "retries",
                  "per min", "reviews", "oldest review"], rows, look)


def metrics_json(metrics: dict[str, StageMetrics]) -> dict[str, dict[str, Any]]:
    """The ``metrics`` object of ``status --json``: stage -> the fields of StageMetrics."""
    return {name: attrs.asdict(m, filter=lambda a, _: a.name != "stage") for name, m in metrics.items()}


def history_json(entries: Sequence[HistoryEntry]) -> list[dict[str, Any]]:
    return [attrs.asdict(h) for h in entries]
