"""Machine information and the text / markdown renderings of a results dict."""

from __future__ import annotations

import hashlib
import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .peers import PEERS
from .suite import ROOT, STORES


# -- machine -------------------------------------------------------------------------
def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def git_info() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = run("status", "--porcelain", "--", "treadle", "contrib")
    return {"commit": run("rev-parse", "--short", "HEAD"),
            "library_changes": changed.splitlines() if changed else [],
            "library_digest": library_digest()}


def library_digest() -> str:
    """A hash of the library's source (treadle/ and contrib/), to tell whether it
    changed while the suite ran."""
    h = hashlib.sha256()
    for top in ("treadle", "contrib"):
        for folder, dirs, files in sorted(os.walk(os.path.join(ROOT, top))):
            dirs.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    h.update(os.path.relpath(path, ROOT).encode())
                    try:
                        with open(path, "rb") as fh:
                            h.update(fh.read())
                    except OSError:
                        pass
    return h.hexdigest()[:16]


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    try:
        import apsw

        apsw_sqlite = apsw.sqlite_lib_version()
    except ImportError:
        apsw_sqlite = "apsw not installed"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite_apsw": apsw_sqlite,
        "sqlite_stdlib": sqlite3.sqlite_version,
        "packages": {name: _pkg(name) for name in ("treadle", "peewee", "apsw",
                                                   "psycopg2-binary")},
        "git": git_info(),
    }


# -- formatting ------------------------------------------------------------------------
def _s(x: float | None) -> str:
    """Seconds: 3 decimals below 10 s, fewer above."""
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _ms(x: float | None) -> str:
    """Seconds shown as milliseconds."""
    return "-" if x is None else f"{x * 1000:.1f}"


def _n(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.0f}"


def _store_rank(store: str) -> int:
    return list(STORES).index(store) if store in STORES else len(STORES)


def _table(headers: list[str], rows: list[list[str]], markdown: bool, numeric: bool = True) -> str:
    """A table, first column left-aligned, the others right-aligned if ``numeric``."""
    if not rows:
        return "(no results)\n"
    if markdown:
        right = "--:" if numeric else "---"
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i == 0 else right for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)]) + "\n"


def sections(results: dict[str, Any], markdown: bool) -> list[tuple[str, str, str]]:
    """(title, explanation, table) for each part of the report, for the workloads run."""
    ran = set(results["settings"]["workloads"])
    if results.get("peers", {}).get("results"):
        ran.add("peers")
    return [(title, text, table) for name, title, text, table in _sections(results, markdown)
            if name in ran]


def _sections(results: dict[str, Any], markdown: bool) -> list[tuple[str, str, str, str]]:
    wl = results["workloads"]
    out = []

    rows = [[_n(f["n"]), f["synchronous"], _n(f["transitions"]), _s(f["seconds"]),
             _n(f["transitions_per_s"]), _s(f["setup_s"])] for f in results["floor"]]
    out.append(("W1", "Floor: plain sqlite3, one transaction per transition",
                "WAL mode, stdlib sqlite3. Each transition: BEGIN; UPDATE the (item, stage) row "
                "to completed with its output JSON; INSERT a history row; COMMIT. The database "
                "holds all N items' rows; a sample of the transitions is timed.",
                _table(["N items", "synchronous", "timed transitions", "seconds",
                        "transitions/s", "setup s"], rows, markdown)))

    rows = [[r["store"], _n(r["n"]), _s(r["wall_s"]), _s(r["submit_s"]), _s(r["run_s"]),
             _n(r["transitions_per_s"]), _ratio(r["ratio_floor_normal"]),
             _ratio(r["ratio_floor_full"]), _mb(r["peak_rss_kb"]), f"{r['rss_per_item_kb']:.2f}"]
            for r in sorted(wl["W1"]["results"], key=lambda r: (r["n"], _store_rank(r["store"])))]
    out.append(("W1", "W1 linear: N items x 5 stages",
                "wall = submit + run; transitions/s = stage completions / run seconds; "
                "x floor = treadle's transitions/s over the floor's at the same N; "
                "RSS/item = (peak RSS - RSS before submit) / N.",
                _table(["store", "N", "wall s", "submit s", "run s", "transitions/s",
                        "x floor NORMAL", "x floor FULL", "peak RSS MB", "RSS/item KB"],
                       rows, markdown)))

    rows = [[store, f"{_n(v['from_n'])} -> {_n(v['to_n'])}", f"{v['us_per_transition_from']:.0f}",
             f"{v['us_per_transition_to']:.0f}", _ratio(v["ratio"])]
            for store, v in wl["W1"]["scaling"].items()]
    out.append(("W1", "W1 scaling",
                "Run seconds per transition at the largest N over that at the smallest "
                "(1.00x = linear scaling).",
                _table(["store", "N", "us/transition (small N)", "us/transition (large N)",
                        "scaling"], rows, markdown)))

    rows = [[r["store"], _n(r["n"]), _s(r["wall_s"]), _s(r["submit_s"]), _s(r["run_s"]),
             _n(r["transitions_per_s"]), _n(r["stage_completions"] / r["run_s"]),
             f"{r['us_per_transition']:.0f}", _mb(r["peak_rss_kb"]),
             f"{r['rss_per_item_kb']:.2f}"]
            for r in sorted(wl.get("W2", {}).get("results", []),
                            key=lambda r: (r["n"], _store_rank(r["store"])))]
    out.append(("W2", "W2 fan-out: N items x (fan of 8 subtasks -> join)",
                "Stage `fan` returns `FanOut({\"s0\": fn, ..., \"s7\": fn})` (each subtask "
                "returns a small dict); stage `join` reads `ctx.outputs[\"fan\"]`. "
                "transitions = stage completions + subtask completions = 10 per item "
                "(2 stages + 8 subtasks); transitions/s and stages/s are over run seconds.",
                _table(["store", "N", "wall s", "submit s", "run s", "transitions/s",
                        "stages/s", "us/transition", "peak RSS MB", "RSS/item KB"],
                       rows, markdown)))

    rows = [[r["store"], _n(r["n"]), _s(r["run1_s"]), _s(r["list_s"]), _s(r["approve_s"]),
             _s(r["run2_s"]), _s(r["total_s"]), _n(r["transitions_per_s"]),
             _n(r["transitions_run1"] / r["run1_s"]), _n(r["approved"] / r["approve_s"]),
             _mb(r["peak_rss_kb"])]
            for r in sorted(wl.get("W3", {}).get("results", []),
                            key=lambda r: (r["n"], _store_rank(r["store"])))]
    out.append(("W3", "W3 diamond with a review gate",
                "Stages a -> b, a -> c, b + c -> review (returns `treadle.Review(data)` for "
                "every item) -> publish. Phases: run 1 (a, b, c, and review asking for a "
                "decision), list = `runner.items(stage=\"review\", state=\"awaiting_review\")` "
                "(full `ItemStatus` of every waiting item), approve = `runner.approve(id, "
                "\"review\")` for half of them one by one (one transaction each), run 2 "
                "(publish for the approved half). Transitions: 4 per item in run 1, one per "
                "approval, one per published item (5 N in all); overall transitions/s = "
                "transitions / (run 1 + list + approve + run 2).",
                _table(["store", "N", "run 1 s", "list s", "approve N/2 s", "run 2 s",
                        "total s", "transitions/s overall", "run 1 transitions/s",
                        "approvals/s", "peak RSS MB"], rows, markdown)))

    peers = results.get("peers", {})
    rows = [[PEERS[r["peer"]].label, r["workload"], _n(r["n"]), str(r["callers"]),
             _s(r["setup_s"]), _s(r["run_s"]), _n(r["transitions"]),
             _n(r["transitions_per_s"]), f"{r['us_per_transition']:.0f}", _n(r["checkpoints"]),
             _mb(r["peak_rss_kb"])]
            for r in sorted(peers.get("results", []),
                            key=lambda r: (r["workload"], r["n"], r["peer"], r["callers"]))]
    out.append(("peers", "Peers: DBOS Transact and LangGraph on the same work",
                "The same logical work, one item = one workflow (DBOS) or one graph thread "
                "(LangGraph): W1 = 5 transitions per item, W2 = 10 (fan + 8 subtasks + join). "
                "callers = items run concurrently from that many threads (1 = one after "
                "another); the best caller count is the one compared. setup = launch / "
                "compile; 'checkpoints' = rows the peer wrote (DBOS: step outputs; "
                "LangGraph: checkpoints).",
                _table(["peer", "workload", "N", "callers", "setup s", "run s", "transitions",
                        "transitions/s", "us/transition", "checkpoints", "peak RSS MB"],
                       rows, markdown)))
    rows = []
    for c in peers.get("comparison", []):
        peer_text = ", ".join(f"{PEERS[p].label} {_n(v['transitions_per_s'])} ({v['callers']} "
                              f"caller{'s' if v['callers'] > 1 else ''})"
                              for p, v in c["peers"].items())
        for store, t in sorted(c["treadle"].items(), key=lambda kv: _store_rank(kv[0])):
            rows.append([c["workload"], _n(c["peer_n"]), peer_text, store, _n(t["n"]),
                         _n(t["transitions_per_s"]), _ratio(t["ratio"])])
    out.append(("peers", "treadle over the faster peer",
                "treadle's transitions/s (from the W1 / W2 tables, at the N closest to the "
                "peers') over the faster peer's best.",
                _table(["workload", "peer N", "peers (best transitions/s)", "treadle store",
                        "treadle N", "treadle transitions/s", "x faster peer"], rows,
                       markdown)))

    rows = [[r["store"], _n(r["rows"]), _s(r["build_s"]),
             _ms(r["counts"]["median_s"]), _ms(r["counts"]["first_s"]),
             _ms(r["items_many"]["median_s"]), _ms(r["items_none"]["median_s"]),
             _mb(r["peak_rss_kb"])] for r in wl["W4"]["results"]]
    out.append(("W4", "W4 status queries",
                "All stages pending. items(...) asks for limit=100: 's3/pending' matches every "
                "item, 's3/failed' matches none. Median of the repeats; 'first' is the cold call.",
                _table(["store", "rows", "build s", "counts() ms", "counts() first ms",
                        "items(s3, pending) ms", "items(s3, failed) ms", "peak RSS MB"],
                       rows, markdown)))

    rows = [[r["store"], _n(r["n"]), _s(r["first_stage_s"]),
             f"{_s(r['first_stage_min_s'])} - {_s(r['first_stage_max_s'])}",
             _s(r["median_interpreter_s"]), _s(r["median_imports_s"]),
             _s(r["median_open_store_s"]), _s(r["median_run_to_first_stage_s"]),
             _mb(r["peak_rss_kb"])] for r in wl["W5"]["results"]]
    out.append(("W5", "W5 resume: fresh process to first stage",
                "Store of N items, half of them complete, the rest pending. Median over "
                "the repeats, each on a fresh copy of the store; the parts are: interpreter "
                "start, imports (treadle + pipeline module), open_store, and Runner.run() "
                "until the first stage function is entered.",
                _table(["store", "items", "first stage s", "min - max", "interpreter s",
                        "imports s", "open_store s", "run -> stage s", "peak RSS MB"],
                       rows, markdown)))
    rows = []
    for r in wl.get("W7", {}).get("results", []):
        small, large = r["small"], r["large"]
        rows.append([r["store"], _n(r["n"]), _n(r["size"]), _mb(r["payload_bytes"] / 1024),
                     _n(small["transitions_per_s"]), _n(large["transitions_per_s"]),
                     _ratio(r["throughput_ratio"]), _mb(small["rss_growth_kb"]),
                     _mb(large["rss_before_run_kb"]), _mb(large["peak_rss_kb"]),
                     _mb(large["rss_growth_kb"]), f"{r['growth_over_payload']:.3f}"])
    out.append(("W7", "W7 large items: N items of 100 KB x 5 stages, against N small items",
                "The W1 pipeline over items `{\"id\": i, \"blob\": <size> characters}`, "
                "submitted 50 per transaction (the child never holds the whole payload), then "
                "over as many small items `{\"id\": i}` (the baseline, same run, repeats "
                "interleaved). RSS growth = peak RSS at the end of `run()` - RSS just before "
                "it (a peak reached while submitting counts too: an upper bound); "
                "growth / payload = that growth over N x size. x small = large items' "
                "transitions/s over small items'.",
                _table(["store", "N", "item bytes", "payload MB", "small transitions/s",
                        "large transitions/s", "x small", "small: RSS growth MB",
                        "RSS before run MB", "peak RSS MB", "RSS growth MB",
                        "growth / payload"], rows, markdown)))
    return out


def _met(flag: bool | None) -> str:
    return "n/a" if flag is None else "MET" if flag else "missed"


def targets_table(results: dict[str, Any], markdown: bool) -> str:
    rows = [[t["target"], t["measured"], _met(t["met"])] for t in results.get("targets", [])]
    return _table(["target", "measured", "met?"], rows, markdown, numeric=False)


def headlines(results: dict[str, Any]) -> list[str]:
    """A few one-line figures for the summary."""
    wl = results["workloads"]
    out = []
    for name, key, unit in (("W1", "W1", "stage completions"),
                            ("W2", "W2", "stage + subtask completions")):
        by_n: dict[int, list[str]] = {}
        for r in sorted(wl.get(key, {}).get("results", []), key=lambda r: _store_rank(r["store"])):
            by_n.setdefault(r["n"], []).append(f"{r['store']} {_n(r['transitions_per_s'])}")
        for n, parts in sorted(by_n.items()):
            out.append(f"{name} N={n:,} transitions/s ({unit}): " + ", ".join(parts))
    for r in sorted(wl.get("W3", {}).get("results", []), key=lambda r: (r["n"], _store_rank(r["store"]))):
        out.append(f"W3 N={r['n']:,} {r['store']}: {_n(r['transitions_per_s'])} transitions/s overall "
                   f"(run 1 {_s(r['run1_s'])} s, list {_s(r['list_s'])} s, approve "
                   f"{_s(r['approve_s'])} s, run 2 {_s(r['run2_s'])} s)")
    for r in wl.get("W7", {}).get("results", []):
        out.append(f"W7 N={r['n']:,} x {r['size']:,} bytes {r['store']}: run() peak RSS growth "
                   f"{r['rss_growth_mb']:.0f} MB for {r['payload_bytes'] / 2**20:,.0f} MB of "
                   f"items ({r['growth_over_payload']:.3f}x); {_ratio(r['throughput_ratio'])} "
                   "the transitions/s of small items")
    for c in results.get("peers", {}).get("comparison", []):
        t = c["treadle"].get("sqlite")
        if t:
            out.append(f"{c['workload']} vs peers: treadle sqlite {_n(t['transitions_per_s'])} "
                       f"(N={t['n']:,}) / {PEERS[c['faster_peer']].label} "
                       f"{_n(c['faster_peer_transitions_per_s'])} (N={c['peer_n']:,}) = "
                       f"{_ratio(t['ratio'])}")
    return out


def notes(results: dict[str, Any]) -> list[str]:
    lines = []
    for sk in results["skipped"]:
        what = f"{sk['store']}" + (f" ({sk['workload']})" if "workload" in sk else "")
        lines.append(f"Skipped {what}: {sk['reason']}")
    for err in results.get("retried", []):
        what = ", ".join(f"{k}={v}" for k, v in err.items() if k not in ("error", "attempt"))
        last = err["error"].strip().splitlines()[-1] if err["error"].strip() else "?"
        lines.append(f"FAILED, then retried: {what} (attempt {err['attempt']}): `{last}`")
    for err in results["errors"]:
        what = ", ".join(f"{k}={v}" for k, v in err.items() if k != "error")
        last = err["error"].strip().splitlines()[-1] if err["error"].strip() else "?"
        lines.append(f"FAILED {what}: `{last}` (the JSON holds the traceback's tail)")
    if results["settings"].get("item_cache") is not None:
        lines.append(f"treadle's item JSON cache bound (`BaseStore.ITEM_CACHE_BYTES`, default "
                     f"64 MiB) was set to {results['settings']['item_cache']:,} bytes in every "
                     "measurement (`--item-cache`).")
    start = results.get("machine", {}).get("git", {})
    end = results.get("git_end") or {}
    if end and (end.get("library_digest") != start.get("library_digest")
                or end.get("commit") != start.get("commit")):
        lines.append(f"The library changed while the suite ran (commit {start.get('commit')} -> "
                     f"{end.get('commit')}, source digest {start.get('library_digest')} -> "
                     f"{end.get('library_digest')}): figures measured before and after the "
                     "change may differ.")
    pg = results.get("postgres") or {}
    if pg.get("measured") and (pg.get("settings") or {}).get("autovacuum") == "off":
        lines.append("The PostgreSQL server runs with autovacuum=off, so the benchmark's "
                     "fresh tables are never ANALYZEd during a measurement: the query planner "
                     "works without statistics, as it would on any server in the first "
                     "minute after a large submit.")
    return lines


def format_text(results: dict[str, Any]) -> str:
    parts = [f"treadle benchmarks ({results['mode']} mode, {results['duration_s']:.0f} s)\n"]
    for title, _, table in sections(results, markdown=False):
        parts.append(f"{title}\n{table}")
    if results.get("targets"):
        parts.append(f"Targets (treadle's default store, sqlite synchronous=full)\n"
                     f"{targets_table(results, markdown=False)}")
    parts.extend(f"note: {line}" for line in notes(results))
    return "\n".join(parts) + "\n"


def format_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    s = results["settings"]
    git = m["git"]
    source = git["commit"] or "unknown"
    if git["library_changes"]:
        source += " with uncommitted library changes: " + ", ".join(
            f"`{c.strip()}`" for c in git["library_changes"])
    peers = results.get("peers", {})
    installed = peers.get("installed", {})
    pg = results.get("postgres", {})
    info = [
        ("Platform", m["platform"]), ("CPU", f"{m['cpu_model']} ({m['cpu_count']} CPUs, "
                                             f"{m['cpus_usable']} usable)"),
        ("Memory", f"{m['memory_gib']} GiB"),
        ("Python", f"{m['python']} ({m['python_implementation']})"),
        ("SQLite (apsw, used by treadle)", m["sqlite_apsw"]),
        ("SQLite (stdlib sqlite3, used by the floor, DBOS and LangGraph)", m["sqlite_stdlib"]),
        ("Packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())),
        ("Peers", ", ".join(
            f"{PEERS[name].label}: " + (", ".join(f"{d} {v}" for d, v in vers.items())
                                        if vers else "not installed")
            for name, vers in installed.items()) or "not run"),
        ("PostgreSQL", (f"{pg['server_version']} on the same machine; "
                        + ", ".join(f"{k}={v}" for k, v in (pg.get("settings") or {}).items()))
         if pg.get("measured") else "not measured"),
        ("Source", source),
        ("Load average (start / end)", f"{results['load_start']} / {results['load_end']}"),
        ("Started", results["started_at"]),
        ("Duration", f"{results['duration_s']:.0f} s"),
    ]
    stores = [k for k in s["stores"] if k in results.get("stores_measured", s["stores"])]
    out = [
        f"# treadle benchmark results ({results['mode']} mode)\n",
        "Generated by the benchmark suite in `benchmarks/`; rerun it to refresh this file.\n",
        f"Command:\n\n```\n{results['command']}\n```\n",
        "## Summary\n",
        "Targets of the benchmark issue, judged on treadle's default store (`sqlite`: "
        "`sqlite:///file.db`, synchronous=full); other stores are given for context.\n",
        targets_table(results, markdown=True),
        *(f"- {line}" for line in headlines(results)),
        "",
        "## Machine\n",
        _table(["", ""], [[k, str(v)] for k, v in info], markdown=True, numeric=False),
        "## Method\n",
        f"- W1, W4, W5 run no-op stages returning `{{\"ok\": 1}}` on a linear 5-stage "
        f"pipeline; W2 is a fan-out of 8 subtasks and a join; W3 a diamond with a review "
        f"gate. `Runner(..., workers={s['workers']})`, items `{{\"id\": i}}`.",
        "- Every measurement runs in a fresh child process; peak RSS is that process's "
        "`ru_maxrss`. DB files live in a temporary directory.",
        "- One transition = one stage completion (W2 adds subtask completions, W3 adds "
        "review requests and approvals; see each section). treadle commits results in groups "
        "(one transaction per scheduler turn), the floor commits each transition on its "
        "own, so treadle can beat the floor, especially at synchronous=FULL.",
        "- Stores: " + "; ".join(f"`{k}` = {STORES[k][1]}" for k in stores) + ".",
        f"- Floor samples: {s['floor_sample_normal']:,} transitions at NORMAL, "
        f"{s['floor_sample_full']:,} at FULL (FULL is bounded by the disk's fsync rate).",
        f"- W1, W2, W3 and the floor run {s['repeats']} time(s) per N up to "
        f"{s['repeat_max_n']:,} (the median run is shown, all runs are in the JSON), once "
        f"above and once on PostgreSQL (N <= {s['postgres_max_n']:,}); W4 queries run "
        f"{s['w4_repeats']} times each; W5 resumes {s['w5_repeats']} times per store.",
        f"- Peers (optional; `{peers.get('install', '')}`) run once per caller count "
        f"({', '.join(map(str, s['peer_callers']))}) at N = "
        f"{', '.join(f'{n:,}' for n in s['peer_sizes'])}, each in a fresh process on a "
        "fresh SQLite file:",
        *(f"  - {PEERS[name].label}: {PEERS[name].durability}. W1: {PEERS[name].shape['W1']}. "
          f"W2: {PEERS[name].shape['W2']}." for name, vers in installed.items() if vers),
        "",
    ]
    for title, text, table in sections(results, markdown=True):
        out += [f"## {title}\n", f"{text}\n", table]
    lines = notes(results)
    if lines:
        out += ["## Notes\n", *(f"- {line}" for line in lines), ""]
    return "\n".join(out)
