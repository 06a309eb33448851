"""Turning an exception into a recorded failure: error text, traceback, retry decision."""

from __future__ import annotations

import json
import traceback
from typing import Any

from ..serialization import storable_text
from ..states import StageState
from ..store.base import Transition
from ..store.fanout import SubResult

#: Text any database can store (the one definition is in treadle.serialization).
clean_text = storable_text


def error_text(exc: BaseException) -> str:
    """``Type: message`` (or just the type), storable."""
    try:
        text = clean_text(str(exc))
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises
        text = f"<unprintable {type(exc).__name__} object>"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def traceback_text(exc: BaseException) -> str:
    """The formatted traceback, storable."""
    try:
        return clean_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except Exception:  # noqa: BLE001 - formatting may call a broken __str__
        return clean_text("".join(traceback.format_tb(exc.__traceback__)))


def retry_in(policy: Any, attempt: int, exc: BaseException) -> float | None:
    """Seconds until the next attempt, or None when the policy gives up (or raises)."""
    if policy is None:
        return None
    try:
        delay = policy(attempt, exc)
    except Exception:  # noqa: BLE001 - a broken policy must not crash the run
        return None
    return None if delay is None else max(0.0, float(delay))


def failure(item_id: str, stage: str, attempt: int, exc: BaseException,
            policy: Any = None) -> Transition:
    """A failed Transition carrying the error and its traceback; when ``policy``
    grants another attempt, a pending one with the wait as its delay."""
    delay = retry_in(policy, attempt, exc)
    if delay is not None:
        return Transition(item_id, stage, attempt, StageState.PENDING.value,
                          error=error_text(exc), traceback=traceback_text(exc), delay=delay,
                          logged_as=StageState.FAILED.value,
                          details=json.dumps({"final": False, "retry_in": round(delay, 3)}))
    return Transition(item_id, stage, attempt, StageState.FAILED.value,
                      error=error_text(exc), traceback=traceback_text(exc))


def sub_failure(item_id: str, stage: str, name: str, attempt: int, exc: BaseException,
                policy: Any = None) -> SubResult:
    """A failed SubResult; pending (with ``details.retry_in``) when the policy retries."""
    delay = retry_in(policy, attempt, exc)
    if delay is not None:
        return SubResult(item_id, stage, name, attempt, "pending", error=error_text(exc),
                         traceback=traceback_text(exc), logged_as="failed",
                         details=json.dumps({"final": False, "retry_in": round(delay, 3)}))
    return SubResult(item_id, stage, name, attempt, "failed", error=error_text(exc),
                     traceback=traceback_text(exc))
