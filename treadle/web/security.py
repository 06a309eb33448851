"""Access token, CSRF token and read-only mode: one ASGI middleware in front of every route."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

#: The cookie that carries the access token after the first visit.
TOKEN_COOKIE = "treadle_token"
#: The cookie that remembers the reviewer's name.
REVIEWER_COOKIE = "treadle_reviewer"
#: The form field (or ``X-CSRF-Token`` header) every POST must carry.
CSRF_FIELD = "csrf"

_UNAUTHORIZED = """<!doctype html><meta charset="utf-8"><title>treadle: token needed</title>
<p>This console needs its access token. Open the URL that
<code>python -m treadle serve</code> printed (it ends in <code>?token=...</code>).</p>"""


#: Sent with every response: no framing, no inline scripts, nothing from other sites.
SECURITY_HEADERS = [
    (b"content-security-policy",
     (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
      b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def new_token() -> str:
    """A fresh access token (printed by ``serve`` at each start)."""
    return secrets.token_urlsafe(24)


def csrf_token(token: str) -> str:
    """The CSRF token of a console: derived from its access token, so it needs no session store."""
    return hmac.new(token.encode(), b"treadle-web-csrf", hashlib.sha256).hexdigest()


def same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


class TokenGate:
    """Refuses every request without the access token (401).

    The token comes as ``?token=`` once (answered with a cookie and a redirect
    to the same URL without it), then as the cookie; scripts may send
    ``Authorization: Bearer TOKEN``. In read-only mode every POST is refused
    (403) before it reaches a route.
    """

    def __init__(self, app: Any, *, token: str, read_only: bool) -> None:
        self.app = app
        self.token = token
        self.read_only = read_only

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        request = Request(scope)
        query = request.query_params.get("token")
        if query is not None and same(query, self.token):
            rest = [(k, v) for k, v in parse_qsl(request.url.query, keep_blank_values=True) if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                path=scope.get("root_path") or "/")
            await response(scope, receive, send)
            return
        bearer = request.headers.get("authorization", "")
        given = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE)
        if not same(given, self.token):
            await HTMLResponse(_UNAUTHORIZED, status_code=401)(scope, receive, send)
            return
        if self.read_only and request.method not in ("GET", "HEAD", "OPTIONS"):
            await HTMLResponse("<p>This console is read-only (started with --read-only): "
                               "nothing can be changed from it.</p>", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _with_headers(send: Any) -> Any:
    async def sender(message: Any) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
        await send(message)

    return sender


async def checked_form(request: Request) -> Any:
    """The POSTed form, after checking its CSRF token; raises ``CsrfError`` without a valid one."""
    form = await request.form()
    given = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token")
    if not isinstance(given, str) or not same(given, request.app.state.csrf):
        raise CsrfError
    return form


class CsrfError(Exception):
    """A POST without the page's CSRF token (answered 403)."""
