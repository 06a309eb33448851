"""Plan the measurements, run each in a fresh child process, and derive the figures."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: The folder holding the ``benchmarks`` package (the repository root).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Store label -> (URL template, description). ``{path}`` is an absolute DB path.
STORES: dict[str, tuple[str, str]] = {
    "memory": ("memory://", "`memory://` (in-process, not durable)"),
    "sqlite": ("sqlite:///{path}", "`sqlite:///file.db`: synchronous=full, treadle's default"),
    "sqlite-normal": ("sqlite:///{path}?synchronous=normal",
                      "`sqlite:///file.db?synchronous=normal`"),
}
DURABLE = ("sqlite", "sqlite-normal")
WORKLOADS = ("W1", "W4", "W5")
FLOOR_SYNC = ("NORMAL", "FULL")

SKIPPED_STORES = [{
    "store": "postgresql",
    "reason": "treadle's PostgreSQL store is not implemented yet (open_store accepts "
              "sqlite:// and memory:// only); add it here when it lands.",
}]


@dataclass
class Settings:
    mode: str
    workers: int = 4
    w1_sizes: list[int] = field(default_factory=list)
    w4_rows: int = 0
    w4_repeats: int = 5
    w5_items: int = 0
    w5_repeats: int = 3
    floor_sample_normal: int = 0
    floor_sample_full: int = 0
    repeats: int = 1
    repeat_max_n: int = 10_000
    stores: list[str] = field(default_factory=lambda: list(STORES))
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    timeout: float = 900.0


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(w1_sizes=[1_000, 5_000], w4_rows=50_000, w5_items=5_000,
                  floor_sample_normal=10_000, floor_sample_full=1_000, timeout=300.0),
    "full": dict(w1_sizes=[1_000, 10_000, 100_000], w4_rows=1_000_000, w5_items=100_000,
                 floor_sample_normal=50_000, floor_sample_full=3_000, repeats=3,
                 timeout=900.0),
}


class MeasurementError(RuntimeError):
    """A child process failed, timed out, or wrote no result."""


class Suite:
    """Runs the planned measurements in ``tmpdir``; ``log`` receives progress lines."""

    def __init__(self, settings: Settings, tmpdir: str, log: Callable[[str], None]) -> None:
        self.s = settings
        self.tmpdir = tmpdir
        self.log = log
        self.errors: list[dict[str, Any]] = []
        self._seq = 0

    # -- child processes -----------------------------------------------------
    def _path(self, tag: str, ext: str) -> str:
        self._seq += 1
        return os.path.join(self.tmpdir, f"{self._seq:03d}-{tag}.{ext}")

    def child(self, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run one measurement in a fresh interpreter and return its result."""
        spec = dict(spec, out=self._path(spec["kind"], "json"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
        limit = timeout or self.s.timeout
        if spec["kind"] == "w5_resume":
            spec["t0"] = time.time()  # as close to the process start as we can stamp it
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", json.dumps(spec)],
            cwd=self.tmpdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise MeasurementError(f"timed out after {limit:g} s (raise --timeout)") from None
        if proc.returncode != 0 or not os.path.exists(spec["out"]):
            tail = "\n".join(err.strip().splitlines()[-8:])
            raise MeasurementError(f"child exited with status {proc.returncode}: {tail}")
        with open(spec["out"], encoding="utf-8") as fh:
            result: dict[str, Any] = json.load(fh)
        os.remove(spec["out"])
        return result

    def _attempt(self, what: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        label = " ".join(f"{k}={v}" for k, v in what.items())
        t0 = time.perf_counter()
        try:
            result = fn()
        except MeasurementError as exc:
            self.log(f"  {label}: FAILED ({exc})")
            self.errors.append(dict(what, error=str(exc)))
            return None
        self.log(f"  {label}: {time.perf_counter() - t0:.1f} s")
        return result

    def _db(self, tag: str) -> str:
        return self._path(tag, "db")

    def _url(self, store: str, path: str) -> str:
        return STORES[store][0].format(path=path)

    @staticmethod
    def _remove_db(path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass

    # -- workloads -----------------------------------------------------------
    def floor(self, n: int, sync: str, tag: dict[str, Any]) -> dict[str, Any] | None:
        sample = self.s.floor_sample_full if sync == "FULL" else self.s.floor_sample_normal
        path = self._db(f"floor-{sync.lower()}")

        def go() -> dict[str, Any]:
            try:
                return self.child({"kind": "floor", "n": n, "synchronous": sync,
                                   "sample": sample, "path": path})
            finally:
                self._remove_db(path)

        return self._attempt({"workload": "floor", "synchronous": sync, "n": n, **tag}, go)

    def w1(self, store: str, n: int, tag: dict[str, Any]) -> dict[str, Any] | None:
        path = self._db(f"w1-{store}")

        def go() -> dict[str, Any]:
            try:
                r = self.child({"kind": "w1", "n": n, "workers": self.s.workers,
                                "url": self._url(store, path)})
            finally:
                self._remove_db(path)
            return dict(r, store=store)

        return self._attempt({"workload": "W1", "store": store, "n": n, **tag}, go)

    def w4(self, store: str) -> dict[str, Any] | None:
        path = self._db(f"w4-{store}")

        def go() -> dict[str, Any]:
            try:
                r = self.child({"kind": "w4", "rows": self.s.w4_rows,
                                "repeats": self.s.w4_repeats, "url": self._url(store, path)})
            finally:
                self._remove_db(path)
            return dict(r, store=store)

        return self._attempt({"workload": "W4", "store": store, "rows": self.s.w4_rows}, go)

    def w5(self, stores: list[str]) -> list[dict[str, Any]]:
        n = self.s.w5_items
        built = self._db("w5-built")
        # Built at synchronous=normal to save time: the setting is per connection,
        # the file is the same either way.
        build = self._attempt({"workload": "W5", "step": "build", "n": n}, lambda: self.child(
            {"kind": "w5_build", "n": n, "workers": self.s.workers,
             "url": self._url("sqlite-normal", built)}))
        out = []
        try:
            if build is None:
                return []
            for store in stores:
                runs = []
                for rep in range(self.s.w5_repeats):
                    copy = self._db(f"w5-{store}")

                    def go(copy: str = copy, store: str = store) -> dict[str, Any]:
                        for suffix in ("", "-wal"):
                            if os.path.exists(built + suffix):
                                shutil.copyfile(built + suffix, copy + suffix)
                        try:
                            return self.child({"kind": "w5_resume", "n": n,
                                               "workers": self.s.workers,
                                               "url": self._url(store, copy)})
                        finally:
                            self._remove_db(copy)

                    r = self._attempt({"workload": "W5", "store": store, "n": n,
                                       "repeat": rep + 1}, go)
                    if r is not None:
                        runs.append(r)
                if runs:
                    out.append(summarize_w5(store, build, runs))
        finally:
            self._remove_db(built)
        return out

    # -- the whole run -------------------------------------------------------
    def run(self) -> dict[str, Any]:
        s = self.s
        floors: list[dict[str, Any]] = []
        w1: list[dict[str, Any]] = []
        w4: list[dict[str, Any]] = []
        w5: list[dict[str, Any]] = []
        if "W1" in s.workloads:
            # Floor and treadle at each N back to back (and repeats interleaved), so a
            # change in machine load hits both sides of the ratio alike.
            for n in s.w1_sizes:
                k = s.repeats if n <= s.repeat_max_n else 1
                self.log(f"W1 linear, N={n:,}" + (f", {k} repeats" if k > 1 else ""))
                runs: dict[str, list[dict[str, Any]]] = {}
                for rep in range(k):
                    tag = {"repeat": rep + 1} if k > 1 else {}
                    for sync in FLOOR_SYNC:
                        if (r := self.floor(n, sync, tag)) is not None:
                            runs.setdefault(f"floor-{sync}", []).append(r)
                    for store in s.stores:
                        if (r := self.w1(store, n, tag)) is not None:
                            runs.setdefault(store, []).append(dict(r, store=store))
                for key, got in runs.items():
                    if key.startswith("floor-"):
                        floors.append(median_run(got, "transitions_per_s"))
                    else:
                        w1.append(median_run(got, "run_s"))
        if "W4" in s.workloads:
            self.log(f"W4 status, {s.w4_rows:,} rows")
            for store in s.stores:
                if (r := self.w4(store)) is not None:
                    w4.append(r)
        w5_stores = [st for st in s.stores if st in DURABLE]
        if "W5" in s.workloads and w5_stores:
            self.log(f"W5 resume, {s.w5_items:,} items (half complete)")
            w5 = self.w5(w5_stores)
        derive_w1(w1, floors)
        return {
            "floor": floors,
            "workloads": {
                "W1": {"name": "linear", "stages": 5, "sizes": s.w1_sizes, "results": w1,
                       "scaling": scaling(w1)},
                "W4": {"name": "status", "rows": s.w4_rows, "results": w4},
                "W5": {"name": "resume", "items": s.w5_items, "results": w5},
            },
            "settings": asdict(s),
            "skipped": list(SKIPPED_STORES) + (
                [{"store": "memory", "workload": "W5",
                  "reason": "a memory:// store does not survive the process; nothing to resume"}]
                if "W5" in s.workloads and "memory" in s.stores else []),
            "errors": self.errors,
        }


# -- derived figures ---------------------------------------------------------------
def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median (upper median for an even count), with
    every run's ``key`` kept under ``all_<key>``."""
    ordered = sorted(runs, key=lambda r: r[key])
    return dict(ordered[len(ordered) // 2], repeats=len(runs), **{f"all_{key}": [r[key] for r in runs]})


def derive_w1(rows: list[dict[str, Any]], floors: list[dict[str, Any]]) -> None:
    """Add rates, ratios to the floor at the same N, and RSS per item to W1 rows."""
    floor = {(f["n"], f["synchronous"]): f["transitions_per_s"] for f in floors}
    for r in rows:
        r["transitions_per_s"] = r["transitions"] / r["run_s"]
        r["us_per_transition"] = r["run_s"] / r["transitions"] * 1e6
        for sync in FLOOR_SYNC:
            base = floor.get((r["n"], sync))
            r[f"ratio_floor_{sync.lower()}"] = r["transitions_per_s"] / base if base else None
        r["rss_per_item_kb"] = max(0, r["peak_rss_kb"] - r["base_rss_kb"]) / r["n"]


def scaling(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per store: cost per transition at the largest N over that at the smallest."""
    out: dict[str, dict[str, Any]] = {}
    for store in dict.fromkeys(r["store"] for r in rows):
        mine = sorted((r for r in rows if r["store"] == store), key=lambda r: r["n"])
        if len(mine) < 2:
            continue
        lo, hi = mine[0], mine[-1]
        out[store] = {"from_n": lo["n"], "to_n": hi["n"],
                      "us_per_transition_from": lo["us_per_transition"],
                      "us_per_transition_to": hi["us_per_transition"],
                      "ratio": hi["us_per_transition"] / lo["us_per_transition"]}
    return out


def summarize_w5(store: str, build: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    firsts = [r["first_stage_s"] for r in runs]
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("interpreter_s", "imports_s", "open_store_s", "run_to_first_stage_s")}
    return {
        "store": store, "n": build["n"], "completed_items": build["completed_items"],
        "pending_items": build["pending_items"], "build_s": build["build_s"],
        "repeats": len(runs), "first_stage_s": statistics.median(firsts),
        "first_stage_min_s": min(firsts), "first_stage_max_s": max(firsts),
        **{f"median_{k}": v for k, v in med.items()},
        "peak_rss_kb": max(r["peak_rss_kb"] for r in runs), "runs": runs,
    }
