"""``create_app``: the console's ASGI application, its routes and their wiring."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import InvalidDecisionError, InvalidTransitionError, ItemNotFoundError, TreadleError
from ..pipeline import Pipeline
from ..runner import Runner
from ..store.urls import mask_url
from . import feed, operate, queries
from .graph import BOX_H, BOX_W, layout
from .security import (
    CSRF_FIELD,
    REVIEWER_COOKIE,
    CsrfError,
    TokenGate,
    checked_form,
    csrf_token,
    new_token,
)

HERE = Path(__file__).parent
PAGE = 50
#: The vendored htmx files (see static/); their versions are in their names.
HTMX = "htmx-2.0.11.min.js"
HTMX_SSE = "htmx-ext-sse-2.2.4.min.js"


def create_app(pipeline: Pipeline, store: Any, *, read_only: bool = False,
               token: str | None = None) -> Starlette:
    """The web console for ``pipeline`` over ``store``, as an ASGI app.

    Every request needs ``token`` (a fresh one when None; read it back from
    ``app.state.token``): once as ``?token=``, then from a cookie. With
    ``read_only`` every POST is refused. Store calls run in worker threads.
    """
    token = token or new_token()
    runner = Runner(pipeline, store)
    app = Starlette(routes=_routes(), middleware=[Middleware(TokenGate, token=token, read_only=read_only)],
                    exception_handlers={CsrfError: _csrf_refused, ItemNotFoundError: _not_found})
    app.state.runner = runner
    app.state.token = token
    app.state.csrf = csrf_token(token)
    app.state.read_only = read_only
    app.state.store_url = mask_url(str(getattr(store, "url", type(store).__name__)))
    app.state.layout = layout(pipeline)
    app.state.broadcast = feed.Broadcast(runner)
    app.state.templates = _environment()
    return app


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    env.filters["compact"] = lambda v: json.dumps(v, ensure_ascii=False, default=str)
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["seconds"] = operate.seconds
    env.filters["percent"] = operate.percent
    env.globals.update(BOX_W=BOX_W, BOX_H=BOX_H, HTMX=HTMX, HTMX_SSE=HTMX_SSE)
    return env


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: float | None) -> str:
    if ts is None:
        return ""
    s = max(0, int(time.time() - ts))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


# -- rendering ---------------------------------------------------------------

def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    state = request.app.state
    reviewer = unquote(request.cookies.get(REVIEWER_COOKIE, ""))
    ctx = {"request": request, "base": request.scope.get("root_path", ""), "here": _here(request),
           "csrf": state.csrf,
           "csrf_field": CSRF_FIELD, "read_only": state.read_only, "pipeline": state.runner.pipeline,
           "store_url": state.store_url, "reviewer": reviewer, "flash": request.query_params.get("flash"),
           **context}
    html = state.templates.get_template(name).render(ctx)
    return HTMLResponse(html, status_code=status)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return HTMLResponse("<p>Refused: this form has no valid CSRF token. Reload the page and try again.</p>",
                        status_code=403)


async def _not_found(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", {"message": str(exc)}, status=404)


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _here(request: Request) -> str:
    """This page's path and query, relative to the app (as ``next`` values carry it)."""
    base = request.scope.get("root_path", "")
    path = request.url.path
    if base and path.startswith(base):
        path = path[len(base):] or "/"
    return path + (f"?{request.url.query}" if request.url.query else "")


def _back(request: Request, path: str, flash: str) -> RedirectResponse:
    """Redirect to ``path`` inside the app (never elsewhere) with a message."""
    base = request.scope.get("root_path", "")
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        path = "/inbox"
    sep = "&" if "?" in path else "?"
    return RedirectResponse(f"{base}{path}{sep}flash={quote(flash)}", status_code=303)


def _remember(response: Response, reviewer: str) -> Response:
    response.set_cookie(REVIEWER_COOKIE, quote(reviewer), max_age=365 * 86400, samesite="strict",
                        httponly=True)
    return response


def _reviewer(request: Request, form: Any) -> str | None:
    name = (form.get("reviewer") or "").strip() or unquote(request.cookies.get(REVIEWER_COOKIE, "")).strip()
    return name or None


# -- overview ------------------------------------------------------------------

async def overview(request: Request) -> Response:
    ctx = await run_in_threadpool(queries.overview, request.app.state.runner)
    ctx.update(await run_in_threadpool(operate.metrics, request.app.state.runner))
    return render(request, "overview.html", {**ctx, "layout": request.app.state.layout})


async def overview_fragment(request: Request) -> Response:
    ctx = await run_in_threadpool(queries.overview, request.app.state.runner)
    return render(request, "_counts.html", {**ctx, "layout": request.app.state.layout})


async def stream(request: Request) -> Response:
    """Server-sent events: ``changed`` (seq and item counts) and ``counts`` (the overview fragment)."""
    state = request.app.state
    fragment = state.templates.get_template("_counts.html")
    base = request.scope.get("root_path", "")

    async def events() -> Any:
        async for snap in feed.follow(state.broadcast):
            if snap is None:
                yield ": keep-alive\n\n"
                continue
            yield feed.changed_event(snap)
            shown = [s for s in queries.COUNT_STATES if any(c.get(s) for c in snap.counts.values())]
            html = fragment.render(counts=snap.counts, states=shown or ["pending"], items=snap.items,
                                   paused=list(snap.paused), layout=state.layout,
                                   pipeline=state.runner.pipeline, base=base, csrf=state.csrf,
                                   csrf_field=CSRF_FIELD, read_only=state.read_only)
            yield feed.sse("counts", html)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- inbox and reviews -------------------------------------------------------------

async def inbox(request: Request) -> Response:
    q = request.query_params
    stage, text, page = q.get("stage") or None, q.get("q") or None, max(0, _int(q.get("page"), 0) or 0)
    try:
        mine = unquote(request.cookies.get(REVIEWER_COOKIE, "")) if q.get("mine") else None
        result = await run_in_threadpool(queries.inbox, request.app.state.runner, stage=stage, text=text,
                                         page=page, size=PAGE, mine=mine or None)
    except (TreadleError, KeyError) as exc:
        return render(request, "error.html", {"message": str(exc)}, status=400)
    return render(request, "inbox.html", {"result": result, "stage": stage or "", "q": text or "",
                                          "mine": bool(q.get("mine"))})


async def waiting_fragment(request: Request) -> Response:
    """GET /fragments/waiting?stage=S: how many reviews wait now (the inbox's live counter)."""
    stage = request.query_params.get("stage") or None
    counts = await run_in_threadpool(request.app.state.runner.counts)
    n = (counts.get(stage, {}).get(queries.WAITING, 0) if stage
         else sum(c.get(queries.WAITING, 0) for c in counts.values()))
    return HTMLResponse(f"{n} waiting")


async def review(request: Request) -> Response:
    q = request.query_params
    return await _review_response(request, q.get("item", ""), q.get("stage", ""))


async def _review_response(request: Request, item_id: str, stage: str, *, error: str | None = None,
                           text: str | None = None, status: int = 200, **extra: Any) -> Response:
    try:
        ctx = await run_in_threadpool(queries.review_page, request.app.state.runner, item_id, stage)
    except (TreadleError, KeyError) as exc:
        return render(request, "error.html", {"message": str(exc)}, status=404)
    if text is None:
        data = ctx["st"].review.data if ctx["st"].review else None
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str)
    return render(request, "review.html", {**ctx, "error": error, "text": text,
                                           "next": request.query_params.get("next", ""), **extra},
                  status=status)


async def decide(request: Request) -> Response:
    """POST /review/{action}: approve (as is or edited), reject, changes."""
    form = await checked_form(request)
    action = request.path_params["action"]
    item_id, stage = str(form.get("item", "")), str(form.get("stage", ""))
    attempt = _int(form.get("attempt"))
    reviewer = _reviewer(request, form)
    runner = request.app.state.runner
    text = form.get("data")
    if reviewer is None:
        return await _review_response(request, item_id, stage, status=400, text=text,
                                      error="Tell us your name first: it is recorded with each decision.")
    kwargs: dict[str, Any] = {"attempt": attempt, "reviewer": reviewer}
    fn: Callable[..., None]
    if action == "approve":
        fn = queries.approve
        kwargs["note"] = str(form.get("note", "")).strip() or None
        kwargs["take"] = _int(form.get("take"))
        choice = [str(c) for c in form.getlist("choice")]
        if choice:
            kwargs["choice"] = choice if form.get("multiple") == "1" else choice[0]
        if form.get("answer") == "1":  # the review's form, field by field
            fields = {str(k)[6:]: str(v) for k, v in form.multi_items() if str(k).startswith("field:")}
            try:
                answer = await run_in_threadpool(queries.form_answer, runner, item_id, stage, fields)
            except ValueError as exc:
                return await _review_response(request, item_id, stage, status=400,
                                              error=f"{exc}; nothing was saved.")
            kwargs.update(data=answer, edited=True)
        elif text is not None:
            try:
                data = json.loads(str(text))
            except json.JSONDecodeError as exc:
                return await _review_response(
                    request, item_id, stage, status=400, text=str(text),
                    error=f"The edited data is not valid JSON: {exc}. Nothing was saved.")
            changes = await run_in_threadpool(queries.diff, runner, item_id, stage, data)
            if changes and form.get("confirm") != "1":
                return render(request, "confirm.html", {
                    "item_id": item_id, "stage": stage, "attempt": attempt, "diff": changes,
                    "text": str(text), "note": kwargs["note"] or "", "reviewer_name": reviewer,
                    "choice": choice, "multiple": form.get("multiple") == "1",
                    "next": str(form.get("next") or "/inbox")})
            kwargs.update(data=data, edited=bool(changes))
        done = f"approved {item_id} at {stage}" + (
            " with the form's answer" if form.get("answer") == "1" else
            " with edits" if kwargs.get("edited") else "")
        if choice:
            done += f", choosing {', '.join(choice)}"
        if kwargs["take"] is not None:
            done += f" (the output of attempt {kwargs['take']})"
    elif action == "reject":
        fn, reason = queries.reject, str(form.get("reason", "")).strip()
        if not reason:
            return await _review_response(request, item_id, stage, status=400,
                                          error="A rejection needs a reason; nothing was changed.")
        kwargs["reason"], done = reason, f"rejected {item_id} at {stage}"
    elif action == "changes":
        fn, feedback = queries.request_changes, str(form.get("feedback", "")).strip()
        if not feedback:
            return await _review_response(request, item_id, stage, status=400,
                                          error="Say what to change; nothing was changed.")
        kwargs["feedback"], done = feedback, f"sent {item_id} at {stage} back with feedback"
    else:
        return HTMLResponse("unknown action", status_code=404)
    try:
        await run_in_threadpool(functools.partial(fn, runner, item_id, stage, **kwargs))
    except InvalidDecisionError as exc:  # a choice or answer that does not fit: say which
        return await _review_response(request, item_id, stage, status=400, error=str(exc))
    except InvalidTransitionError as exc:
        return _remember(await _review_response(request, item_id, stage, status=409, error=str(exc),
                                                refused=True), reviewer)
    except (TreadleError, ValueError) as exc:
        return await _review_response(request, item_id, stage, status=400, error=str(exc))
    return _remember(_back(request, str(form.get("next") or "/inbox"), done), reviewer)


async def preview(request: Request) -> Response:
    """POST /review/preview: the diff of the edited data (an htmx fragment); changes nothing."""
    form = await checked_form(request)
    try:
        data = json.loads(str(form.get("data", "")))
    except json.JSONDecodeError as exc:
        return render(request, "_diff.html", {"diff": None, "error": f"not valid JSON: {exc}"})
    changes = await run_in_threadpool(queries.diff, request.app.state.runner, str(form.get("item", "")),
                                      str(form.get("stage", "")), data)
    return render(request, "_diff.html", {"diff": changes, "error": None})


async def bulk_decide(request: Request) -> Response:
    """POST /inbox/decide: approve the selected reviews as they are, or reject them with one reason."""
    form = await checked_form(request)
    reviewer = _reviewer(request, form)
    back = str(form.get("next") or "/inbox")
    if reviewer is None:
        return _back(request, back, "Tell us your name first: it is recorded with each decision.")
    if form.get("do") not in ("approve", "reject"):
        return _back(request, back, "Choose Approve selected or Reject selected; nothing was changed.")
    reject = form.get("do") == "reject"
    reason = str(form.get("reason", "")).strip()
    if reject and not reason:
        return _back(request, back, "Rejecting needs a reason; nothing was changed.")
    selected = []
    for raw in form.getlist("sel"):
        try:
            item_id, stage, attempt = json.loads(str(raw))
        except (ValueError, TypeError):
            return HTMLResponse("bad selection", status_code=400)
        selected.append((str(item_id), str(stage), _int(attempt)))
    if not selected:
        return _back(request, back, "Nothing selected.")
    done, refused = await run_in_threadpool(queries.decide_many, request.app.state.runner, selected,
                                            reviewer, reason if reject else None)
    msg = f"{'rejected' if reject else 'approved'} {len(done)} item(s)"
    if refused:
        msg += f"; refused {len(refused)}: " + " ".join(refused[:3])
    return _remember(_back(request, back, msg), reviewer)


async def set_reviewer(request: Request) -> Response:
    form = await checked_form(request)
    name = str(form.get("reviewer", "")).strip()
    back = str(form.get("next") or "/inbox")
    if not name:
        return _back(request, back, "A reviewer name cannot be empty.")
    return _remember(_back(request, back, f"reviewing as {name}"), name)


# -- items ---------------------------------------------------------------------

async def items(request: Request) -> Response:
    q = request.query_params
    stage, state, page = q.get("stage") or None, q.get("state") or None, max(0, _int(q.get("page"), 0) or 0)
    error = q.get("error") or None
    try:
        result = await run_in_threadpool(queries.items_page, request.app.state.runner, stage=stage,
                                         state=state, page=page, size=PAGE, error=error)
    except (TreadleError, KeyError, ValueError) as exc:
        return render(request, "error.html", {"message": str(exc)}, status=400)
    return render(request, "items.html", {"result": result, "stage": stage or "", "state": state or "",
                                          "error": error or "", "states": queries.FILTER_STATES,
                                          "cancellable": operate.CANCELLABLE})


async def item(request: Request) -> Response:
    ctx = await run_in_threadpool(queries.item_page, request.app.state.runner,
                                  request.query_params.get("id", ""))
    name = "_item_stages.html" if request.query_params.get("fragment") else "item.html"
    return render(request, name, ctx)


async def item_action(request: Request) -> Response:
    form = await checked_form(request)
    runner = request.app.state.runner
    item_id = str(form.get("item", ""))
    who = _reviewer(request, form) or "web"
    back = "/item?" + "id=" + quote(item_id)
    action = request.path_params["action"]
    if action not in ("retry", "rerun"):
        return HTMLResponse("unknown action", status_code=404)
    try:
        if action == "retry":
            moved = await run_in_threadpool(lambda: runner.retry(item_id, actor=f"web:{who}"))
            msg = f"{len(moved)} stage(s) back to pending; a runner picks them up"
        else:
            stage = str(form.get("stage", ""))
            reset = await run_in_threadpool(
                lambda: runner.rerun(item_id, from_stage=stage, actor=f"web:{who}"))
            msg = f"{', '.join(reset) or 'nothing'} back to pending; a runner picks them up"
    except (TreadleError, ValueError, KeyError) as exc:
        msg = f"refused: {exc}"
    return _back(request, back, msg)


def _routes() -> list[Any]:
    from . import live

    return [
        Route("/events", live.events),
        Route("/fragments/metrics", operate.metrics_fragment),
        Route("/pause", operate.pause, methods=["POST"]),
        Route("/resume", operate.resume, methods=["POST"]),
        Route("/items/cancel", operate.cancel_many, methods=["POST"]),
        Route("/item/cancel", operate.cancel_item, methods=["POST"]),
        Route("/", overview),
        Route("/fragments/overview", overview_fragment),
        Route("/stream", stream),
        Route("/inbox", inbox),
        Route("/fragments/waiting", waiting_fragment),
        Route("/inbox/decide", bulk_decide, methods=["POST"]),
        Route("/review", review),
        Route("/review/preview", preview, methods=["POST"]),
        Route("/review/{action}", decide, methods=["POST"]),
        Route("/reviewer", set_reviewer, methods=["POST"]),
        Route("/items", items),
        Route("/item", item),
        Route("/item/{action:str}", item_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
