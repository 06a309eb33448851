"""``treadle.contrib.otel``: spans per stage, subtask, gate, review and item, in one trace per item."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

from tests.obs import spans as span_io
from treadle import (
    Accepted,
    FanOut,
    Pipeline,
    Rejected,
    Review,
    Runner,
    instrument,
    open_store,
    stage,
)
from treadle.contrib import otel

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exporter() -> Any:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    exp.provider = provider
    return exp


def _spans(exporter: InMemorySpanExporter) -> list[dict[str, Any]]:
    return [span_io.as_dict(s) for s in exporter.get_finished_spans()]


def _one(spans: list[dict[str, Any]], name: str, **attrs: Any) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name
             and all(s["attributes"].get(f"treadle.{k}") == v for k, v in attrs.items())]
    assert len(found) == 1, (name, attrs, [(s["name"], s["attributes"]) for s in spans])
    return found[0]


def _tree_pipeline(user_tracer: Any) -> Pipeline:
    tries: Counter[str] = Counter()

    def gate(item, output, ctx):
        return Accepted() if ctx.attempt > 1 else Rejected("try again")

    @stage(gate=gate, retry=3)
    def draft(item, ctx):
        return {"draft": ctx.attempt}

    @stage(after=[draft], retry=2)
    def flaky(item):
        tries["flaky"] += 1
        if tries["flaky"] == 1:
            raise ValueError("first attempt fails")
        return 1

    @stage(after=[flaky], retry=2)
    def enrich(item):
        def discogs():
            tries["discogs"] += 1
            if tries["discogs"] == 1:
                raise ConnectionError("discogs down")
            return "dg"
        return FanOut({"musicbrainz": lambda: "mb", "discogs": discogs})

    @stage(after=[enrich])
    def review(item, ctx):
        return Review({"title": "T"}, message="Confirm the title")

    @stage(after=[review])
    def export(item, ctx):
        with user_tracer.start_as_current_span("write file") as span:
            span.set_attribute("path", "/tmp/out")
        return "done"

    return Pipeline("tracks", [draft, flaky, enrich, review, export])


def test_a_fanout_a_retry_and_a_review_make_the_expected_span_tree(exporter, store_url):
    """Every span of the item is in the trace derived from its id; stage spans hang
    under the item span; gate and user spans under their stage, subtasks under the
    fan-out stage; failed attempts are errors with an exception event; the review
    wait is a span as long as the wait."""
    provider = exporter.provider
    pipeline = _tree_pipeline(provider.get_tracer("user"))
    store = open_store(store_url)
    runner = Runner(pipeline, store, workers=2)
    with otel.instrument(provider, runner):
        runner.submit({"id": "t1"})
        runner.run()
        time.sleep(0.3)
        runner.approve("t1", "review", reviewer="ann")
        runner.run()
    store.close()
    spans = _spans(exporter)
    trace_id = f"{otel.item_trace_id('tracks', 't1'):032x}"
    item_span_id = f"{otel.item_span_context('tracks', 't1').span_id:016x}"
    assert {s["trace_id"] for s in spans} == {trace_id}

    item = _one(spans, "item tracks")
    assert item["span_id"] == item_span_id and item["parent_id"] is None
    assert item["attributes"]["treadle.item.state"] == "completed"

    stage_spans = [s for s in spans if s["attributes"].get("treadle.kind") == "stage"]
    assert sorted((s["attributes"]["treadle.stage"], s["attributes"]["treadle.attempt"],
                   s["attributes"]["treadle.outcome"]) for s in stage_spans) == [
        ("draft", 1, "pending"), ("draft", 2, "completed"), ("enrich", 1, "fanout"),
        ("export", 1, "completed"), ("flaky", 1, "pending"), ("flaky", 2, "completed"),
        ("review", 1, "awaiting_review"),
    ]
    assert all(s["parent_id"] == item_span_id for s in stage_spans)
    for s in stage_spans:
        assert s["attributes"]["treadle.item_id"] == "t1"
        assert s["attributes"]["treadle.queue_wait_s"] >= 0

    failed = _one(spans, "stage flaky", attempt=1)
    assert failed["status"] == "ERROR" and failed["description"] == "ValueError: first attempt fails"
    assert failed["events"] == [{"name": "exception", "exception.type": "ValueError",
                                 "exception.message": "first attempt fails"}]
    assert _one(spans, "stage flaky", attempt=2)["status"] == "UNSET"

    gates = [s for s in spans if s["name"] == "gate draft"]
    assert sorted(g["attributes"]["treadle.outcome"] for g in gates) == ["accepted", "rejected"]
    for g in gates:
        parent = _one(spans, "stage draft", attempt=g["attributes"]["treadle.attempt"])
        assert g["parent_id"] == parent["span_id"]

    fan = _one(spans, "stage enrich")
    subs = [s for s in spans if s["attributes"].get("treadle.kind") == "subtask"]
    assert sorted((s["name"], s["attributes"]["treadle.attempt"], s["status"]) for s in subs) == [
        ("subtask enrich/discogs", 1, "ERROR"), ("subtask enrich/discogs", 2, "UNSET"),
        ("subtask enrich/musicbrainz", 1, "UNSET"),
    ]
    assert all(s["parent_id"] == fan["span_id"] for s in subs)

    wait = _one(spans, "review review")
    assert wait["parent_id"] == item_span_id
    assert wait["attributes"]["treadle.review.decision"] == "approved"
    assert wait["attributes"]["treadle.review.reviewer"] == "ann"
    assert wait["end"] - wait["start"] >= 0.3
    assert wait["attributes"]["treadle.review.wait_s"] == pytest.approx(wait["end"] - wait["start"], abs=0.01)
    assert wait["start"] >= _one(spans, "stage review")["start"]

    user = _one(spans, "write file")
    assert user["parent_id"] == _one(spans, "stage export")["span_id"]
    assert item["start"] <= min(s["start"] for s in spans) and item["end"] >= max(s["end"] for s in spans)


def test_user_spans_in_async_stages_are_children_of_the_stage_span(exporter):
    """On the event loop too, the stage span is current inside the coroutine."""
    tracer = exporter.provider.get_tracer("user")

    @stage()
    async def fetch(item):
        with tracer.start_as_current_span("http get"):
            await asyncio.sleep(0.01)
        return 1

    runner = Runner(Pipeline("aio", [fetch]), open_store("memory://"))
    with otel.instrument(exporter.provider, runner.pipeline):
        runner.submit({"id": "a"}, {"id": "b"})
        runner.run()
    spans = _spans(exporter)
    for item_id in ("a", "b"):
        stage_span = _one(spans, "stage fetch", item_id=item_id)
        children = [s for s in spans if s["parent_id"] == stage_span["span_id"]]
        assert [c["name"] for c in children] == ["http get"]
        assert children[0]["trace_id"] == f"{otel.item_trace_id('aio', item_id):032x}"


def test_failed_items_rejections_and_rollbacks_are_traced(exporter):
    """A stage failing for good, its rollback, and the failed item span are errors."""
    @stage(rollback=lambda item: None)
    def book(item):
        return 1

    @stage(after=[book])
    def charge(item):
        raise RuntimeError("card declined")

    runner = Runner(Pipeline("shop", [book, charge], on_failure="rollback"), open_store("memory://"))
    with otel.instrument(exporter.provider, runner):
        runner.submit({"id": 7})
        runner.run()
    spans = _spans(exporter)
    charge_span = _one(spans, "stage charge")
    assert charge_span["status"] == "ERROR"
    assert charge_span["attributes"]["treadle.outcome"] == "failed"
    rollback = _one(spans, "rollback book")
    assert rollback["attributes"]["treadle.outcome"] == "rolled_back"
    assert rollback["parent_id"] == f"{otel.item_span_context('shop', '7').span_id:016x}"
    item = _one(spans, "item shop")
    assert item["attributes"]["treadle.item.state"] in ("failed", "rolled_back")


def test_a_pipeline_filter_and_close_leave_other_runs_alone(exporter):
    """Connected to one pipeline, other pipelines make no spans; after close()
    nothing is connected (no instrument on the hot path)."""
    @stage()
    def one(item):
        return 1

    traced, other = Pipeline("traced", [one]), Pipeline("other", [one])
    assert not instrument.active()
    handle = otel.instrument(exporter.provider, traced)
    assert instrument.active()
    for p in (traced, other):
        r = Runner(p, open_store("memory://"))
        r.submit({"id": "x"})
        r.run()
    handle.close()
    assert not instrument.active()
    assert {s["attributes"]["treadle.pipeline"] for s in _spans(exporter)} == {"traced"}
    exporter.clear()
    r = Runner(traced, open_store("memory://"))
    r.submit({"id": "y"})
    r.run()
    assert exporter.get_finished_spans() == ()


def test_sampling_is_decided_per_item_for_all_its_spans(exporter):
    """With a ratio sampler, an item's spans are all kept or all dropped (the
    decision follows the trace id, so every process agrees)."""
    provider = TracerProvider(sampler=TraceIdRatioBased(0.5))
    exp = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exp))

    @stage()
    def a(item):
        return 1

    @stage(after=[a])
    def b(item):
        return 1

    runner = Runner(Pipeline("sampled", [a, b]), open_store("memory://"))
    with otel.instrument(provider, runner):
        runner.submit(*({"id": i} for i in range(40)))
        runner.run()
    per_item = Counter(s.attributes["treadle.item_id"] for s in exp.get_finished_spans())
    assert 0 < len(per_item) < 40
    assert set(per_item.values()) == {3}  # a, b and the item span


@pytest.mark.slow
def test_after_a_sigkill_and_resume_the_item_continues_its_trace(tmp_path):
    """Spans from a process killed mid-stage, from the resumed process and from
    the process that approves share the item's trace id and item-level parent;
    the review wait starts when the store says it did."""
    db, spans_file = tmp_path / "traced.db", tmp_path / "spans.jsonl"
    worker = [sys.executable, str(ROOT / "tests" / "obs" / "traced_worker.py"), str(db), str(spans_file)]
    first = subprocess.Popen(worker)
    deadline = time.time() + 30

    def t1_prepared() -> bool:
        return spans_file.exists() and any(
            s["name"] == "stage prepare" and s["attributes"]["treadle.item_id"] == "t1"
            for s in span_io.read(spans_file))

    while not (Path(f"{spans_file}.inside").exists() and t1_prepared()) and time.time() < deadline:
        time.sleep(0.02)
    assert Path(f"{spans_file}.inside").exists(), "the first process never reached the slow stage"
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed = span_io.read(spans_file)
    Path(f"{spans_file}.killed").touch()

    subprocess.run(worker, check=True, timeout=60)
    resumed = span_io.read(spans_file)[len(killed):]
    reviewed_at = time.time()
    time.sleep(0.2)
    subprocess.run([*worker, "--approve", "t1"], check=True, timeout=60)
    approved = span_io.read(spans_file)[len(killed) + len(resumed):]

    trace_id = f"{otel.item_trace_id('traced', 't1'):032x}"
    item_span_id = f"{otel.item_span_context('traced', 't1').span_id:016x}"

    def of_t1(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in spans if s["attributes"].get("treadle.item_id") == "t1"]

    before = of_t1(killed)
    assert [s["name"] for s in before] == ["stage prepare"]  # slow never ended there
    after = of_t1(resumed)
    assert {s["name"] for s in after} == {"stage slow", "stage check"}
    assert _one(after, "stage slow")["attributes"]["treadle.attempt"] >= 1
    last = of_t1(approved)
    assert {s["name"] for s in last} == {"review check", "stage publish", "item traced"}
    for s in before + after + last:
        assert s["trace_id"] == trace_id
        assert s["parent_id"] == (None if s["name"] == "item traced" else item_span_id)
    item = _one(last, "item traced")
    assert item["span_id"] == item_span_id
    assert item["start"] <= before[0]["start"]  # from the stored submission time
    wait = _one(last, "review check")
    assert wait["start"] <= reviewed_at  # the wait began in the second process
    assert wait["start"] >= _one(after, "stage check")["start"]
    t2 = {s["trace_id"] for s in killed + resumed + approved if s["attributes"].get("treadle.item_id") == "t2"}
    assert t2 == {f"{otel.item_trace_id('traced', 't2'):032x}"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_overhead_benchmark_runs_and_reports_a_ratio(tmp_path):
    """``python -m benchmarks.obs_overhead`` measures both sides and writes the ratio."""
    out = tmp_path / "obs.json"
    subprocess.run([sys.executable, "-m", "benchmarks.obs_overhead", "--n", "50", "--repeats", "1",
                    "--sides", "plain,otel,prometheus,observed", "--json", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=110)
    import json

    result = json.loads(out.read_text())
    assert set(result["ratio"]) == {"plain", "otel", "prometheus", "observed"}
    assert result["ratio"]["plain"] == 1.0 and all(r > 0 for r in result["ratio"].values())
    assert result["runs"]["observed"][0]["spans"] == 50 * 6
