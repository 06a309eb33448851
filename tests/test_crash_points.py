"""Crash at every named point of the commit protocol, on SQLite and PostgreSQL, and resume.

For each point of ``treadle._crash.CRASH_POINTS`` and each SQL store:

1. the store is created at the code's schema version and the scenario's
   items submitted (``points.setup``, as ``tests/crash/points.py URL --setup``);
2. a real subprocess drives the scenario of tests/crash/points.py (stages,
   a FanOut, a Review decided in that process, rollbacks, and a schema
   migration when it opens the store) with ``TREADLE_CRASH_AT=<point>@<n>``;
   it must die there, exit status 86 (a point the scenario cannot reach
   fails the test);
3. a fresh subprocess without the variable drives the scenario to its end
   (run to quiescence, decide what still awaits review, run again);
4. the store is inspected through the public API (``status``, ``history``,
   ``items``, ``counts``), and compared with the side-effect log, the
   decisions that returned and the signals received.

The invariants (see docs/durability.md, "Crash points"): every item settles
as the scenario says; every committed result and decision is there, a
decision cut by the crash is absent and made again; no (item, stage) or
subtask completes twice in the history; nothing is left ``running``; only
work that was in flight at the crash (executed, its outcome not committed)
runs again, at most once more; the schema is current, no data lost.

Run one point: ``python -m pytest tests/test_crash_points.py -k mid-rollback``.
The long profile (``TREADLE_CRASH_SWEEP=N``, tens of minutes) crashes at every
hit 1..N of every point, and crashes the resuming process too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import pytest

from treadle import Runner, open_store
from treadle._crash import CRASH_EXIT, CRASH_POINTS

HERE = Path(__file__).resolve().parent
WORKER = HERE / "crash" / "points.py"

_spec = importlib.util.spec_from_file_location("treadle_crash_points", WORKER)
assert _spec is not None and _spec.loader is not None
points = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(points)

#: Which hit of each point the crashing process dies at (``TREADLE_CRASH_AT=point@N``).
#: A point added to CRASH_POINTS without an entry here fails its test.
HIT: dict[str, tuple[int, ...]] = {
    "after-claim-commit": (1,),    # the very first claims: committed, nothing started
    "in-stage": (3,),              # the third stage about to run; two may be running
    "before-result-commit": (1,),  # the first batch of results, never committed
    # A batch with a subtask's result, committed, while its sibling still runs
    # (searched like before-signals, see LANDED); the first batch would be prep's.
    "after-result-commit": tuple(range(2, 16)),
    # The first batch with completions, committed, not signalled. Which hit that is
    # depends on timing (and on whether empty batches meet the point): each N is
    # a full crash-and-resume, every invariant checked, until one lands (LANDED).
    "before-signals": (1, 2, 3, 4, 5, 6),
    "mid-fanout-start": (1,),      # the first fan-out start, its transaction cut
    "mid-review-decision": (2,),   # the first decision committed, the second cut
    # A rollback ran, its record not committed, after another's record committed.
    "mid-rollback": (2, 3, 4),
    "mid-schema-migration": (1,),  # the probe step applied, its transaction cut
}

SUBPROCESS_TIMEOUT = 30.0
SEARCH_BUDGET = 45.0  # seconds of trying further hits before a point counts as not landing
RUNNER_STATES = ("completed", "awaiting_review", "failed", "skipped")  # a stage run's own outcomes

pytestmark = pytest.mark.slow


# -- running the scenario -----------------------------------------------------------
def worker(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TREADLE_CRASH_AT"}
    env["PYTHONUNBUFFERED"] = "1"
    if crash_at is not None:
        env["TREADLE_CRASH_AT"] = crash_at
    cmd = [sys.executable, str(WORKER), *args]
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                              timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired as exc:  # run() hung: a bug, not a slow machine
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x
                    for x in (exc.stdout, exc.stderr))
        pytest.fail(f"{' '.join(cmd)} (TREADLE_CRASH_AT={crash_at}) still running after "
                    f"{SUBPROCESS_TIMEOUT} s\nstdout:\n{out}\nstderr:\n{err}")


@attrs.define
class Execution:
    item: str
    key: str       # stage, "fan/<subtask>" or "<stage>!rollback"
    attempt: int
    pid: int
    seq: int       # position in the log


def read_executions(log: Path) -> list[Execution]:
    if not log.exists():
        return []
    out = []
    for n, line in enumerate(log.read_text().splitlines()):
        item, key, attempt, pid = line.split()
        out.append(Execution(item, key, int(attempt), int(pid), n))
    return out


def read_pids(log: Path) -> list[int]:
    """The pids of the scenario processes, in the order they started."""
    return [int(p) for p in Path(f"{log}.pids").read_text().split()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def read_signals(path: Path) -> list[tuple[str, str, int, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        item, stage, attempt, pid = line.split()
        out.append((item, stage, int(attempt), int(pid)))
    return out


def pid_of(actor: str) -> int | None:
    """The pid in a runner owner ``host:pid:random`` (None for other actors)."""
    parts = actor.rsplit(":", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def schema_of(url: str) -> tuple[int | None, set[str]]:
    """The stored schema version and the columns of ``treadle_item``, read with the
    database's own client (opening a store would migrate it)."""
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url[len("sqlite:///"):])
        try:
            rows = con.execute("SELECT value FROM treadle_meta WHERE key='schema_version'").fetchall()
            cols = {r[1] for r in con.execute("PRAGMA table_info(treadle_item)")}
        finally:
            con.close()
    else:
        import psycopg2

        con = psycopg2.connect(url)
        try:
            cur = con.cursor()
            cur.execute("SELECT value FROM treadle_meta WHERE key='schema_version'")
            rows = cur.fetchall()
            cur.execute("SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = 'treadle_item'")
            cols = {r[0] for r in cur.fetchall()}
        finally:
            con.close()
    return (int(rows[0][0]) if rows else None), cols


@attrs.define
class Inspection:
    """What the store says once the scenario has been resumed to its end."""

    status: dict[str, Any]
    history: dict[str, list[Any]]
    counts: dict[str, dict[str, int]]
    n_items: int


@pytest.fixture
def inspect() -> Iterator[Callable[[str], Inspection]]:
    opened: list[Any] = []

    def _inspect(url: str) -> Inspection:
        with points.probe_migration():
            store = open_store(url)
            opened.append(store)
            runner = Runner(points.build(None), store)
            return Inspection(
                status={i: runner.status(i) for i in points.ITEMS},
                history={i: runner.history(i) for i in points.ITEMS},
                counts=runner.counts(),
                n_items=len(runner.items(limit=None)),
            )

    yield _inspect
    for store in opened:
        store.close()


@pytest.fixture
def fresh_url(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """A factory of empty stores: ``fresh_url(kind)`` is the URL of a new one."""
    schemas: list[str] = []
    admin: Any = None
    made = 0

    def make(kind: str) -> str:
        nonlocal admin, made
        made += 1
        if kind == "sqlite":
            path = tmp_path / f"points-{made}.db"
            path.touch()
            return f"sqlite:///{path}"
        base = request.getfixturevalue("postgres_url")  # skips without a server
        if made == 1:
            return base  # the fixture's own schema, dropped by the fixture
        import psycopg2

        root = os.environ["TREADLE_TEST_POSTGRES_URL"]
        if admin is None:
            admin = psycopg2.connect(root)
            admin.autocommit = True
        schema = f"treadle_test_{uuid.uuid4().hex[:12]}"
        admin.cursor().execute(f'CREATE SCHEMA "{schema}"')
        schemas.append(schema)
        sep = "&" if "?" in root else "?"
        return f"{root}{sep}options={quote(f'-csearch_path={schema}')}"

    yield make
    if admin is not None:
        for schema in schemas:
            admin.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


# -- the test -----------------------------------------------------------------------
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_point_then_resume_keeps_every_invariant(
        point: str, kind: str, tmp_path: Path, fresh_url: Callable[[str], str],
        inspect: Callable[[str], Inspection]) -> None:
    """Killed at each named point of the commit protocol, a pipeline resumes with every
    committed result and decision intact and only the in-flight work run again."""
    assert point in HIT and point in SPECIFIC, f"crash point {point!r} has no scenario here: add one"
    landed, tried, started = None, [], time.monotonic()
    for hit in HIT[point]:
        if time.monotonic() - started > SEARCH_BUDGET:
            break
        workdir = tmp_path / f"hit-{hit}"
        workdir.mkdir()
        facts = crash_and_resume(fresh_url(kind), workdir, f"{point}@{hit}", kind, inspect)
        tried.append(hit)
        if LANDED.get(point, lambda f: True)(facts):
            print(f"TREADLE_CRASH_AT={point}@{hit} ({kind}): landed after {len(tried)} tries")
            landed = facts
            break
    if landed is None:
        pytest.fail(f"TREADLE_CRASH_AT={point}@N with N in {tried}: no crash landed where "
                    f"the point's own check needs it (see LANDED)")
    SPECIFIC[point](landed)


def crash_and_resume(url: str, workdir: Path, crash_at: str | tuple[str, ...], kind: str,
                     inspect: Callable[[str], Inspection]) -> Facts:
    """Set up a store at ``url``, crash the scenario at ``crash_at`` (several: crash
    the resuming processes too, each at the next one; these may finish instead),
    resume it to its end, check every invariant; return what the point's own
    check needs."""
    crashes = (crash_at,) if isinstance(crash_at, str) else crash_at
    point = crashes[0].partition("@")[0]
    log = workdir / "effects.log"
    decisions_log, signals_log = Path(f"{log}.decisions"), Path(f"{log}.signals")
    ctx = f"point={'+'.join(crashes)} kind={kind}"

    points.setup(url)  # the store at the code's schema version, the items submitted
    base_version, base_cols = schema_of(url)
    assert base_version is not None and points.PROBE_COLUMN not in base_cols

    # -- crash --
    crashed: list[int] = []
    for k, spec in enumerate(crashes):
        proc = worker(url, str(log), crash_at=spec)
        pid = read_pids(log)[-1]
        if k > 0 and proc.returncode == 0:
            continue  # a later crash the resumed scenario did not reach: it just finished
        assert proc.returncode == CRASH_EXIT, (
            f"TREADLE_CRASH_AT={spec}: exit status {proc.returncode}, not {CRASH_EXIT}: the "
            f"scenario never reached the point\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        assert "Traceback" not in proc.stderr, proc.stderr
        crashed.append(pid)
        if k == 0:
            after_crash = read_executions(log)
            version, cols = schema_of(url)
            if point == "mid-schema-migration":
                # The migration's transaction was cut: the store is as it was, untouched.
                assert (version, cols) == (base_version, base_cols), (version, cols)
                assert not after_crash and not decisions_log.exists()
            else:
                assert version == base_version + 1 and points.PROBE_COLUMN in cols, (version, cols)

    # -- resume --
    resumed = worker(url, str(log))
    assert resumed.returncode == 0, f"{ctx}\nstdout:\n{resumed.stdout}\nstderr:\n{resumed.stderr}"
    assert "Traceback" not in resumed.stderr, resumed.stderr
    report = json.loads(resumed.stdout.splitlines()[-1])
    assert report["items"] == {"completed": 4, "rolled_back": 2} and not report["interrupted"], report

    executions = read_executions(log)
    pids = read_pids(log)
    resume_pid = pids[-1]
    assert {e.pid for e in executions} <= set(pids), ctx

    # -- the schema: current, and nothing lost --
    version, cols = schema_of(url)
    assert version == base_version + 1 and points.PROBE_COLUMN in cols, (ctx, version, cols)
    seen = inspect(url)
    assert seen.n_items == len(points.ITEMS), ctx
    for item_id in points.ITEMS:
        first = seen.history[item_id][0]
        assert (first.state, first.actor) == ("submitted", "setup"), (ctx, item_id, first)

    check_settled(seen, ctx)
    check_history(seen, ctx)
    check_decisions(seen, read_jsonl(decisions_log), pids, ctx)
    check_signals(seen, read_signals(signals_log), ctx)
    # A process that finished without reaching its crash point ran like a resume:
    # what it ran must have committed, which check_executions asks of every process
    # but the crashed ones' in-flight work.
    reruns = check_executions(seen, executions, pids, crashed, ctx)
    return Facts(seen, executions, read_jsonl(decisions_log), read_signals(signals_log),
                 crashed[0], resume_pid, reruns, ctx)


# -- long profile ---------------------------------------------------------------------
#: ``TREADLE_CRASH_SWEEP=N`` adds two sweeps (tens of minutes; absent otherwise):
#: every point at each of its hits 1..N, and every point (@1, @3) followed by a
#: crash of the resuming process at every point (@1). Generic invariants only.
SWEEP = int(os.environ.get("TREADLE_CRASH_SWEEP", "0") or 0)


def _reached(run: Callable[[], Facts]) -> Facts:
    try:
        return run()
    except AssertionError as exc:
        if "never reached the point" in str(exc) and "exit status 0" in str(exc):
            pytest.skip("the scenario meets the point fewer times")
        raise


if SWEEP:  # not even collected otherwise
    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
    @pytest.mark.parametrize("hit", range(1, SWEEP + 1))
    @pytest.mark.parametrize("point", CRASH_POINTS)
    def test_crash_at_every_hit(point: str, hit: int, kind: str, tmp_path: Path,
                                fresh_url: Callable[[str], str],
                                inspect: Callable[[str], Inspection]) -> None:
        """The long profile: a crash at each hit of each point keeps every invariant."""
        _reached(lambda: crash_and_resume(fresh_url(kind), tmp_path, f"{point}@{hit}", kind, inspect))

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
    @pytest.mark.parametrize("second", CRASH_POINTS)
    @pytest.mark.parametrize("first", [f"{p}@{n}" for p in CRASH_POINTS for n in (1, 3)])
    def test_crash_while_resuming(first: str, second: str, kind: str, tmp_path: Path,
                                  fresh_url: Callable[[str], str],
                                  inspect: Callable[[str], Inspection]) -> None:
        """The long profile: the resuming process crashes too; the third run settles it all."""
        _reached(lambda: crash_and_resume(fresh_url(kind), tmp_path, (first, f"{second}@1"), kind,
                                          inspect))


# -- invariants -------------------------------------------------------------------
def check_settled(seen: Inspection, ctx: str) -> None:
    """Every item ended as the scenario says; nothing left running or awaiting."""
    for item_id in points.ITEMS:
        st = seen.status[item_id]
        assert st.state == points.expected_item_state(item_id), (ctx, item_id, st)
        states = {s: st.stages[s].state for s in points.STAGES}
        assert states == points.expected_stage_states(item_id), (ctx, item_id, states)
        outputs = {s: st.stages[s].output for s in points.expected_outputs(item_id)}
        assert outputs == points.expected_outputs(item_id), (ctx, item_id, outputs)
        subs = {n: s.state for n, s in st.stages["fan"].subtasks.items()}
        assert subs == {n: "completed" for n in points.SUBTASKS}, (ctx, item_id, subs)
        if item_id in points.FAILING:
            assert "fails for good" in (st.stages["final"].error or ""), (ctx, st.stages["final"])
    for by_state in seen.counts.values():
        assert not set(by_state) & {"running", "awaiting_review"}, (ctx, seen.counts)


def check_history(seen: Inspection, ctx: str) -> None:
    """No (item, stage) or subtask completed twice; rollbacks and decisions recorded once."""
    for item_id in points.ITEMS:
        hist = seen.history[item_id]
        done = Counter((h.stage, h.subtask) for h in hist if h.state == "completed")
        twice = {k: n for k, n in done.items() if n > 1}
        assert not twice, f"{ctx}: {item_id} completed more than once: {twice}"
        for name in points.SUBTASKS:
            assert done[("fan", name)] == 1, (ctx, item_id, name, dict(done))
        rolled = Counter(h.stage for h in hist if h.state == "rolled_back")
        want = Counter(points.ROLLBACK_STAGES if item_id in points.REJECTED + points.FAILING else ())
        assert rolled == want, (ctx, item_id, dict(rolled))
        # A claim ends by an outcome or by recovery; never two outcomes for one attempt.
        outcomes = Counter((h.stage, h.attempt) for h in hist
                           if h.subtask is None and h.state in RUNNER_STATES and pid_of(h.actor))
        assert all(n == 1 for n in outcomes.values()), (ctx, item_id, dict(outcomes))


def check_decisions(seen: Inspection, decisions: list[dict[str, Any]], pids: list[int],
                    ctx: str) -> None:
    """Each item was decided once; every decision that returned is in the store, as made."""
    per_item = defaultdict(list)
    for d in decisions:
        per_item[d["item"]].append(d)
    assert set(per_item) == set(points.ITEMS), (ctx, sorted(per_item))
    for item_id in points.ITEMS:
        made = per_item[item_id]
        assert len(made) == 1, f"{ctx}: {item_id} decided {len(made)} times: {made}"
        (d,) = made
        assert d["pid"] in pids, (ctx, d)
        review = seen.status[item_id].stages["review"].review
        want = "rejected" if item_id in points.REJECTED else "approved"
        assert (d["decision"], review.decision) == (want, want), (ctx, item_id, d, review)
        assert review.reviewer == d["reviewer"], (
            f"{ctx}: {item_id}: the decision of {d['reviewer']} committed but the store says "
            f"{review.reviewer!r}")
        recorded = [h for h in seen.history[item_id]
                    if h.stage == "review" and h.state in ("completed", "rejected")]
        assert len(recorded) == 1, (ctx, item_id, recorded)
        assert recorded[0].actor == d["reviewer"], (ctx, item_id, recorded)


def check_signals(seen: Inspection, received: list[tuple[str, str, int, int]], ctx: str) -> None:
    """A stage_completed signal is sent only for a committed completion."""
    for item_id, stage, attempt, pid in received:
        committed = [h for h in seen.history[item_id] if h.stage == stage and h.subtask is None
                     and h.state == "completed" and h.attempt == attempt
                     and pid_of(h.actor) in (pid, None)]  # None: a human's decision
        assert len(committed) == 1, f"{ctx}: signal {item_id}/{stage}#{attempt} from {pid} not committed"


@attrs.define
class Reruns:
    """Keys (item, key) executed by the crashed process, then again after resuming."""

    keys: list[tuple[str, str]]
    crash_only: list[tuple[str, str]]


def outcome_pids(seen: Inspection, item_id: str, key: str, attempt: int | None) -> list[int]:
    """The pids of the runners that recorded an outcome of this execution."""
    hist = seen.history[item_id]
    if key.endswith("!rollback"):
        stage = key[:-len("!rollback")]
        rows = [h for h in hist if h.stage == stage and h.state == "rolled_back"]
    elif "/" in key:
        stage, name = key.split("/")
        rows = [h for h in hist if h.stage == stage and h.subtask == name and h.state == "completed"]
    else:
        rows = [h for h in hist if h.stage == key and h.subtask is None and h.state in RUNNER_STATES
                and h.attempt == attempt]
    return [p for p in (pid_of(h.actor) for h in rows) if p is not None]


def check_executions(seen: Inspection, executions: list[Execution], pids: list[int],
                     crashed: list[int], ctx: str) -> Reruns:
    """The side-effect log against the store: each expected execution happened; each
    process ran each key at most once; a key ran again after a crash only if its
    earlier execution's outcome never committed (it was in flight), and then once
    more per crash."""
    by_key: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for e in executions:
        by_key[(e.item, e.key)].append(e)
    expected = {(i, k) for i in points.ITEMS for k in points.expected_executions(i)}
    assert set(by_key) == expected, (
        f"{ctx}: never ran: {sorted(expected - set(by_key))}; "
        f"ran unexpectedly: {sorted(set(by_key) - expected)}")
    reruns, crash_only = [], []
    for (item_id, key), execs in sorted(by_key.items()):
        where = f"{ctx}: {item_id} {key} ran {[(e.attempt, e.pid) for e in execs]}"
        per_pid = Counter(e.pid for e in execs)
        assert set(per_pid) <= set(pids), where
        assert all(n == 1 for n in per_pid.values()), f"{where}: twice in one process"
        assert [e.pid for e in execs] == [p for p in pids if p in per_pid], where
        *earlier, last = execs
        got = outcome_pids(seen, item_id, key, last.attempt)
        assert got == [last.pid], f"{where}: its last run's outcome was recorded by {got}"
        if not earlier:
            if last.pid in crashed:
                crash_only.append((item_id, key))
            continue
        for e in earlier:
            assert e.pid in crashed, f"{where}: ran again, not after a crash"
            lost = outcome_pids(seen, item_id, key, e.attempt)
            assert e.pid not in lost, f"{where}: its outcome had committed, yet it ran again"
        if "/" not in key and "!" not in key:
            # Each crashed attempt was claimed by its runner, then recovered.
            hist = [h for h in seen.history[item_id] if h.stage == key and h.subtask is None]
            for e in earlier:
                claims = [h for h in hist if h.state == "running" and h.attempt == e.attempt]
                assert [pid_of(h.actor) for h in claims] == [e.pid], (where, hist)
            attempts = [e.attempt for e in execs]
            assert attempts == sorted(set(attempts)), where
        reruns.append((item_id, key))
    return Reruns(reruns, crash_only)


# -- what each point must show besides the invariants ----------------------------------
@attrs.define
class Facts:
    seen: Inspection
    executions: list[Execution]
    decisions: list[dict[str, Any]]
    signals: list[tuple[str, str, int, int]]
    crash_pid: int
    resume_pid: int
    reruns: Reruns
    ctx: str

    def crash_executions(self, kind: str = "stage") -> list[Execution]:
        out = [e for e in self.executions if e.pid == self.crash_pid]
        if kind == "stage":
            return [e for e in out if "/" not in e.key and "!" not in e.key]
        if kind == "subtask":
            return [e for e in out if "/" in e.key]
        if kind == "rollback":
            return [e for e in out if e.key.endswith("!rollback")]
        return out

    def crash_rows(self, *states: str) -> list[Any]:
        """History rows written by the crashed process's runners (in those states)."""
        return [h for hist in self.seen.history.values() for h in hist
                if pid_of(h.actor) == self.crash_pid and (not states or h.state in states)]

    def crash_outcomes(self) -> list[Any]:
        """Stage outcomes (not subtasks') the crashed process committed."""
        return [h for h in self.crash_rows(*RUNNER_STATES) if h.subtask is None]

    def claimed_never_started(self) -> list[tuple[str, str, int]]:
        started = {(e.item, e.key, e.attempt) for e in self.crash_executions()}
        return [(h.item_id, h.stage, h.attempt) for h in self.crash_rows("running")
                if h.subtask is None and (h.item_id, h.stage, h.attempt) not in started]


def _after_claim_commit(f: Facts) -> None:
    # Claims were committed, then the process died before running any of them.
    assert not f.crash_executions("all"), (f.ctx, f.crash_executions("all"))
    assert f.claimed_never_started(), f"{f.ctx}: no claim of the crashed runner was committed"
    assert not f.crash_rows(*RUNNER_STATES, "rolled_back"), f.ctx


def _in_stage(f: Facts) -> None:
    # The 3rd stage died before its function ran; at most the 2 before it ran.
    assert len(f.crash_executions()) <= HIT["in-stage"][0] - 1, (f.ctx, f.crash_executions())
    assert f.claimed_never_started(), f"{f.ctx}: the stage about to run was not claimed"


def _before_result_commit(f: Facts) -> None:
    # The first results were lost with the process: they ran again, once.
    assert not f.crash_rows(*RUNNER_STATES), (f.ctx, f.crash_rows(*RUNNER_STATES))
    assert f.crash_executions(), f.ctx
    assert {(e.item, e.key) for e in f.crash_executions()} <= set(f.reruns.keys), f.ctx
    assert f.reruns.keys, f"{f.ctx}: no result was lost, so none ran again"


def _mid_fanout(f: Facts) -> list[str]:
    """Items whose fan-out had a subtask committed by the crashed process but was
    completed by the resumed one."""
    out = []
    for item_id, hist in f.seen.history.items():
        subs = [h for h in hist if h.stage == "fan" and h.subtask and h.state == "completed"
                and pid_of(h.actor) == f.crash_pid]
        done = [h for h in hist if h.stage == "fan" and h.subtask is None and h.state == "completed"]
        if subs and [pid_of(h.actor) for h in done] == [f.resume_pid]:
            out.append(item_id)
    return out


def _after_result_commit(f: Facts) -> None:
    # Results committed: they are kept and did not run again.
    kept = f.crash_outcomes()
    assert kept, f"{f.ctx}: no result of the crashed process was committed"
    assert not {(h.item_id, h.stage) for h in kept} & set(f.reruns.keys), f.ctx
    # Mid fan-out: the stage function ran again to rebuild the FanOut; the subtask
    # committed before the crash kept its output and did not run again.
    for item_id in _mid_fanout(f):
        assert (item_id, "fan") in f.reruns.keys, (f.ctx, item_id)
        committed = {h.subtask for h in f.seen.history[item_id] if h.stage == "fan" and h.subtask
                     and h.state == "completed" and pid_of(h.actor) == f.crash_pid}
        assert committed and not {(item_id, f"fan/{n}") for n in committed} & set(f.reruns.keys), (
            f.ctx, item_id, committed)


def _unsignalled(f: Facts) -> list[Any]:
    """Completions the crashed process committed and never signalled."""
    signalled = {(i, s, a) for i, s, a, p in f.signals if p == f.crash_pid}
    return [h for h in f.crash_rows("completed")
            if h.subtask is None and (h.item_id, h.stage, h.attempt) not in signalled]


def _before_signals(f: Facts) -> None:
    # A batch committed but never signalled: its results are kept and did not run
    # again; no signal was received for a result that had not committed (check_signals).
    unsignalled = _unsignalled(f)
    assert unsignalled, f"{f.ctx}: no committed completion went unsignalled"
    assert not {(h.item_id, h.stage) for h in unsignalled} & set(f.reruns.keys), f.ctx
    kept = f.crash_outcomes()
    assert not {(h.item_id, h.stage) for h in kept} & set(f.reruns.keys), f.ctx


def _mid_fanout_start(f: Facts) -> None:
    # The fan-out start never committed: no subtask ran or was recorded by the
    # crashed process, and every fan stage it ran ran again.
    fans = [e for e in f.crash_executions() if e.key == "fan"]
    assert fans, f"{f.ctx}: the crashed process ran no fan stage"
    assert not f.crash_executions("subtask"), (f.ctx, f.crash_executions("subtask"))
    assert not [h for h in f.crash_rows() if h.subtask is not None], f.ctx
    assert {(e.item, "fan") for e in fans} <= set(f.reruns.keys), f.ctx


def _mid_review_decision(f: Facts) -> None:
    # Decisions are made in sorted order; the first committed before the crash,
    # the second was cut (absent, made again after resuming).
    order = sorted(points.ITEMS)
    by_crash = [d["item"] for d in f.decisions if d["pid"] == f.crash_pid]
    assert by_crash == order[:HIT["mid-review-decision"][0] - 1], (f.ctx, by_crash)
    cut = order[HIT["mid-review-decision"][0] - 1]
    assert f.seen.status[cut].stages["review"].review.reviewer == f"pid{f.resume_pid}", f.ctx
    # All reviews were requested before the crash: none ran again.
    assert not [k for k in f.reruns.keys if k[1] == "review"], f.ctx


def _rollbacks_recorded_and_rerun(f: Facts) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    recorded = {(h.item_id, f"{h.stage}!rollback") for h in f.crash_rows("rolled_back")}
    rerun = {k for k in f.reruns.keys if k[1].endswith("!rollback")}
    return recorded, rerun


def _mid_rollback(f: Facts) -> None:
    # A rollback ran, its record was cut: it ran again (once). The rollbacks recorded
    # before the crash stand and did not run again.
    recorded, rerun = _rollbacks_recorded_and_rerun(f)
    assert rerun, f"{f.ctx}: no rollback cut by the crash"
    assert recorded, f"{f.ctx}: no rollback recorded before the crash"
    assert not recorded & rerun, f.ctx
    ran = {(e.item, e.key) for e in f.crash_executions("rollback")}
    assert ran == recorded | rerun, (f.ctx, ran, recorded, rerun)
    # The decisions made before the crash (all of them) stand.
    assert {d["item"] for d in f.decisions if d["pid"] == f.crash_pid} == set(points.ITEMS), f.ctx


def _mid_schema_migration(f: Facts) -> None:
    # Died while opening the store: nothing ran, nothing recorded, nothing decided;
    # resuming migrated (checked by the test) and did it all.
    assert not f.crash_executions("all") and not f.crash_rows(), f.ctx
    assert not [d for d in f.decisions if d["pid"] == f.crash_pid], f.ctx
    assert not f.reruns.keys, f.ctx


#: Did the crash land where the point's own check needs it? (Default: yes.)
LANDED: dict[str, Callable[[Facts], bool]] = {
    "before-signals": lambda f: bool(_unsignalled(f)),
    "after-result-commit": lambda f: bool(_mid_fanout(f)),
    "mid-rollback": lambda f: all(_rollbacks_recorded_and_rerun(f)),
}

SPECIFIC: dict[str, Callable[[Facts], None]] = {
    "after-claim-commit": _after_claim_commit,
    "in-stage": _in_stage,
    "before-result-commit": _before_result_commit,
    "after-result-commit": _after_result_commit,
    "before-signals": _before_signals,
    "mid-fanout-start": _mid_fanout_start,
    "mid-review-decision": _mid_review_decision,
    "mid-rollback": _mid_rollback,
    "mid-schema-migration": _mid_schema_migration,
}


def test_every_crash_point_has_a_scenario() -> None:
    """Each point of CRASH_POINTS has a hit number and its own checks here."""
    assert set(HIT) == set(CRASH_POINTS) == set(SPECIFIC)
