"""``StageContext``: what a stage function receives as ``ctx``."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class StageContext:
    """Facts about the running (item, stage).

    ``outputs`` maps each upstream stage's name to its output (read-only);
    ``attempt`` counts from 1; ``feedback`` lists earlier attempts' gate or
    reviewer feedback, oldest first; ``log`` is a structlog bound logger with
    ``item_id``, ``stage`` and ``attempt`` bound; ``cancelled`` is set when
    the stage timed out or the runner is shutting down.
    """

    item_id: str
    stage: str
    attempt: int
    outputs: Mapping[str, Any]
    log: Any
    cancelled: threading.Event = attrs.field(factory=threading.Event)
    feedback: tuple[Any, ...] = ()
    pipeline: str = ""
