"""Plan the measurements, run each in a fresh child process, and derive the figures."""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from . import peers as peer_registry
from . import postgres, targets

#: The folder holding the ``benchmarks`` package (the repository root).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Store label -> (URL template, description). ``{path}`` is an absolute DB path.
STORES: dict[str, tuple[str, str]] = {
    "memory": ("memory://", "`memory://` (in-process, not durable)"),
    "sqlite": ("sqlite:///{path}", "`sqlite:///file.db`: synchronous=full, treadle's default"),
    "sqlite-normal": ("sqlite:///{path}?synchronous=normal",
                      "`sqlite:///file.db?synchronous=normal`"),
    "postgresql": ("{postgres}", "PostgreSQL at `$TREADLE_TEST_POSTGRES_URL`, a fresh "
                                 "schema `bench_<random>` per measurement, dropped afterwards"),
}
DURABLE = ("sqlite", "sqlite-normal")
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W7")
#: Workloads that can run on PostgreSQL (W5 and W7 are SQLite-only, see ``skipped``).
POSTGRES_WORKLOADS = ("W1", "W2", "W3", "W4")
#: Workloads the peers implement.
PEER_WORKLOADS = ("W1", "W2")
FLOOR_SYNC = ("NORMAL", "FULL")
WORKLOAD_NAMES = {"W1": "linear", "W2": "fan-out", "W3": "diamond + review",
                  "W4": "status", "W5": "resume", "W7": "large items"}
#: The store W7 runs on (the default durable one).
W7_STORE = "sqlite"


@dataclass
class Settings:
    mode: str
    workers: int = 4
    w1_sizes: list[int] = field(default_factory=list)
    w2_sizes: list[int] = field(default_factory=list)
    w3_sizes: list[int] = field(default_factory=list)
    w4_rows: int = 0
    w4_repeats: int = 5
    w5_items: int = 0
    w5_repeats: int = 3
    #: W7: items of ``w7_size`` bytes (and as many small ones, the baseline).
    w7_items: int = 0
    w7_size: int = 100_000
    floor_sample_normal: int = 0
    floor_sample_full: int = 0
    repeats: int = 1
    repeat_max_n: int = 10_000
    stores: list[str] = field(default_factory=lambda: list(STORES))
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    timeout: float = 900.0
    #: Tries per measurement; failures before the last are recorded under ``retried``.
    attempts: int = 1
    #: If set, the byte bound of treadle's item JSON cache (``BaseStore.ITEM_CACHE_BYTES``)
    #: in the children.
    item_cache: int | None = None
    #: PostgreSQL: only these workloads, only N up to ``postgres_max_n``, once per N.
    postgres_workloads: list[str] = field(default_factory=lambda: list(POSTGRES_WORKLOADS))
    postgres_max_n: int = 10_000
    peers: list[str] = field(default_factory=lambda: list(peer_registry.PEERS))
    peer_sizes: list[int] = field(default_factory=list)
    #: Peers run with each of these numbers of concurrent callers; the best is compared.
    peer_callers: list[int] = field(default_factory=lambda: [1])


PRESETS: dict[str, dict[str, Any]] = {
    "quick": dict(w1_sizes=[1_000, 5_000], w2_sizes=[1_000], w3_sizes=[1_000],
                  w4_rows=50_000, w5_items=5_000, w7_items=1_000,
                  floor_sample_normal=10_000, floor_sample_full=1_000, timeout=300.0,
                  postgres_max_n=1_000, postgres_workloads=["W1", "W2"], peer_sizes=[100],
                  peer_callers=[1]),
    "full": dict(w1_sizes=[1_000, 10_000, 100_000], w2_sizes=[1_000, 10_000],
                 w3_sizes=[1_000, 10_000], w4_rows=1_000_000, w5_items=100_000,
                 w7_items=20_000,
                 floor_sample_normal=50_000, floor_sample_full=3_000, repeats=3,
                 timeout=900.0, attempts=4, postgres_max_n=10_000, peer_sizes=[1_000],
                 peer_callers=[1, 4]),
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
        self.skipped: list[dict[str, Any]] = []
        self.retried: list[dict[str, Any]] = []
        self._seq = 0
        self.stores = list(settings.stores)
        if "postgresql" in self.stores:
            reason = postgres.unavailable()
            if reason is not None:
                self.stores.remove("postgresql")
                self.skipped.append({"store": "postgresql", "reason": reason})
            else:
                left = [w for w in settings.workloads if w not in settings.postgres_workloads]
                if left:
                    self.skipped.append({
                        "store": "postgresql", "workload": ", ".join(left),
                        "reason": "not run on PostgreSQL (it runs "
                                  f"{', '.join(settings.postgres_workloads)})"})
                sizes = {"W1": settings.w1_sizes, "W2": settings.w2_sizes,
                         "W3": settings.w3_sizes}
                big = sorted({n for w, ns in sizes.items() for n in ns
                              if w in settings.workloads and w in settings.postgres_workloads
                              and n > settings.postgres_max_n})
                if big:
                    self.skipped.append({
                        "store": "postgresql", "workload": "N = " + ", ".join(f"{n:,}" for n in big),
                        "reason": f"PostgreSQL runs only N <= {settings.postgres_max_n:,} "
                                  "(once each, no repeats) to bound the suite's time"})
        self.peers: list[str] = []
        for name in settings.peers:
            if peer_registry.versions(name) is None:
                self.skipped.append({
                    "store": f"{peer_registry.PEERS[name].label} (peer)", "peer": name,
                    "reason": f"not installed; to measure it: {peer_registry.INSTALL}"})
            else:
                self.peers.append(name)

    # -- child processes -----------------------------------------------------
    def _path(self, tag: str, ext: str) -> str:
        self._seq += 1
        return os.path.join(self.tmpdir, f"{self._seq:03d}-{tag}.{ext}")

    def child(self, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run one measurement in a fresh interpreter and return its result."""
        spec = dict(spec, out=self._path(spec["kind"], "json"))
        if self.s.item_cache is not None:
            spec["item_cache"] = self.s.item_cache
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
        """Run one measurement, up to ``attempts`` times if it fails. A failure that
        is retried is kept in ``retried`` (and shown in the notes), the last one in
        ``errors``: a retry must never hide that the library failed."""
        label = " ".join(f"{k}={v}" for k, v in what.items())
        for attempt in range(1, self.s.attempts + 1):
            t0 = time.perf_counter()
            try:
                result = fn()
            except MeasurementError as exc:
                self.log(f"  {label}: FAILED ({exc})")
                if attempt == self.s.attempts:
                    self.errors.append(dict(what, error=str(exc), attempt=attempt))
                    return None
                self.retried.append(dict(what, error=str(exc), attempt=attempt))
                continue
            self.log(f"  {label}: {time.perf_counter() - t0:.1f} s")
            return dict(result, attempt=attempt) if attempt > 1 else result
        return None

    def _db(self, tag: str) -> str:
        return self._path(tag, "db")

    def _url(self, store: str, path: str) -> str:
        return STORES[store][0].format(path=path)

    @contextmanager
    def _store_url(self, store: str, tag: str) -> Iterator[str]:
        """A fresh, empty store of kind ``store`` for one measurement; cleaned up after."""
        if store == "postgresql":
            with postgres.fresh_schema() as url:
                yield url
            return
        path = self._db(f"{tag}-{store}")
        try:
            yield self._url(store, path)
        finally:
            self._remove_db(path)

    def _runs_on(self, store: str, workload: str, n: int, rep: int) -> bool:
        if store != "postgresql":
            return True
        return workload in self.s.postgres_workloads and n <= self.s.postgres_max_n and rep == 0

    @staticmethod
    def _remove_db(path: str) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
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

    def treadle(self, workload: str, store: str, n: int,
                tag: dict[str, Any]) -> dict[str, Any] | None:
        """One W1, W2 or W3 measurement on a fresh store."""
        def go() -> dict[str, Any]:
            try:
                with self._store_url(store, workload.lower()) as url:
                    r = self.child({"kind": workload.lower(), "n": n,
                                    "workers": self.s.workers, "url": url})
            except MeasurementError:
                raise
            except Exception as exc:
                raise MeasurementError(f"store setup failed: {exc}") from exc
            return dict(r, store=store)

        return self._attempt({"workload": workload, "store": store, "n": n, **tag}, go)

    def peer(self, name: str, workload: str, n: int, callers: int) -> dict[str, Any] | None:
        path = self._db(f"peer-{name}")

        def go() -> dict[str, Any]:
            try:
                return self.child({"kind": "peer", "peer": name, "workload": workload,
                                   "n": n, "callers": callers, "path": path})
            finally:
                self._remove_db(path)  # DBOS uses a rollback journal, LangGraph WAL

        return self._attempt({"workload": workload, "peer": name, "n": n,
                              "callers": callers}, go)

    def w4(self, store: str) -> dict[str, Any] | None:
        def go() -> dict[str, Any]:
            with self._store_url(store, "w4") as url:
                r = self.child({"kind": "w4", "rows": self.s.w4_rows,
                                "repeats": self.s.w4_repeats, "url": url})
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

    def w7(self) -> list[dict[str, Any]]:
        """W7 on SQLite: N small items, then N large ones, repeats interleaved; the
        median run of each and the figures derived from the pair."""
        s = self.s
        n, size = s.w7_items, s.w7_size
        k = s.repeats if n <= s.repeat_max_n else 1
        runs: dict[int, list[dict[str, Any]]] = {0: [], size: []}
        for rep in range(k):
            for sz in (0, size):
                def go(sz: int = sz) -> dict[str, Any]:
                    with self._store_url(W7_STORE, "w7") as url:
                        return self.child({"kind": "w7", "n": n, "size": sz,
                                           "workers": s.workers, "url": url})

                tag = {"repeat": rep + 1} if k > 1 else {}
                if (r := self._attempt({"workload": "W7", "store": W7_STORE, "n": n,
                                        "size": sz, **tag}, go)) is not None:
                    runs[sz].append(r)
        if not runs[0] or not runs[size]:
            return []
        return [summarize_w7(W7_STORE, median_run(runs[0], "run_s"),
                             median_run(runs[size], "run_s"))]

    # -- the whole run -------------------------------------------------------
    def _treadle_sizes(self, workload: str, sizes: list[int],
                       with_floor: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Measure ``workload`` at each N on every store (repeats interleaved); the
        median run per (store, N), and the floor's when ``with_floor``."""
        s = self.s
        key = "total_s" if workload == "W3" else "run_s"
        rows: list[dict[str, Any]] = []
        floors: list[dict[str, Any]] = []
        for n in sizes:
            k = s.repeats if n <= s.repeat_max_n else 1
            self.log(f"{workload} {WORKLOAD_NAMES[workload]}, N={n:,}"
                     + (f", {k} repeats" if k > 1 else ""))
            runs: dict[str, list[dict[str, Any]]] = {}
            for rep in range(k):
                tag = {"repeat": rep + 1} if k > 1 else {}
                if with_floor:
                    # Floor and treadle at each N back to back (and repeats interleaved),
                    # so a change in machine load hits both sides of the ratio alike.
                    for sync in FLOOR_SYNC:
                        if (r := self.floor(n, sync, tag)) is not None:
                            runs.setdefault(f"floor-{sync}", []).append(r)
                for store in self.stores:
                    if not self._runs_on(store, workload, n, rep):
                        continue
                    if (r := self.treadle(workload, store, n, tag)) is not None:
                        runs.setdefault(store, []).append(r)
            for name, got in runs.items():
                if name.startswith("floor-"):
                    floors.append(median_run(got, "transitions_per_s"))
                else:
                    rows.append(median_run(got, key))
        return rows, floors

    def _peers(self) -> list[dict[str, Any]]:
        s = self.s
        out: list[dict[str, Any]] = []
        for workload in (w for w in PEER_WORKLOADS if w in s.workloads):
            for n in s.peer_sizes:
                if self.peers:
                    self.log(f"Peers {workload} {WORKLOAD_NAMES[workload]}, N={n:,}")
                for name in self.peers:
                    for callers in s.peer_callers:
                        if (r := self.peer(name, workload, n, callers)) is not None:
                            r["transitions_per_s"] = r["transitions"] / r["run_s"]
                            r["us_per_transition"] = r["run_s"] / r["transitions"] * 1e6
                            out.append(r)
        return out

    def run(self) -> dict[str, Any]:
        s = self.s
        floors: list[dict[str, Any]] = []
        w1: list[dict[str, Any]] = []
        w2: list[dict[str, Any]] = []
        w3: list[dict[str, Any]] = []
        w4: list[dict[str, Any]] = []
        w5: list[dict[str, Any]] = []
        w7: list[dict[str, Any]] = []
        local = [st for st in self.stores if st != "postgresql"]
        if "W1" in s.workloads:
            w1, floors = self._treadle_sizes("W1", s.w1_sizes, with_floor=True)
        if "W2" in s.workloads:
            w2, _ = self._treadle_sizes("W2", s.w2_sizes)
        if "W3" in s.workloads:
            w3, _ = self._treadle_sizes("W3", s.w3_sizes)
        if "W4" in s.workloads:
            self.log(f"W4 status, {s.w4_rows:,} rows")
            # PostgreSQL too, at the full row count (the targets name both stores)
            for store in [st for st in self.stores if self._runs_on(st, "W4", 0, 0)]:
                if (r := self.w4(store)) is not None:
                    w4.append(r)
        w5_stores = [st for st in local if st in DURABLE]
        if "W5" in s.workloads and w5_stores:
            self.log(f"W5 resume, {s.w5_items:,} items (half complete)")
            w5 = self.w5(w5_stores)
        if "W7" in s.workloads and W7_STORE in self.stores:
            self.log(f"W7 large items, {s.w7_items:,} x {s.w7_size:,} bytes and as many "
                     "small items")
            w7 = self.w7()
        peer_rows = self._peers()
        derive_w1(w1, floors)
        derive_rates(w2, "run_s")
        derive_rates(w3, "total_s")
        skipped = list(self.skipped)
        if "W5" in s.workloads and "memory" in self.stores:
            skipped.append({"store": "memory", "workload": "W5",
                            "reason": "a memory:// store does not survive the process; "
                                      "nothing to resume"})
        if "W7" in s.workloads:
            others = [st for st in self.stores if st != W7_STORE]
            if others:
                skipped.append({"store": ", ".join(others), "workload": "W7",
                                "reason": f"W7 runs on {W7_STORE} only (the memory store "
                                          "holds every item by design)"})
        settings = asdict(s)
        pg_version = postgres.server_version() if "postgresql" in self.stores else None
        body = {
            "floor": floors,
            "workloads": {
                "W1": {"name": "linear", "stages": 5, "sizes": s.w1_sizes, "results": w1,
                       "scaling": scaling(w1)},
                "W2": {"name": "fan-out", "width": 8, "sizes": s.w2_sizes, "results": w2},
                "W3": {"name": "diamond + review", "stages": 5, "sizes": s.w3_sizes,
                       "results": w3},
                "W4": {"name": "status", "rows": s.w4_rows, "results": w4},
                "W5": {"name": "resume", "items": s.w5_items, "results": w5},
                "W7": {"name": "large items", "items": s.w7_items, "size": s.w7_size,
                       "results": w7},
            },
            "peers": {
                "install": peer_registry.INSTALL,
                "installed": {name: peer_registry.versions(name) for name in s.peers},
                "results": peer_rows,
                "comparison": compare_peers(peer_rows, {"W1": w1, "W2": w2}),
            },
            "postgres": {"measured": "postgresql" in self.stores, "server_version": pg_version,
                         "settings": postgres.server_settings() if pg_version else None},
            "settings": settings,
            "stores_measured": self.stores,
            "skipped": skipped,
            "retried": self.retried,
            "errors": self.errors,
        }
        body["targets"] = targets.evaluate(body)
        return body


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


def derive_rates(rows: list[dict[str, Any]], seconds: str) -> None:
    """transitions/s and us/transition over ``seconds``, RSS per item."""
    for r in rows:
        r["transitions_per_s"] = r["transitions"] / r[seconds]
        r["us_per_transition"] = r[seconds] / r["transitions"] * 1e6
        r["rss_per_item_kb"] = max(0, r["peak_rss_kb"] - r["base_rss_kb"]) / r["n"]


def compare_peers(peer_rows: list[dict[str, Any]],
                  treadle_rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per workload and peer N: the faster peer (best over its caller counts) and each
    treadle store's transitions/s over it, treadle taken at the N closest to the peer's."""
    out = []
    for workload in PEER_WORKLOADS:
        for n in sorted({r["n"] for r in peer_rows if r["workload"] == workload}):
            mine = [r for r in peer_rows if r["workload"] == workload and r["n"] == n]
            best: dict[str, dict[str, Any]] = {}
            for r in mine:
                if r["peer"] not in best or r["transitions_per_s"] > best[r["peer"]]["transitions_per_s"]:
                    best[r["peer"]] = r
            fastest = max(best.values(), key=lambda r: r["transitions_per_s"])
            treadle: dict[str, dict[str, Any]] = {}
            for r in treadle_rows.get(workload, []):
                cur = treadle.get(r["store"])
                if cur is None or abs(math.log(r["n"] / n)) < abs(math.log(cur["n"] / n)):
                    treadle[r["store"]] = r
            out.append({
                "workload": workload, "peer_n": n,
                "peers": {p: {"transitions_per_s": r["transitions_per_s"], "callers": r["callers"]}
                          for p, r in best.items()},
                "faster_peer": fastest["peer"],
                "faster_peer_transitions_per_s": fastest["transitions_per_s"],
                "treadle": {store: {"n": r["n"], "transitions_per_s": r["transitions_per_s"],
                                    "ratio": r["transitions_per_s"] / fastest["transitions_per_s"]}
                            for store, r in treadle.items()},
            })
    return out


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


def summarize_w7(store: str, small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    """W7's figures: each side's rate and peak RSS growth during ``run()``; the large
    items' growth over their payload and their rate over the small items'."""
    for r in (small, large):
        r["transitions_per_s"] = r["transitions"] / r["run_s"]
        r["rss_growth_kb"] = max(0, r["peak_rss_kb"] - r["rss_before_run_kb"])
    payload = large["payload_bytes"]
    return {
        "store": store, "n": large["n"], "size": large["size"], "payload_bytes": payload,
        "small": small, "large": large,
        "rss_growth_mb": large["rss_growth_kb"] / 1024,
        "small_rss_growth_mb": small["rss_growth_kb"] / 1024,
        "growth_over_payload": large["rss_growth_kb"] * 1024 / payload if payload else None,
        "throughput_ratio": large["transitions_per_s"] / small["transitions_per_s"],
        "item_cache_limit": large.get("item_cache_limit"),
    }
