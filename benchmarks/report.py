"""Machine information and the text / markdown renderings of a results dict."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

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


def _git() -> dict[str, Any]:
    def run(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = run("status", "--porcelain", "--", "treadle", "contrib")
    return {"commit": run("rev-parse", "--short", "HEAD"),
            "library_changes": changed.splitlines() if changed else []}


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
        "packages": {name: _pkg(name) for name in ("treadle", "peewee", "apsw")},
        "git": _git(),
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
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)]) + "\n"


def sections(results: dict[str, Any], markdown: bool) -> list[tuple[str, str, str]]:
    """(title, explanation, table) for each part of the report, for the workloads run."""
    ran = set(results["settings"]["workloads"])
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
    return out


def notes(results: dict[str, Any]) -> list[str]:
    lines = []
    for sk in results["skipped"]:
        what = f"{sk['store']}" + (f" ({sk['workload']})" if "workload" in sk else "")
        lines.append(f"Skipped {what}: {sk['reason']}")
    for err in results["errors"]:
        what = ", ".join(f"{k}={v}" for k, v in err.items() if k != "error")
        lines.append(f"FAILED {what}: {err['error']}")
    return lines


def format_text(results: dict[str, Any]) -> str:
    parts = [f"treadle benchmarks ({results['mode']} mode, {results['duration_s']:.0f} s)\n"]
    for title, _, table in sections(results, markdown=False):
        parts.append(f"{title}\n{table}")
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
    info = [
        ("Platform", m["platform"]), ("CPU", f"{m['cpu_model']} ({m['cpu_count']} CPUs, "
                                             f"{m['cpus_usable']} usable)"),
        ("Memory", f"{m['memory_gib']} GiB"),
        ("Python", f"{m['python']} ({m['python_implementation']})"),
        ("SQLite (apsw, used by treadle)", m["sqlite_apsw"]),
        ("SQLite (stdlib sqlite3, used by the floor)", m["sqlite_stdlib"]),
        ("Packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())),
        ("Source", source),
        ("Load average (start / end)", f"{results['load_start']} / {results['load_end']}"),
        ("Started", results["started_at"]),
        ("Duration", f"{results['duration_s']:.0f} s"),
    ]
    out = [
        f"# treadle benchmark results ({results['mode']} mode)\n",
        "Generated by the benchmark suite in `benchmarks/`; rerun it to refresh this file.\n",
        f"Command:\n\n```\n{results['command']}\n```\n",
        "## Machine\n",
        _table(["", ""], [[k, str(v)] for k, v in info], markdown=True, numeric=False),
        "## Method\n",
        f"- Workloads run no-op stages returning `{{\"ok\": 1}}` on a linear 5-stage "
        f"pipeline, `Runner(..., workers={s['workers']})`, items `{{\"id\": i}}`.",
        "- Every measurement runs in a fresh child process; peak RSS is that process's "
        "`ru_maxrss`. DB files live in a temporary directory.",
        "- One transition = one stage completion. treadle commits results in groups "
        "(one transaction per scheduler turn), the floor commits each transition on its "
        "own, so treadle can beat the floor, especially at synchronous=FULL.",
        "- Stores: " + "; ".join(f"`{k}` = {STORES[k][1]}" for k in s["stores"]) + ".",
        f"- Floor samples: {s['floor_sample_normal']:,} transitions at NORMAL, "
        f"{s['floor_sample_full']:,} at FULL (FULL is bounded by the disk's fsync rate).",
        f"- W1 and the floor run {s['repeats']} time(s) per N up to {s['repeat_max_n']:,} "
        "(the median run is shown, all runs are in the JSON), once above; W4 queries run "
        f"{s['w4_repeats']} times each; W5 resumes {s['w5_repeats']} times per store.",
        "",
    ]
    for title, text, table in sections(results, markdown=True):
        out += [f"## {title}\n", f"{text}\n", table]
    lines = notes(results)
    if lines:
        out += ["## Notes\n", *(f"- {line}" for line in lines), ""]
    return "\n".join(out)
