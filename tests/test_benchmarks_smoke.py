"""``python -m benchmarks --quick`` runs to the end and writes well-formed JSON.

Only the shape of the results is checked, never a speed: timings depend on the machine.
PostgreSQL (``$TREADLE_TEST_POSTGRES_URL``) and the peers (DBOS, LangGraph) are
optional: each is either measured or reported as skipped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.timeout(600)  # W1-W5, W7 on three stores: about 2-3 minutes on a quiet machine
def test_quick_benchmark_exits_0_and_writes_well_formed_json(tmp_path):
    """The quick suite succeeds; every workload reports positive figures for every store."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "W1 linear" in done.stdout

    data = json.loads(out.read_text())
    assert data["mode"] == "quick"
    assert data["errors"] == []
    assert {"platform", "cpu_count", "python", "sqlite_apsw", "packages"} <= set(data["machine"])

    floors = {(f["n"], f["synchronous"]): f for f in data["floor"]}
    assert {sync for _, sync in floors} == {"NORMAL", "FULL"}
    assert all(positive(f["transitions_per_s"]) and positive(f["seconds"]) for f in floors.values())

    workloads = data["workloads"]
    assert {name: w["name"] for name, w in workloads.items()} == {
        "W1": "linear", "W2": "fan-out", "W3": "diamond + review", "W4": "status",
        "W5": "resume", "W7": "large items"}
    settings = data["settings"]
    skipped = {sk["store"] for sk in data["skipped"]}

    local = {"memory", "sqlite", "sqlite-normal"}
    pg = data["postgres"]["measured"]
    assert pg or "postgresql" in skipped
    assert set(data["stores_measured"]) == local | ({"postgresql"} if pg else set())

    def expected(name: str) -> set[tuple[str, int]]:
        sizes = workloads[name]["sizes"]
        want = {(s, n) for s in local for n in sizes}
        if pg and name in settings["postgres_workloads"]:
            want |= {("postgresql", n) for n in sizes if n <= settings["postgres_max_n"]}
        return want

    w1 = workloads["W1"]
    assert {(r["store"], r["n"]) for r in w1["results"]} == expected("W1")
    for r in w1["results"]:
        for key in ("wall_s", "run_s", "transitions_per_s", "ratio_floor_normal",
                    "ratio_floor_full", "peak_rss_kb"):
            assert positive(r[key]), (r["store"], r["n"], key, r[key])
        assert r["transitions"] == r["n"] * 5
        assert r["rss_per_item_kb"] >= 0
    assert local <= set(w1["scaling"])
    assert all(positive(v["ratio"]) for v in w1["scaling"].values())

    w2 = workloads["W2"]
    assert {(r["store"], r["n"]) for r in w2["results"]} == expected("W2")
    for r in w2["results"]:
        assert r["stage_completions"] == 2 * r["n"] and r["subtask_completions"] == 8 * r["n"]
        assert r["transitions"] == 10 * r["n"]
        for key in ("run_s", "transitions_per_s", "us_per_transition", "peak_rss_kb"):
            assert positive(r[key]), (r["store"], r["n"], key, r[key])

    w3 = workloads["W3"]
    assert {(r["store"], r["n"]) for r in w3["results"]} == expected("W3")
    for r in w3["results"]:
        assert r["approved"] == r["n"] // 2
        assert r["transitions"] == 4 * r["n"] + 2 * r["approved"]
        for key in ("run1_s", "list_s", "approve_s", "run2_s", "total_s", "transitions_per_s"):
            assert positive(r[key]), (r["store"], r["n"], key, r[key])

    w4 = workloads["W4"]
    w4_pg = {"postgresql"} if pg and "W4" in settings["postgres_workloads"] else set()
    assert {r["store"] for r in w4["results"]} == local | w4_pg
    for r in w4["results"]:
        assert r["rows"] > 0
        for query in ("counts", "items_many", "items_none"):
            assert positive(r[query]["median_s"]), (r["store"], query)

    w5 = workloads["W5"]
    assert {r["store"] for r in w5["results"]} == {"sqlite", "sqlite-normal"}
    for r in w5["results"]:
        assert positive(r["first_stage_s"]) and positive(r["peak_rss_kb"])
        assert r["completed_items"] + r["pending_items"] == r["n"]

    w7 = workloads["W7"]
    [r] = w7["results"]
    assert r["store"] == "sqlite" and r["n"] == settings["w7_items"] == w7["items"]
    assert r["payload_bytes"] == r["n"] * r["size"] and r["size"] == settings["w7_size"] > 0
    assert r["small"]["size"] == 0 and r["large"]["size"] == r["size"]
    for side in (r["small"], r["large"]):
        assert side["transitions"] == 5 * r["n"]
        for key in ("run_s", "transitions_per_s", "peak_rss_kb", "rss_before_run_kb"):
            assert positive(side[key]), (key, side[key])
        assert side["rss_growth_kb"] >= 0
    assert positive(r["throughput_ratio"]) and r["growth_over_payload"] >= 0
    assert r["item_cache_limit"] == 64 * 2**20
    [w7_skip] = [sk for sk in data["skipped"] if sk.get("workload") == "W7"]
    assert set(w7_skip["store"].split(", ")) == set(data["stores_measured"]) - {"sqlite"}

    peers = data["peers"]
    assert "pip install" in peers["install"]
    measured = {name for name, versions in peers["installed"].items() if versions}
    for name in set(settings["peers"]) - measured:
        assert any(sk.get("peer") == name and "pip install" in sk["reason"]
                   for sk in data["skipped"]), name
    assert {(r["peer"], r["workload"]) for r in peers["results"]} == {
        (p, w) for p in measured for w in ("W1", "W2")}
    for r in peers["results"]:
        assert r["transitions"] == r["n"] * (5 if r["workload"] == "W1" else 10)
        assert positive(r["transitions_per_s"]) and positive(r["run_s"])
    assert {c["workload"] for c in peers["comparison"]} == ({"W1", "W2"} if measured else set())
    for c in peers["comparison"]:
        assert c["faster_peer"] in measured and positive(c["faster_peer_transitions_per_s"])
        assert all(positive(t["ratio"]) for t in c["treadle"].values())

    assert len(data["targets"]) == 9
    assert sum(t["target"].startswith("W4 ") for t in data["targets"]) == 2  # SQLite, PostgreSQL
    assert data["targets"][-1]["target"].startswith("W7 memory bounded by bytes")
    for t in data["targets"]:
        assert t["target"] and t["measured"] and t["met"] in (True, False, None)


def _run_script(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_pg_scale_measures_the_floor_and_each_runner_count_or_skips(tmp_path):
    """pg_scale runs the psycopg2 floor and W1 with 1 and 2 runner processes (with and
    without the history lock), every item completed once; without a server it skips."""
    out = tmp_path / "scale.json"
    done = _run_script("benchmarks.pg_scale", "--n", "20", "--runners", "1,2", "--repeats", "1",
                       "--sample", "20", "--no-feed-lock", "--json", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    if "PostgreSQL skipped" in done.stdout:
        assert not out.exists()
        return
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"floor", "1", "1-nolock", "2", "2-nolock"}
    assert all(positive(s["transitions_per_s"]) for s in data["summary"].values())
    for r in data["runs"]["2"]:
        assert len(r["per_runner"]) == 2 and sum(r["per_runner"]) == 20 * 5


@pytest.mark.slow
def test_bulk_approve_approves_every_review_and_reports_a_rate(tmp_path):
    """bulk_approve times approve_all on SQLite (and PostgreSQL when set) and checks
    every review was approved."""
    out = tmp_path / "bulk.json"
    done = _run_script("benchmarks.bulk_approve", "--n", "30", "--repeats", "1", "--json", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert "sqlite" in data["summary"]
    assert all(positive(v) for v in data["summary"].values())
    assert all(r["n"] == 30 for rs in data["runs"].values() for r in rs)
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_web_benchmark_quick_writes_its_figures(tmp_path):
    """``python -m benchmarks.web --quick`` serves, streams to 10 clients and reports every figure."""
    pytest.importorskip("starlette", reason="the web benchmark needs the web extra")
    out = tmp_path / "web.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.web", "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["inbox"]["waiting"] == 300
    for page in ("inbox_first_page", "overview", "items_first_page"):
        assert positive(data["inbox"][page]["median_ms"]), page
    live = data["live"]
    assert live["clients"] == 10 and live["decisions"] == 5
    assert all(positive(live[k]) for k in ("delay_median_s", "delay_max_s", "rss_idle_mb",
                                           "rss_10_clients_mb", "rss_after_mb"))
