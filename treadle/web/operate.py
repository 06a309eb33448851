"""Steering from the console: cancel items (one, or many from a list), pause and resume
stages or the whole pipeline, and the stage metrics of the overview."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import TreadleError
from ..states import ItemState
from . import app as console
from .security import checked_form

#: Item states a cancel applies to (the others are final).
CANCELLABLE = frozenset({ItemState.PENDING.value, ItemState.RUNNING.value,
                         ItemState.AWAITING_REVIEW.value})
#: Seconds over which the overview's throughput is measured.
WINDOW = 300.0


def _who(request: Request, form: Any) -> str:
    return f"web:{console._reviewer(request, form) or 'web'}"


async def cancel_item(request: Request) -> Response:
    """POST /item/cancel: cancel one item, with a reason."""
    form = await checked_form(request)
    item_id = str(form.get("item", ""))
    back = "/item?id=" + quote(item_id)
    msg = await _cancel(request, form, [item_id])
    return console._back(request, back, msg)


async def cancel_many(request: Request) -> Response:
    """POST /items/cancel: cancel the selected items (all or none), with one reason."""
    form = await checked_form(request)
    ids = [str(i) for i in form.getlist("sel")]
    back = str(form.get("next") or "/items")
    if not ids:
        return console._back(request, back, "Nothing selected; nothing was changed.")
    return console._back(request, back, await _cancel(request, form, ids))


async def _cancel(request: Request, form: Any, ids: list[str]) -> str:
    reason = str(form.get("reason", "")).strip()
    if not reason:
        return "A cancel needs a reason; nothing was changed."
    runner = request.app.state.runner
    actor = _who(request, form)
    try:
        done = await run_in_threadpool(lambda: runner.cancel(ids, reason=reason, actor=actor))
    except (TreadleError, KeyError, ValueError, TypeError) as exc:
        return f"refused: {exc}"
    return f"cancelled {len(done)} item(s): {', '.join(done[:5])}{' ...' if len(done) > 5 else ''}"


async def pause(request: Request) -> Response:
    """POST /pause (``stage`` empty: the whole pipeline), with an optional reason."""
    return await _steer(request, pausing=True)


async def resume(request: Request) -> Response:
    """POST /resume (``stage`` empty: lift every pause)."""
    return await _steer(request, pausing=False)


async def _steer(request: Request, *, pausing: bool) -> Response:
    form = await checked_form(request)
    runner = request.app.state.runner
    stage = str(form.get("stage", "")).strip() or None
    what = f"stage {stage!r}" if stage else "the whole pipeline"
    actor = _who(request, form)
    reason = str(form.get("reason", "")).strip() or None
    try:
        if pausing:
            changed = await run_in_threadpool(lambda: runner.pause(stage, reason=reason, actor=actor))
            msg = (f"paused {what}: runners start none of its work; what runs finishes" if changed
                   else f"{what} was paused already; nothing was changed")
        else:
            changed = await run_in_threadpool(lambda: runner.resume(stage, actor=actor))
            msg = (f"resumed {what}" if changed
                   else f"{what} was not paused; nothing was changed")
    except (TreadleError, KeyError, ValueError) as exc:
        msg = f"refused: {exc}"
    return console._back(request, str(form.get("next") or "/"), msg)


def metrics(runner: Any) -> dict[str, Any]:
    """The overview's stage metrics (blocking: call it in a worker thread)."""
    return {"metrics": runner.stage_metrics(window=WINDOW), "window": WINDOW}


async def metrics_fragment(request: Request) -> Response:
    """GET /fragments/metrics: the stage metrics table (the overview refreshes it)."""
    ctx = await run_in_threadpool(metrics, request.app.state.runner)
    return console.render(request, "_metrics.html", ctx)


def seconds(value: float | None) -> str:
    """A duration for the metrics table: ``-`` for none, ms under a second, else s / min / h."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    for unit, n in (("h", 3600), ("min", 60)):
        if value >= n:
            return f"{value / n:.1f} {unit}"
    return f"{value:.1f} s"


def percent(value: float | None) -> str:
    """A rate (0..1) as a percentage, ``-`` for none."""
    return "-" if value is None else f"{value * 100:.0f} %"
