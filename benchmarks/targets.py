"""The benchmark issue's targets, checked against a results dict.

Each target is judged on treadle's default durable store (``sqlite``:
``sqlite:///file.db``, synchronous=full), the store users get without
options; the other stores' figures appear in ``measured`` for context.
``met`` is None when the run did not measure what the target needs (e.g.
``--quick`` sizes).
"""

from __future__ import annotations

from typing import Any

STORE = "sqlite"


def _row(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _ratio_text(r: float) -> str:
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x"


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    wl = results["workloads"]
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    # 1. W1 SQLite N=10,000 at default durability over the floor at NORMAL.
    t = ("W1 SQLite N=10,000, default durability (synchronous=full): transitions/s >= 1.0x the floor "
         "at synchronous=NORMAL")
    r = _row(wl["W1"]["results"], store=STORE, n=10_000)
    if r is None or r.get("ratio_floor_normal") is None:
        add(t, "not measured (needs W1 N=10,000 and the floor)", None)
    else:
        other = _row(wl["W1"]["results"], store="sqlite-normal", n=10_000)
        extra = (f"; synchronous=normal {other['ratio_floor_normal']:.2f}x"
                 if other and other.get("ratio_floor_normal") else "")
        add(t, f"{r['ratio_floor_normal']:.2f}x ({r['transitions_per_s']:,.0f} vs floor "
               f"{r['transitions_per_s'] / r['ratio_floor_normal']:,.0f} transitions/s){extra}",
            r["ratio_floor_normal"] >= 1.0)

    # 2. >= 50x the faster peer on W1 and W2.
    comparison = results.get("peers", {}).get("comparison", [])
    for workload in ("W1", "W2"):
        t = f"{workload}: >= 50x the transitions/s of the faster of DBOS and LangGraph"
        rows = [c for c in comparison if c["workload"] == workload and STORE in c["treadle"]]
        if not rows:
            add(t, "not measured (peers not installed or not run)", None)
            continue
        c = max(rows, key=lambda c: c["peer_n"])
        mine = c["treadle"][STORE]
        both = {"dbos", "langgraph"} <= set(c["peers"])
        extra = "" if both else " (only one peer measured)"
        add(t, f"{_ratio_text(mine['ratio'])} (treadle {mine['transitions_per_s']:,.0f} at "
               f"N={mine['n']:,} vs {c['faster_peer']} {c['faster_peer_transitions_per_s']:,.0f} "
               f"at N={c['peer_n']:,}){extra}", mine["ratio"] >= 50 if both else None)

    # 3. Scaling: per-transition cost N=100,000 vs N=1,000, and RSS per item.
    # (issue #19: within 1.1x, on SQLite and on the memory store)
    t = "W1 cost per transition at N=100,000 within 1.1x of N=1,000 (SQLite and memory)"
    scaling = wl["W1"].get("scaling", {})
    sc, mem = scaling.get(STORE), scaling.get("memory")
    if sc is None or sc["from_n"] != 1_000 or sc["to_n"] < 100_000:
        add(t, "not measured (needs W1 N=1,000 and N=100,000)", None)
    else:
        others = "; ".join(f"{k} {_ratio_text(v['ratio'])}" for k, v in scaling.items()
                           if k != STORE and v["to_n"] == sc["to_n"])
        add(t, f"{_ratio_text(sc['ratio'])} ({sc['us_per_transition_from']:.0f} -> "
               f"{sc['us_per_transition_to']:.0f} us)" + (f"; {others}" if others else ""),
            sc["ratio"] <= 1.1 and (mem is None or mem["ratio"] <= 1.1))
    t = "W1 RSS growth under 2 KB per item (N=100,000)"
    r = _row(wl["W1"]["results"], store=STORE, n=100_000)
    if r is None:
        add(t, "not measured (needs W1 N=100,000)", None)
    else:
        others = "; ".join(f"{x['store']} {x['rss_per_item_kb']:.2f} KB"
                           for x in wl["W1"]["results"] if x["n"] == 100_000 and x["store"] != STORE)
        add(t, f"{r['rss_per_item_kb']:.2f} KB/item" + (f"; {others}" if others else ""),
            r["rss_per_item_kb"] < 2.0)

    # 4. W4 status queries on 1,000,000 rows, on SQLite and PostgreSQL (issue #19:
    # counts() under 50 ms, items(stage, state, limit=100) under 20 ms).
    for store, label in ((STORE, "SQLite"), ("postgresql", "PostgreSQL")):
        t = (f"W4 {label}: counts() under 50 ms, items(stage, state, limit=100) under 20 ms "
             "on 1,000,000 rows")
        r = _row(wl["W4"]["results"], store=store)
        if r is None or r["rows"] < 1_000_000:
            add(t, "not measured (needs W4 with 1,000,000 rows)", None)
            continue
        q = {"counts()": r["counts"]["median_s"], "items(pending)": r["items_many"]["median_s"],
             "items(failed)": r["items_none"]["median_s"]}
        met = q["counts()"] < 0.050 and max(q["items(pending)"], q["items(failed)"]) < 0.020
        add(t, ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in q.items())
            + f" (median; cold counts() {r['counts']['first_s'] * 1000:.1f} ms)", met)

    # 5. W5 resume.
    t = "W5 under 1 s from process start to the first stage"
    r = _row(wl["W5"]["results"], store=STORE)
    if r is None:
        add(t, "not measured", None)
    else:
        add(t, f"{r['first_stage_s']:.2f} s median, {r['first_stage_max_s']:.2f} s max "
               f"(N={r['n']:,}, half complete)", r["first_stage_max_s"] < 1.0)

    # 6. Memory bounded by bytes (#19): W7, 100 KB items, at least 1 GB of them.
    t = ("W7 memory bounded by bytes: peak RSS growth during run() under 0.1x the payload "
         "(N x 100 KB items, N >= 10,000)")
    r = _row(wl.get("W7", {}).get("results", []), store=STORE)
    if r is None or r["payload_bytes"] < 10_000 * 100_000:
        add(t, "not measured (needs W7 with at least 10,000 items of 100 KB)"
            + (f"; at N={r['n']:,}: growth {r['rss_growth_mb']:.0f} MB = "
               f"{r['growth_over_payload']:.2f}x the payload" if r else ""), None)
    else:
        add(t, f"{r['growth_over_payload']:.3f}x ({r['rss_growth_mb']:.0f} MB for "
               f"{r['payload_bytes'] / 2**20:,.0f} MB of items); throughput "
               f"{_ratio_text(r['throughput_ratio'])} that of small items",
            r["growth_over_payload"] < 0.1)
    return out
