"""``python -m benchmarks --quick`` runs to the end and writes well-formed JSON.

Only the shape of the results is checked, never a speed: timings depend on the machine.
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
        "W1": "linear", "W4": "status", "W5": "resume"}

    w1 = workloads["W1"]
    stores = {"memory", "sqlite", "sqlite-normal"}
    assert {(r["store"], r["n"]) for r in w1["results"]} == {
        (s, n) for s in stores for n in w1["sizes"]}
    for r in w1["results"]:
        for key in ("wall_s", "run_s", "transitions_per_s", "ratio_floor_normal",
                    "ratio_floor_full", "peak_rss_kb"):
            assert positive(r[key]), (r["store"], r["n"], key, r[key])
        assert r["transitions"] == r["n"] * 5
        assert r["rss_per_item_kb"] >= 0
    assert set(w1["scaling"]) == stores
    assert all(positive(v["ratio"]) for v in w1["scaling"].values())

    w4 = workloads["W4"]
    assert {r["store"] for r in w4["results"]} == stores
    for r in w4["results"]:
        assert r["rows"] > 0
        for query in ("counts", "items_many", "items_none"):
            assert positive(r[query]["median_s"]), (r["store"], query)

    w5 = workloads["W5"]
    assert {r["store"] for r in w5["results"]} == {"sqlite", "sqlite-normal"}
    for r in w5["results"]:
        assert positive(r["first_stage_s"]) and positive(r["peak_rss_kb"])
        assert r["completed_items"] + r["pending_items"] == r["n"]
