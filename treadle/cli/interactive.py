"""``python -m treadle review``: decide each waiting review at the terminal."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any, TextIO

from ..decisions import parse_field
from ..errors import InvalidTransitionError
from ..runner import Runner
from ..status import ReviewInfo

PROMPT = "[a]pprove, [e]dit, [r]eject, [c]hanges, [s]kip, [q]uit? "


def edit_json(data: Any, ask: Callable[[str], str], out: TextIO) -> tuple[bool, Any]:
    """Open $EDITOR on ``data`` as JSON until it parses; (False, None) if abandoned."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False)
        path = fh.name
    try:
        while True:
            result = subprocess.run([*shlex.split(editor), path])
            if result.returncode != 0:
                out.write(f"editor exited with status {result.returncode}; edit abandoned\n")
                return False, None
            try:
                with open(path, encoding="utf-8") as fh:
                    return True, json.load(fh)
            except json.JSONDecodeError as exc:
                out.write(f"that is not valid JSON ({exc}); ")
                if ask("edit again? [y/n] ").strip().lower() not in ("y", "yes"):
                    return False, None
    finally:
        os.unlink(path)


def _required(ask: Callable[[str], str], out: TextIO, prompt: str, missing: str) -> str | None:
    """Ask for a text that must not be empty; None (after saying so) if it is."""
    text = ask(prompt).strip()
    if not text:
        out.write(f"{missing}\n")
        return None
    return text


def ask_choice(review: ReviewInfo, ask: Callable[[str], str], out: TextIO) -> tuple[bool, Any]:
    """Ask for the option(s) of a review that offers some; (False, None) if abandoned."""
    options = review.options or []
    out.write("options: " + "  ".join(f"{n}) {o}" for n, o in enumerate(options, 1)) + "\n")
    default = review.default
    hint = "" if default is None else (
        f" [{default}]" if isinstance(default, str) else f" [{', '.join(default)}]")
    what = "one or more, comma-separated" if review.multiple else "one"
    while True:
        text = ask(f"choose {what}{hint} (empty: back): ").strip()
        if not text:
            return (True, default) if default is not None else (False, None)
        picks = [p.strip() for p in text.split(",")] if review.multiple else [text]
        chosen = [options[int(p) - 1] if p.isdigit() and 0 < int(p) <= len(options) else p
                  for p in picks]
        if all(c in options for c in chosen):
            return True, (chosen if review.multiple else chosen[0])
        out.write(f"please choose from {', '.join(options)}\n")


def ask_form(review: ReviewInfo, ask: Callable[[str], str], out: TextIO) -> tuple[bool, Any]:
    """Ask for each field of a review's form, the review data's values as defaults."""
    prefill = review.data if isinstance(review.data, dict) else {}
    answer: dict[str, Any] = {}
    for field in review.form or []:
        name = field["name"]
        default = prefill.get(name, None if field["required"] else field["default"])
        shown = "" if default is None else f" [{json.dumps(default, ensure_ascii=False)}]"
        required = ", required" if field["required"] else ""
        while True:
            try:
                text = ask(f"{name} ({field['type']}{required}){shown}: ")
            except EOFError:
                return False, None
            if not text.strip():
                if default is not None:
                    answer[name] = default
                elif field["required"]:
                    out.write(f"{name} is required\n")
                    continue
                break
            try:
                answer[name] = parse_field(text, field)
                break
            except ValueError as exc:
                out.write(f"{exc}\n")
    return True, answer


def _asks(review: ReviewInfo | None, out: TextIO) -> None:
    if review is None:
        return
    if review.form:
        out.write("form: " + ", ".join(f"{f['name']} ({f['type']})" for f in review.form) + "\n")
    if review.assignees:
        out.write(f"assigned to: {', '.join(review.assignees)}\n")


def _approve(runner: Runner, item_id: str, stage: str, review: ReviewInfo | None,
             ask: Callable[[str], str], out: TextIO, reviewer: str, version: int | None,
             data: Any = None) -> bool:
    """Approve, asking the form's fields and the choice first; False if abandoned."""
    kwargs: dict[str, Any] = {} if data is None else {"data": data}
    if review is not None and review.form and data is None:
        ok, kwargs["data"] = ask_form(review, ask, out)
        if not ok:
            return False
    if review is not None and review.options:
        ok, kwargs["choice"] = ask_choice(review, ask, out)
        if not ok:
            return False
    runner.approve(item_id, stage, reviewer=reviewer, expect=version, **kwargs)
    return True


def review_loop(runner: Runner, *, reviewer: str, ask: Callable[[str], str], out: TextIO,
                stage: str | None = None) -> dict[str, int]:
    """Walk the inbox oldest first; each decision is written as it is made."""
    tally = dict.fromkeys(("approved", "edited", "rejected", "changes", "skipped"), 0)
    inbox = [(s.item_id, name, st) for s in runner.items(state="awaiting_review", limit=None)
             for name, st in s.stages.items()
             if st.state == "awaiting_review" and (stage is None or name == stage)]
    if not inbox:
        out.write("Nothing awaits review.\n")
        return tally
    for n, (item_id, name, st) in enumerate(inbox, 1):
        review = st.review
        version = review.version if review else None  # what is shown is what is decided
        out.write(f"\n[{n}/{len(inbox)}] item {item_id}, stage {name}"
                  f"{f' (version {version})' if version is not None else ''}\n")
        if review and review.message:
            out.write(f"{review.message}\n")
        out.write(json.dumps(review.data if review else None, indent=2, ensure_ascii=False) + "\n")
        _asks(review, out)
        for rec in st.attempt_log:
            v = rec.get("verdict", {})
            why = v.get("message") or v.get("reason") or v.get("note") or ""
            out.write(f"  attempt {rec.get('attempt')}: {v.get('verdict')} {why} -> "
                      f"{json.dumps(rec.get('output'), ensure_ascii=False)}\n")
        while True:
            try:
                choice = ask(PROMPT).strip().lower()
            except EOFError:
                return tally
            try:
                if choice in ("a", "approve"):
                    if not _approve(runner, item_id, name, review, ask, out, reviewer, version):
                        continue
                    tally["approved"] += 1
                elif choice in ("e", "edit"):
                    ok, data = edit_json(review.data if review else None, ask, out)
                    if not ok:
                        continue
                    if not _approve(runner, item_id, name, review, ask, out, reviewer, version,
                                    data=data):
                        continue
                    tally["edited"] += 1
                elif choice in ("r", "reject"):
                    reason = _required(ask, out, "reason: ", "a rejection needs a reason")
                    if reason is None:
                        continue
                    runner.reject(item_id, name, reason=reason, reviewer=reviewer,
                                  expect=version)
                    tally["rejected"] += 1
                elif choice in ("c", "changes"):
                    feedback = _required(ask, out, "what should change? ", "changes need feedback")
                    if feedback is None:
                        continue
                    runner.request_changes(item_id, name, feedback=feedback, reviewer=reviewer,
                                           expect=version)
                    tally["changes"] += 1
                elif choice in ("s", "skip"):
                    tally["skipped"] += 1
                elif choice in ("q", "quit"):
                    return tally
                else:
                    out.write("please answer a, e, r, c, s or q\n")
                    continue
            except InvalidTransitionError as exc:
                out.write(f"not decided: {exc}\n")
            break
    return tally
