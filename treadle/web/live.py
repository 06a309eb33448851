"""``GET /events``: the committed event feed as server-sent events, resumable by ``Last-Event-ID``."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from . import feed

#: Headers of every event stream: never cached, never buffered by a proxy.
STREAM_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


async def events(request: Request) -> Response:
    """Each committed event once, in commit order, as ``event: event`` with ``id:`` its id.

    A client resumes after the id in ``Last-Event-ID`` (browsers send it when
    they reconnect) or ``?since=ID``; without either it starts at the newest
    event. ``?item=ID`` keeps one item's events.
    """
    try:
        cursor = feed.cursor_of(request)
    except ValueError:
        return PlainTextResponse("Last-Event-ID / since must be an event id (an int >= 0)",
                                 status_code=400)
    only = request.query_params.get("item") or None
    broadcast: feed.Broadcast = request.app.state.broadcast

    async def body() -> Any:
        nonlocal cursor
        yield "retry: 1000\n\n"
        async for snap in broadcast.subscribe():
            if snap is None:
                yield ": keep-alive\n\n"
                continue
            if cursor is None:
                cursor = snap.seq or 0
            while True:
                batch = await feed.events_after(broadcast, cursor)
                if not batch:
                    break
                for event in batch:
                    if only is None or event.item_id == only:
                        yield feed.sse("event", feed.event_json(event), id=event.id)
                cursor = batch[-1].id
                if only is not None:  # let the client know how far it got
                    yield f"id: {cursor}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers=STREAM_HEADERS)
