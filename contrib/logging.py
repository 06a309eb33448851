"""Log every treadle signal through structlog, in one call.

    import structlog
    from treadle.contrib.logging import connect

    connect()                      # or connect(structlog.get_logger("myapp"))

Each transition becomes one log event named after the signal, with
``pipeline``, ``item_id``, ``stage``, ``attempt`` and, where relevant,
``error``, ``subtask``, ``state``, ``decision`` as keys. Without any
structlog configuration, structlog prints to stdout; configure structlog (or
stdlib logging through ``structlog.stdlib``) as usual to route it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from treadle import signals

_LEVELS = {"stage_failed": "warning", "subtask_failed": "warning"}
_KEYS = ("item_id", "stage", "attempt", "error", "subtask", "state", "decision", "reviewer",
         "final", "message")


def connect(logger: Any = None, *, sender: Any = None) -> Callable[[], None]:
    """Connect every treadle signal to ``logger`` (default ``structlog.get_logger("treadle")``).

    ``sender`` limits it to one pipeline. Returns a function that disconnects them again.
    """
    log = logger if logger is not None else structlog.get_logger("treadle")
    receivers = []
    for name, sig in signals.ALL.items():
        receiver = _receiver(log, name)
        if sender is None:
            sig.connect(receiver, weak=False)
        else:
            sig.connect(receiver, sender=sender, weak=False)
        receivers.append((sig, receiver))

    def disconnect() -> None:
        for sig, receiver in receivers:
            sig.disconnect(receiver)

    return disconnect


def _receiver(log: Any, name: str) -> Callable[..., None]:
    level = _LEVELS.get(name, "info")

    def receive(sender: Any, **data: Any) -> None:
        fields = {k: data[k] for k in _KEYS if data.get(k) is not None}
        getattr(log, level)(name, pipeline=getattr(sender, "name", None), **fields)

    return receive
