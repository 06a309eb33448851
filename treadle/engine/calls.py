"""Calling user code that may be ``async``: one code path for both kinds.

The worker's logic (:mod:`.worker`, :mod:`.gate`) is written once, as
coroutines that ``await resolve(fn(...), sync)``. On the runner's event loop
(``sync=False``) an awaitable is awaited there. In a pool thread
(``sync=True``) the coroutine is driven by :func:`run_sync` without a loop:
it never suspends, because every awaitable it meets is run to completion in
a loop of its own (a function returning an awaitable that was not declared
``async def``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def is_async(fn: Callable[..., Any] | None) -> bool:
    """True for an ``async def`` function (or partial, or object with ``async def __call__``)."""
    if fn is None:
        return False
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


async def _wait(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def resolve(value: Any, sync: bool) -> Any:
    """``value``, awaited if it is awaitable (in a loop of its own when ``sync``)."""
    if not inspect.isawaitable(value):
        return value
    if sync:
        return asyncio.run(_wait(value))
    return await value


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that never suspends (see the module docstring) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("treadle: a synchronous task awaited on an event loop it does not have")


__all__ = ["is_async", "resolve", "run_sync"]
