"""Notifiers for ``@stage(notify=...)``: tell people a review waits.

    from treadle.contrib.notify import email, webhook

    @stage(notify=[webhook("https://chat.example.com/hooks/reviews"),
                   email(["legal@example.com"], host="smtp.example.com")])
    def check(item):
        return Review(item, message="Legal check")

A notifier is any callable taking a :class:`ReviewRequest` (``print`` will
do); what it raises is recorded as a failed send. Each request is sent once
after its commit, from a thread that never blocks the run, and recorded in
the item's history (``notified``: sent, or failed with the error). A process
killed between the commit and the send sends it on its next run, so a
receiver may see a request twice: both carry the same ``id``.
"""

from __future__ import annotations

import json
import smtplib
import urllib.request
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from tenacity import Retrying, stop_after_attempt, wait_exponential

from treadle._notify import Notifier, ReviewRequest


def _masked(url: str) -> str:
    """The URL without user, password or query (which may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@attrs.frozen
class Webhook:
    """POST each request as JSON to ``url``; retried with tenacity (``attempts`` in all,
    exponential wait from ``wait`` seconds); each try times out after ``timeout`` s.

    The body is :meth:`ReviewRequest.to_dict`; the ``Idempotency-Key`` header
    carries the request id. A status of 400 or more counts as a failure.
    """

    url: str
    timeout: float = 10.0
    attempts: int = 3
    wait: float = 0.5
    headers: Mapping[str, str] = attrs.field(factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        """How the history names this notifier: its label, else its URL (no credentials)."""
        return self.label or f"webhook {_masked(self.url)}"

    def __call__(self, request: ReviewRequest) -> None:
        body = json.dumps(request.to_dict(), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": request.id,
                   **self.headers}
        for attempt in Retrying(stop=stop_after_attempt(self.attempts),
                                wait=wait_exponential(multiplier=self.wait, max=30), reraise=True):
            with attempt:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()


def webhook(url: str, *, timeout: float = 10.0, attempts: int = 3, wait: float = 0.5,
            headers: Mapping[str, str] | None = None, name: str = "") -> Webhook:
    """A notifier that POSTs each review request as JSON to ``url`` (see :class:`Webhook`).

    ``name`` is how the history records it (default ``webhook URL``); what was
    sent is remembered per name, so keep it when the URL changes.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook() needs an http:// or https:// URL, got {_masked(url)!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"webhook(attempts=...) must be an int >= 1, got {attempts!r}")
    return Webhook(url, timeout, attempts, wait, dict(headers or {}), name)


def _text(request: ReviewRequest) -> str:
    lines = [f"{'Escalated: ' if request.kind == 'escalation' else ''}"
             f"item {request.item_id} waits for review at stage {request.stage} "
             f"(pipeline {request.pipeline}).", ""]
    if request.message:
        lines += [request.message, ""]
    if request.options:
        lines.append(f"Options: {', '.join(request.options)}")
    if request.assignees:
        lines.append(f"Assigned to: {', '.join(request.assignees)}")
    lines += ["", json.dumps(request.data, indent=2, ensure_ascii=False, default=str), "",
              f"Review it: python -m treadle reviews TARGET   (request {request.id})"]
    return "\n".join(lines)


@attrs.frozen
class Email:
    """Send each request as a plain-text e-mail through an SMTP server (smtplib)."""

    to: tuple[str, ...]
    host: str = "localhost"
    port: int = 25
    sender: str = "treadle@localhost"
    starttls: bool = False
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    timeout: float = 10.0
    label: str = ""

    @property
    def name(self) -> str:
        """How the history names this notifier: its label, else its recipients."""
        return self.label or f"email {', '.join(self.to)}"

    def __call__(self, request: ReviewRequest) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        what = "escalated review" if request.kind == "escalation" else "review"
        msg["Subject"] = f"[treadle] {what}: {request.item_id} at {request.stage}"
        msg["Message-ID"] = f"<{request.id.replace('/', '.')}@treadle>"
        msg.set_content(_text(request))
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(msg)


def email(to: str | Sequence[str], *, host: str = "localhost", port: int = 25,
          sender: str = "treadle@localhost", starttls: bool = False,
          username: str | None = None, password: str | None = None,
          timeout: float = 10.0, name: str = "") -> Email:
    """A notifier that e-mails each review request to ``to`` (see :class:`Email`);
    ``name`` as for :func:`webhook`."""
    recipients = (to,) if isinstance(to, str) else tuple(to)
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise ValueError(f"email() needs one or more addresses, got {to!r}")
    return Email(recipients, host, port, sender, starttls, username, password, timeout, name)


def to_assignees(notifiers: Mapping[str, Notifier]) -> Any:
    """A notifier that tells only the assignees: ``{name: notifier}``; a request with
    no assignees goes to every notifier."""
    table = dict(notifiers)

    def notify(request: ReviewRequest) -> None:
        names = request.assignees or list(table)
        errors = []
        for name in names:
            if name in table:
                try:
                    table[name](request)
                except Exception as exc:  # noqa: BLE001 - tell the others, then report
                    errors.append(f"{name}: {exc}")
        if errors:
            raise RuntimeError("; ".join(errors))

    notify.name = "to_assignees " + ", ".join(table)  # type: ignore[attr-defined]
    return notify


__all__ = ["Email", "Notifier", "ReviewRequest", "Webhook", "email", "to_assignees", "webhook"]
