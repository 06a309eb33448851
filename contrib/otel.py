"""OpenTelemetry traces for treadle, in one call.

    from opentelemetry.sdk.trace import TracerProvider
    from treadle.contrib import otel

    tracing = otel.instrument(provider, runner)     # or otel.instrument() for every pipeline
    runner.run()
    tracing.close()                                 # disconnect again

What it records (see docs/observability.md):

- a span per run of user code: ``stage S``, ``subtask S/NAME``, ``gate S``,
  ``rollback S``, with ``treadle.pipeline``, ``treadle.item_id``,
  ``treadle.stage``, ``treadle.attempt``, ``treadle.kind``,
  ``treadle.outcome`` (and ``treadle.subtask``, ``treadle.queue_wait_s``);
  a failed attempt has status ERROR and an ``exception`` event. The span is
  the current span while the code runs, so spans the code opens itself are
  its children (threads and ``async def`` alike).
- a span ``review S`` per human decision, from the moment the stage began to
  await review (read from the store's history when a store is known) to the
  decision, with ``treadle.review.decision`` and ``treadle.review.wait_s``;
- a span ``item PIPELINE`` when an item finishes, from its submission.

Every span of an item is in one trace whose id is derived from (pipeline
name, item id), and stage, review and (outside a fan-out) subtask spans are
children of an item-level span whose id is derived the same way: a resumed
item, in another process or after a crash, continues the same trace without
anything stored. The ``item`` span itself is emitted with that derived id
(through an id generator installed on this module's own tracer, used only
for it); with a tracer that has no id generator (not the SDK's), it is left
out and the stage spans point at a parent that is never exported.

Install with ``pip install "treadle[otel]"``.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "treadle.contrib.otel needs OpenTelemetry: pip install \"treadle[otel]\""
    ) from exc

try:
    from opentelemetry.sdk.trace.id_generator import IdGenerator
except ImportError:  # pragma: no cover - API only: no item span (see the module docstring)
    IdGenerator = object  # type: ignore[assignment,misc]

import treadle
from treadle import instrument as hooks
from treadle import signals
from treadle.serialization import normalize_id

_log = logging.getLogger("treadle.contrib.otel")

SCOPE = "treadle.contrib.otel"
_KEEP = 10_000  # in-process memory (fan-out parents, review starts): bounded

#: (trace id, span id) that this module's tracer must use for the next span (the item span).
_forced: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "treadle_otel_forced_ids", default=None)
#: The stage span running in this thread or task: (pipeline, item id, stage).
_running_stage: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "treadle_otel_stage", default=None)


# -- deterministic ids ---------------------------------------------------------------
def _ids(pipeline: str, item_id: Any) -> tuple[int, int]:
    digest = hashlib.sha256(f"{pipeline}\x00{normalize_id(item_id)}".encode()).digest()
    return (int.from_bytes(digest[:16], "big") or 1), (int.from_bytes(digest[16:24], "big") or 1)


def item_trace_id(pipeline: str, item_id: Any) -> int:
    """The trace id of every span of ``item_id`` in ``pipeline`` (the first 16
    bytes of the SHA-256 of ``pipeline NUL item_id``)."""
    return _ids(pipeline, item_id)[0]


def item_span_context(pipeline: str, item_id: Any, *, sampled: bool = True) -> SpanContext:
    """The span context of the item-level span (bytes 16-24 of the same hash):
    the parent of the item's stage spans, usable to link your own spans to an item."""
    trace_id, span_id = _ids(pipeline, item_id)
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags)


class _ItemIds(IdGenerator):
    """Delegates to the tracer's id generator, except for the item span."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced is not None else self.inner.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced is not None else self.inner.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        if _forced.get() is not None:
            return False
        check = getattr(self.inner, "is_trace_id_random", None)
        return bool(check()) if check is not None else False


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _exception_attributes(error: str) -> dict[str, str]:
    head, sep, message = error.partition(": ")
    if head and head.replace(".", "").replace("_", "").isalnum():
        return {"exception.type": head, "exception.message": message if sep else ""}
    return {"exception.type": "Error", "exception.message": error}


class _Bounded(collections.OrderedDict):  # type: ignore[type-arg]
    """An insertion-ordered dict dropping its oldest entries past ``_KEEP``."""

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _KEEP:
            self.popitem(last=False)


# -- the handle ------------------------------------------------------------------------
class Tracing:
    """What :func:`instrument` connected: an instrument and signal receivers.

    ``close()`` (or leaving a ``with`` block) disconnects both.
    """

    def __init__(self, tracer_provider: Any = None, pipeline: Any = None, store: Any = None) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._provider = tracer_provider
        self._tracer = provider.get_tracer(SCOPE, treadle.__version__)
        self._ids_installed = self._install_ids(self._tracer)
        sender = pipeline
        if isinstance(pipeline, treadle.Runner):
            sender, store = pipeline.pipeline, store if store is not None else pipeline.store
        self._sender = sender
        self._name: str | None = getattr(sender, "name", None)
        self._store = store
        self._lock = threading.Lock()
        self._fanouts = _Bounded()    # (pipeline, item, stage) -> SpanContext of the FanOut's stage span
        self._reviews = _Bounded()    # (pipeline, item, stage) -> when review_required arrived
        self._submitted = _Bounded()  # (pipeline, item) -> when item_submitted arrived
        self._contexts = _Bounded()   # (pipeline, item) -> the item-level context (a cache)
        self._receivers: list[tuple[Any, Callable[..., None]]] = []
        self._hook = self._around
        hooks.add(self._hook)
        for sig, receiver in (
            (signals.item_submitted, self._on_submitted),
            (signals.stage_completed, self._on_stage_done),
            (signals.stage_failed, self._on_stage_done),
            (signals.review_required, self._on_review_required),
            (signals.review_decided, self._on_review_decided),
            (signals.item_finished, self._on_item_finished),
        ):
            if sender is None:
                sig.connect(receiver, weak=False)
            else:
                sig.connect(receiver, sender=sender, weak=False)
            self._receivers.append((sig, receiver))

    def close(self) -> None:
        """Disconnect: no more spans from treadle."""
        hooks.remove(self._hook)
        for sig, receiver in self._receivers:
            sig.disconnect(receiver)
        self._receivers = []

    def __enter__(self) -> Tracing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contexts --------------------------------------------------------------------
    @staticmethod
    def _install_ids(tracer: Any) -> bool:
        generator = getattr(tracer, "id_generator", None)
        if generator is None or IdGenerator is object:
            return False
        if not isinstance(generator, _ItemIds):
            tracer.id_generator = _ItemIds(generator)
        return True

    def _sampled(self, trace_id: int) -> bool:
        sampler = getattr(self._tracer, "sampler", None)
        if sampler is None:
            return True
        try:
            result = sampler.should_sample(otel_context.Context(), trace_id, "item", SpanKind.INTERNAL)
            return bool(result.decision.is_sampled())
        except Exception:  # noqa: BLE001 - a sampler of another shape: keep everything
            return True

    def item_context(self, pipeline: str, item_id: Any) -> otel_context.Context:
        """An OpenTelemetry context whose current span is the item-level span."""
        key = (pipeline, item_id)
        found = self._contexts.get(key)
        if found is not None:
            return cast(otel_context.Context, found)
        trace_id, span_id = _ids(pipeline, item_id)
        flags = TraceFlags(TraceFlags.SAMPLED if self._sampled(trace_id) else TraceFlags.DEFAULT)
        span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=True, trace_flags=flags))
        made = trace.set_span_in_context(span, otel_context.Context())
        with self._lock:
            self._contexts.put(key, made)
        return made

    def _parent(self, ex: hooks.Execution) -> otel_context.Context:
        if ex.kind == "gate" and _running_stage.get() == (ex.pipeline, ex.item_id, ex.stage):
            return otel_context.get_current()  # inside the stage's span
        if ex.kind == "subtask":
            parent = self._fanouts.get((ex.pipeline, ex.item_id, ex.stage))
            if parent is not None:
                return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())
        return self.item_context(ex.pipeline, ex.item_id)

    # -- the instrument ------------------------------------------------------------------
    def _around(self, ex: hooks.Execution) -> Any:
        if self._name is not None and ex.pipeline != self._name:
            return _NOTHING
        return _SpanScope(self, ex)

    def _remember_fanout(self, ex: hooks.Execution, span_context: SpanContext) -> None:
        with self._lock:
            self._fanouts.put((ex.pipeline, ex.item_id, ex.stage), span_context)

    # -- signals -----------------------------------------------------------------------
    def _on_submitted(self, sender: Any, *, item_id: str, **_: Any) -> None:
        with self._lock:
            self._submitted.put((sender.name, item_id), time.time())

    def _on_stage_done(self, sender: Any, *, item_id: str, stage: str, **data: Any) -> None:
        if data.get("final", True):
            with self._lock:
                self._fanouts.pop((sender.name, item_id, stage), None)

    def _on_review_required(self, sender: Any, *, item_id: str, stage: str, **_: Any) -> None:
        with self._lock:
            self._reviews.put((sender.name, item_id, stage), time.time())

    def _review_start(self, sender: Any, item_id: str, stage: str) -> float | None:
        with self._lock:
            seen = self._reviews.pop((sender.name, item_id, stage), None)
        if self._store is not None:
            try:
                for row in reversed(self._store.history(sender, item_id)):
                    if row["stage"] == stage and row["subtask"] is None and row["state"] == "awaiting_review":
                        return float(row["at"])
            except Exception:  # noqa: BLE001 - fall back on what this process saw
                _log.exception("treadle.contrib.otel: reading the review start failed")
        return None if seen is None else float(seen)

    def _on_review_decided(self, sender: Any, *, item_id: str, stage: str, decision: str,
                           reviewer: str | None = None, **_: Any) -> None:
        start = self._review_start(sender, item_id, stage)
        if start is None:
            return  # neither the store nor this process knows when the wait began
        end = time.time()
        attributes = {
            "treadle.pipeline": sender.name, "treadle.item_id": item_id, "treadle.stage": stage,
            "treadle.kind": "review", "treadle.review.decision": decision,
            "treadle.review.wait_s": max(0.0, end - start),
        }
        if reviewer:
            attributes["treadle.review.reviewer"] = reviewer
        span = self._tracer.start_span(f"review {stage}", context=self.item_context(sender.name, item_id),
                                       kind=SpanKind.INTERNAL, attributes=attributes,
                                       start_time=_ns(start))
        span.end(end_time=_ns(end))

    def _on_item_finished(self, sender: Any, *, item_id: str, state: str, **_: Any) -> None:
        if not self._ids_installed:
            self._ids_installed = self._install_ids(self._retry_tracer())
            if not self._ids_installed:
                return
        end = time.time()
        with self._lock:
            start = self._submitted.pop((sender.name, item_id), None)
        if self._store is not None:
            try:
                start = float(self._store.item_data(sender, item_id)[1])
            except Exception:  # noqa: BLE001
                _log.exception("treadle.contrib.otel: reading the item's submission time failed")
        token = _forced.set(_ids(sender.name, item_id))
        try:
            span = self._tracer.start_span(
                f"item {sender.name}", context=otel_context.Context(), kind=SpanKind.INTERNAL,
                attributes={"treadle.pipeline": sender.name, "treadle.item_id": item_id,
                            "treadle.kind": "item", "treadle.item.state": state},
                start_time=_ns(start if start is not None else end))
        finally:
            _forced.reset(token)
        if state == "failed":
            span.set_status(Status(StatusCode.ERROR, "the item failed"))
        span.end(end_time=_ns(end))

    def _retry_tracer(self) -> Any:
        """The global provider may have been set since :func:`instrument` (a proxy tracer)."""
        if self._provider is None:
            self._tracer = trace.get_tracer_provider().get_tracer(SCOPE, treadle.__version__)
        return self._tracer


#: What an instrument enters for work it does not follow.
_NOTHING = contextlib.nullcontext()


class _SpanScope:
    """The span of one run of user code, current while the code runs."""

    __slots__ = ("ex", "span", "stage_token", "token", "tracing")

    def __init__(self, tracing: Tracing, ex: hooks.Execution) -> None:
        self.tracing, self.ex = tracing, ex
        self.stage_token: contextvars.Token[Any] | None = None

    def __enter__(self) -> None:
        ex = self.ex
        attributes: dict[str, Any] = {
            "treadle.pipeline": ex.pipeline, "treadle.item_id": ex.item_id,
            "treadle.stage": ex.stage, "treadle.attempt": ex.attempt, "treadle.kind": ex.kind,
        }
        name = f"{ex.kind} {ex.stage}"
        if ex.subtask is not None:
            attributes["treadle.subtask"] = ex.subtask
            name = f"subtask {ex.stage}/{ex.subtask}"
        if ex.claimed_at is not None:
            attributes["treadle.queue_wait_s"] = max(0.0, ex.started_at - ex.claimed_at)
        self.span = self.tracing._tracer.start_span(
            name, context=self.tracing._parent(ex), kind=SpanKind.INTERNAL, attributes=attributes,
            start_time=_ns(ex.started_at))
        self.token = otel_context.attach(trace.set_span_in_context(self.span))
        if ex.kind == "stage":
            self.stage_token = _running_stage.set((ex.pipeline, ex.item_id, ex.stage))

    def __exit__(self, *exc: object) -> None:
        ex, span = self.ex, self.span
        try:
            if self.stage_token is not None:
                _running_stage.reset(self.stage_token)
            otel_context.detach(self.token)
        except ValueError:  # exited in another context than entered: nothing to restore
            pass
        outcome = ex.outcome or ("cancelled" if exc and exc[0] is not None else "unknown")
        span.set_attribute("treadle.outcome", outcome)
        if ex.error is not None or outcome in ("failed", "cancelled"):
            message = ex.error or outcome
            span.add_event("exception", _exception_attributes(message))
            span.set_status(Status(StatusCode.ERROR, message))
        if ex.kind == "stage" and outcome == "fanout":
            self.tracing._remember_fanout(ex, span.get_span_context())
        span.end()


def instrument(tracer_provider: Any = None, pipeline: Any = None, *, store: Any = None) -> Tracing:
    """Trace every stage, subtask, gate, rollback, review wait and item, in one call.

    ``tracer_provider`` defaults to the global one. ``pipeline`` limits it to
    one :class:`~treadle.Pipeline`; pass a :class:`~treadle.Runner` instead
    (or ``store=``) so that review-wait and item spans start at the times the
    store recorded, even when the wait began in another process. Returns a
    :class:`Tracing` handle; ``close()`` disconnects it.
    """
    return Tracing(tracer_provider, pipeline, store)


__all__ = ["SCOPE", "Tracing", "instrument", "item_span_context", "item_trace_id"]
