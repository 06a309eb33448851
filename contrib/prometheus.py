"""Prometheus metrics for a treadle pipeline, in one call.

    from treadle.contrib import prometheus

    metrics = prometheus.instrument(runner)        # or instrument(pipeline, store)
    metrics.serve(9464)                            # optional: http://0.0.0.0:9464/metrics
    runner.run()
    metrics.close()

or ``python -m treadle run app.py:pipeline --metrics-port 9464``.

Counted in this process, from the signals (labels ``pipeline``, ``stage``):
``treadle_stages_completed_total`` (a review approval completes its stage
too), ``treadle_stages_failed_total`` (failed for good),
``treadle_stages_retried_total`` (another attempt scheduled). Timed around
the user's code (histograms, same labels): ``treadle_stage_duration_seconds``,
``treadle_queue_wait_seconds`` (from the claim to the start) and
``treadle_review_wait_seconds`` (from the stored start of the wait to the
decision, observed where the decision is taken).

Read from the store at each scrape, on one thread of this module's own:
``treadle_items{pipeline,state}`` (items per item state, as last settled),
``treadle_stage_items{pipeline,stage,state}``,
``treadle_reviews_waiting{pipeline,stage}``,
``treadle_review_oldest_wait_seconds{pipeline,stage}`` and
``treadle_runners_alive`` (runners of any pipeline whose lease has not
lapsed). Install with ``pip install "treadle[prometheus]"``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Histogram,
        start_http_server,
    )
    from prometheus_client.core import GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "treadle.contrib.prometheus needs prometheus-client: pip install \"treadle[prometheus]\""
    ) from exc

from treadle import Runner, signals
from treadle import instrument as hooks
from treadle.states import ItemState, StageState

_log = logging.getLogger("treadle.contrib.prometheus")

LABELS = ("pipeline", "stage")
#: Seconds: stages from a millisecond to an hour.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
#: Seconds: human decisions from a minute to a week.
REVIEW_BUCKETS = (60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400, float("inf"))
SCRAPE_TIMEOUT = 10.0


class Metrics:
    """What :func:`instrument` connected: metrics in ``registry``, an instrument,
    signal receivers and (after :meth:`serve`) an HTTP server. ``close()`` undoes all."""

    def __init__(self, runner: Runner, registry: CollectorRegistry) -> None:
        self.runner = runner
        self.registry = registry
        self.pipeline: Any = runner.pipeline
        name = self.name = runner.pipeline.name
        self.completed = Counter("treadle_stages_completed",
                                 "Stages completed (by their code or a review approval).",
                                 LABELS, registry=None)
        self.failed = Counter("treadle_stages_failed", "Stages failed for good.", LABELS, registry=None)
        self.retried = Counter("treadle_stages_retried", "Further attempts scheduled after a failure "
                               "or a gate's rejection.", LABELS, registry=None)
        self.duration = Histogram("treadle_stage_duration_seconds", "Time in a stage's code, per attempt.",
                                  LABELS, buckets=DURATION_BUCKETS, registry=None)
        self.queue_wait = Histogram("treadle_queue_wait_seconds", "Time from a stage's claim to its start.",
                                    LABELS, buckets=DURATION_BUCKETS, registry=None)
        self.review_wait = Histogram("treadle_review_wait_seconds", "Time from a stage awaiting review "
                                     "to the decision.", LABELS, buckets=REVIEW_BUCKETS, registry=None)
        self._timers: dict[str, tuple[Any, Any]] = {}
        for stage in runner.pipeline.order:  # every series exists from the start, at 0
            for metric in (self.completed, self.failed, self.retried):
                metric.labels(name, stage)
            self._timers[stage] = (self.duration.labels(name, stage), self.queue_wait.labels(name, stage))
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="treadle-metrics")
        self.collector = StoreCollector(runner, self._reader)
        self._register(registry)
        self._server: Any = None
        self._thread: Any = None
        self._hook = self._around
        hooks.add(self._hook)
        self._receivers: list[tuple[Any, Callable[..., None]]] = []
        for sig, receiver in (
            (signals.stage_completed, self._on_completed),
            (signals.stage_failed, self._on_failed),
            (signals.retry_scheduled, self._on_retry),
            (signals.review_decided, self._on_review_decided),
        ):
            sig.connect(receiver, sender=runner.pipeline, weak=False)
            self._receivers.append((sig, receiver))

    def _collectors(self) -> tuple[Any, ...]:
        return (self.completed, self.failed, self.retried, self.duration, self.queue_wait,
                self.review_wait, self.collector)

    def _register(self, registry: CollectorRegistry) -> None:
        done = []
        try:
            for collector in self._collectors():
                registry.register(collector)
                done.append(collector)
        except ValueError as exc:
            for collector in done:
                registry.unregister(collector)
            self._reader.shutdown(wait=False)
            raise ValueError(
                f"treadle metrics are already in this Prometheus registry ({exc}); close() the "
                "other treadle.contrib.prometheus handle first, or pass registry=CollectorRegistry()"
            ) from None

    # -- serving -----------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` of the registry on ``addr:port`` until :meth:`close`
        (port 0: any free port). Returns the port."""
        if self._server is not None:
            raise RuntimeError(f"already serving metrics on port {self.port}")
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    @property
    def port(self) -> int | None:
        """The port served on, or None."""
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop serving, disconnect, and take the metrics out of the registry."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        hooks.remove(self._hook)
        for sig, receiver in self._receivers:
            sig.disconnect(receiver)
        self._receivers = []
        for collector in self._collectors():
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass
        self._reader.shutdown(wait=False)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instrument and signals -----------------------------------------------------------
    def _around(self, ex: hooks.Execution) -> Any:
        if ex.kind != "stage" or ex.pipeline != self.name:
            return _NOTHING
        timers = self._timers.get(ex.stage)
        if timers is None:
            return _NOTHING
        if ex.claimed_at is not None:
            timers[1].observe(max(0.0, ex.started_at - ex.claimed_at))
        return _Timer(timers[0])

    def _on_completed(self, sender: Any, *, stage: str, **_: Any) -> None:
        self.completed.labels(self.name, stage).inc()

    def _on_failed(self, sender: Any, *, stage: str, final: bool = True, **_: Any) -> None:
        if final:
            self.failed.labels(self.name, stage).inc()

    def _on_retry(self, sender: Any, *, stage: str, **_: Any) -> None:
        self.retried.labels(self.name, stage).inc()

    def _on_review_decided(self, sender: Any, *, item_id: str, stage: str, decision: str,
                           **_: Any) -> None:
        if decision == "approved":
            self.completed.labels(self.name, stage).inc()
        try:
            history = self.runner.store.history(self.pipeline, item_id)
        except Exception:  # noqa: BLE001 - a metric never breaks a decision
            _log.exception("treadle.contrib.prometheus: reading the review start failed")
            return
        for row in reversed(history):
            if row["stage"] == stage and row["subtask"] is None and row["state"] == "awaiting_review":
                self.review_wait.labels(self.name, stage).observe(max(0.0, time.time() - float(row["at"])))
                return


#: What an instrument enters for work it does not follow.
_NOTHING = contextlib.nullcontext()


class _Timer:
    __slots__ = ("histogram", "t0")

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.histogram.observe(time.perf_counter() - self.t0)


class StoreCollector:
    """Gauges read from the store at each scrape (a prometheus_client custom collector).

    The reads run on ``reader`` (one thread, so one database connection however
    many scrapes); a failed read is logged and its gauges are left out.
    """

    def __init__(self, runner: Runner, reader: concurrent.futures.Executor) -> None:
        self.runner = runner
        self.reader = reader

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        try:
            facts = self.reader.submit(self.read).result(timeout=SCRAPE_TIMEOUT)
        except Exception:  # noqa: BLE001 - a scrape never raises
            _log.exception("treadle.contrib.prometheus: reading the store failed")
            return iter(())
        return iter(self._families(facts))

    def read(self) -> dict[str, Any]:
        """Everything the gauges show, in one go."""
        runner, now = self.runner, time.time()
        counts = runner.counts()
        oldest: dict[str, float] = {}
        for stage, states in counts.items():
            if states.get(StageState.AWAITING_REVIEW.value):
                waiting = runner.items(stage=stage, state=StageState.AWAITING_REVIEW.value, limit=1)
                updated = waiting[0].stages[stage].updated_at if waiting else None
                if updated is not None:
                    oldest[stage] = max(0.0, now - float(updated))
        alive = None
        transaction = getattr(runner.store, "transaction", None)
        if transaction is not None:
            with transaction() as tx:
                alive = sum(1 for *_, expires in tx.runners() if expires > now)
        return {"items": runner.item_counts(), "counts": counts, "oldest": oldest, "alive": alive}

    def _families(self, facts: dict[str, Any] | None = None) -> Iterator[Metric]:
        name = self.runner.pipeline.name
        items = GaugeMetricFamily("treadle_items", "Items per item state (as last settled).",
                                  labels=["pipeline", "state"])
        stage_items = GaugeMetricFamily("treadle_stage_items", "Items per stage and stage state.",
                                        labels=["pipeline", "stage", "state"])
        waiting = GaugeMetricFamily("treadle_reviews_waiting", "Items awaiting review, per stage.",
                                    labels=list(LABELS))
        oldest = GaugeMetricFamily("treadle_review_oldest_wait_seconds",
                                   "Age of the oldest review waiting, per stage (0: none).",
                                   labels=list(LABELS))
        alive = GaugeMetricFamily("treadle_runners_alive",
                                  "Runners (of any pipeline on this store) whose lease is current.")
        if facts is not None:
            counted = dict.fromkeys((s.value for s in ItemState), 0) | facts["items"]
            for state, n in sorted(counted.items()):
                items.add_metric([name, state], n)
            for stage, states in facts["counts"].items():
                for state, n in sorted(states.items()):
                    stage_items.add_metric([name, stage, state], n)
                waiting.add_metric([name, stage], states.get(StageState.AWAITING_REVIEW.value, 0))
                oldest.add_metric([name, stage], facts["oldest"].get(stage, 0.0))
            if facts["alive"] is not None:
                alive.add_metric([], facts["alive"])
        yield from (items, stage_items, waiting, oldest)
        if facts is None or facts["alive"] is not None:
            yield alive


def instrument(target: Any, store: Any = None, *, registry: CollectorRegistry | None = None) -> Metrics:
    """Connect Prometheus metrics for one pipeline, in one call.

    ``target`` is a :class:`~treadle.Runner`, or a :class:`~treadle.Pipeline`
    with its ``store``. ``registry`` defaults to prometheus_client's global
    ``REGISTRY`` (one :class:`Metrics` per registry at a time). Returns the
    :class:`Metrics` handle; ``serve(port)`` exposes ``/metrics``, ``close()``
    undoes everything.
    """
    if isinstance(target, Runner):
        runner = target
    elif store is not None:
        runner = Runner(target, store)
    else:
        raise TypeError(f"instrument() takes a treadle.Runner, or a Pipeline and its store; got {target!r}")
    return Metrics(runner, registry if registry is not None else REGISTRY)


__all__ = ["DURATION_BUCKETS", "LABELS", "REVIEW_BUCKETS", "Metrics", "StoreCollector", "instrument"]
