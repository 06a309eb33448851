"""``treadle.contrib.prometheus``: counters, histograms and store gauges, scraped over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from treadle import Pipeline, Review, Runner, instrument, open_store, stage
from treadle.contrib import prometheus

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
N = 30


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` over HTTP, as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _pipeline(gate: threading.Event, entered: threading.Event) -> Pipeline:
    @stage()
    def fetch(item):
        if item["id"] == 0:
            entered.set()
            assert gate.wait(30), "the test never let the first item go"
        return 1

    @stage(after=[fetch], retry=2)
    def parse(item, ctx):
        if item["id"] % 5 == 0:
            raise ValueError("unparseable")
        if item["id"] % 3 == 0 and ctx.attempt == 1:
            raise ValueError("flaky")
        return 2

    @stage(after=[parse])
    def confirm(item):
        return Review({"id": item["id"]}, message="publish?")

    return Pipeline("metered", [fetch, parse, confirm])


def test_metrics_are_served_during_and_after_a_run_and_match_the_store(store_url):
    """During a run the runner and running stage show; at the end the counters equal
    the store's counts, the histograms count every attempt and the gauges show the
    waiting reviews; decisions feed the review-wait histogram."""
    gate, entered = threading.Event(), threading.Event()
    store = open_store(store_url)
    runner = Runner(_pipeline(gate, entered), store, workers=4)
    registry = CollectorRegistry()
    metrics = prometheus.instrument(runner, registry=registry)
    try:
        port = metrics.serve(0, addr="127.0.0.1")
        runner.submit(*({"id": i} for i in range(N)))
        done: list[Any] = []
        thread = threading.Thread(target=lambda: done.append(runner.run()))
        thread.start()
        assert entered.wait(30)
        during = scrape(port)
        assert value(during, "treadle_runners_alive") == 1
        assert value(during, "treadle_stage_items", pipeline="metered", stage="fetch", state="running") >= 1
        assert value(during, "treadle_stages_completed_total", pipeline="metered", stage="confirm") == 0
        gate.set()
        thread.join(30)
        assert done, "the run did not end"

        after = scrape(port)
        counts = runner.counts()
        for name in ("fetch", "parse", "confirm"):
            for kind, state in (("completed", "completed"), ("failed", "failed")):
                assert value(after, f"treadle_stages_{kind}_total", pipeline="metered", stage=name) \
                    == counts[name].get(state, 0), (name, kind, counts)
            assert value(after, "treadle_reviews_waiting", pipeline="metered", stage=name) \
                == counts[name].get("awaiting_review", 0)
        flaky = [i for i in range(N) if i % 5 == 0 or i % 3 == 0]
        unparseable = [i for i in range(N) if i % 5 == 0]
        assert value(after, "treadle_stages_retried_total", pipeline="metered", stage="parse") == len(flaky)
        assert value(after, "treadle_stages_failed_total", pipeline="metered", stage="parse") == len(unparseable)
        assert value(after, "treadle_stage_duration_seconds_count", pipeline="metered", stage="parse") \
            == N + len(flaky)
        assert value(after, "treadle_queue_wait_seconds_count", pipeline="metered", stage="fetch") == N
        waiting = N - len(unparseable)
        assert value(after, "treadle_reviews_waiting", pipeline="metered", stage="confirm") == waiting
        assert value(after, "treadle_review_oldest_wait_seconds", pipeline="metered", stage="confirm") > 0
        assert value(after, "treadle_review_oldest_wait_seconds", pipeline="metered", stage="fetch") == 0
        for state, n in runner.item_counts().items():
            assert value(after, "treadle_items", pipeline="metered", state=state) == n
        assert value(after, "treadle_items", pipeline="metered", state="awaiting_review") == waiting
        assert value(after, "treadle_runners_alive") == 0

        runner.approve(1, "confirm")
        runner.reject(2, "confirm", reason="no")
        decided = scrape(port)
        assert value(decided, "treadle_review_wait_seconds_count", pipeline="metered", stage="confirm") == 2
        assert value(decided, "treadle_stages_completed_total", pipeline="metered", stage="confirm") \
            == runner.counts()["confirm"]["completed"] == 1
        assert value(decided, "treadle_reviews_waiting", pipeline="metered", stage="confirm") == waiting - 2
    finally:
        gate.set()
        metrics.close()
        store.close()


def test_a_pipeline_and_its_store_work_as_well_as_a_runner(tmp_path):
    """``instrument(pipeline, store)`` reads the same gauges as with a runner."""
    @stage()
    def ask(item):
        return Review(item)

    pipeline = Pipeline("asked", [ask])
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    Runner(pipeline, store).submit({"id": "a"}, {"id": "b"})
    Runner(pipeline, store).run()
    registry = CollectorRegistry()
    with prometheus.instrument(pipeline, store, registry=registry) as metrics:
        port = metrics.serve(0, addr="127.0.0.1")
        samples = scrape(port)
    assert value(samples, "treadle_reviews_waiting", pipeline="asked", stage="ask") == 2
    with pytest.raises(TypeError, match="Runner, or a Pipeline and its store"):
        prometheus.instrument(pipeline)


def test_close_disconnects_everything_and_frees_the_registry():
    """After close() no instrument is left on the hot path, the port is closed and
    the registry can take another handle; two at once are refused clearly."""
    @stage()
    def one(item):
        return 1

    runner = Runner(Pipeline("solo", [one]), open_store("memory://"))
    registry = CollectorRegistry()
    assert not instrument.active()
    metrics = prometheus.instrument(runner, registry=registry)
    port = metrics.serve(0, addr="127.0.0.1")
    assert instrument.active()
    with pytest.raises(ValueError, match="already in this Prometheus registry"):
        prometheus.instrument(runner, registry=registry)
    metrics.close()
    assert not instrument.active()
    assert not any(f.name.startswith("treadle") for f in registry.collect())
    with pytest.raises(urllib.error.URLError):
        scrape(port)
    again = prometheus.instrument(runner, registry=registry)
    runner.submit({"id": 1})
    runner.run()
    samples = {s.name: s.value for f in registry.collect() for s in f.samples}
    assert samples["treadle_stages_completed_total"] == 1
    again.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_run_metrics_port_serves_metrics_while_the_run_lasts(tmp_path):
    """``python -m treadle run ... --metrics-port PORT`` answers /metrics during the run
    and stops serving when the run ends."""
    port, go = _free_port(), tmp_path / "go"
    env = {**os.environ, "TREADLE_OBS_GO": str(go), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "treadle", "run", "tests/obs/metrics_pipeline.py:pipeline",
           "--db", f"sqlite:///{tmp_path / 'm.db'}", "--item", '{"id": "a"}', "--item", '{"id": "b"}',
           "--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        samples: dict[Any, float] = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                samples = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
                continue
            if value(samples, "treadle_stage_items", pipeline="metered", stage="wait", state="running"):
                break
            time.sleep(0.05)
        assert value(samples, "treadle_runners_alive") == 1, samples
        assert value(samples, "treadle_stage_items", pipeline="metered", stage="wait", state="running") >= 1
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "2 item(s) await review" in out
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_bad_metrics_port_is_a_usage_error(tmp_path, capsys):
    """An impossible port is exit 2 with one line, before anything is submitted."""
    from tests.obs.metrics_pipeline import pipeline
    from treadle.cli import main

    url = f"sqlite:///{tmp_path / 'x.db'}"
    code = main(["run", f"{ROOT / 'tests' / 'obs' / 'metrics_pipeline.py'}:pipeline", "--db", url,
                 "--item", '{"id": "a"}', "--metrics-port", "70000"])
    assert code == 2
    assert "--metrics-port must be a port number" in capsys.readouterr().err
    assert Runner(pipeline, open_store(url)).items() == []
