"""Flow control across runner processes: rate limits, global concurrency, priorities."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from treadle import (
    FanOut,
    InvalidLimitError,
    InvalidStageError,
    Pipeline,
    Runner,
    UnknownLimitError,
    open_store,
    stage,
)
from treadle.limits import Rate, parse_rate

from . import flow_pipeline

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(flow_pipeline.__file__))


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'flow.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


def start(url: str, mode: str, log: Path, workers: int = 4) -> subprocess.Popen[str]:
    env = {**os.environ, "FLOW_LOG": str(log), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, SCRIPT, url, mode, str(workers)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(log: Path) -> list[tuple[str, int, str, float]]:
    """(start|end, pid, item, time) lines the stages wrote, in time order."""
    if not log.exists():
        return []
    rows = [(p[0], int(p[1]), p[2], float(p[3]))
            for p in (line.split() for line in log.read_text().splitlines()) if len(p) == 4]
    return sorted(rows, key=lambda r: r[3])


def most_at_once(rows: list[tuple[str, int, str, float]]) -> int:
    """The most stage runs that were between their start and their end at one time."""
    now = peak = 0
    for kind, *_ in sorted(rows, key=lambda r: (r[3], r[0] == "start")):  # ends first on ties
        now += 1 if kind == "start" else -1
        peak = max(peak, now)
    return peak


def finish(procs: list[subprocess.Popen[str]], timeout: float = 120) -> None:
    outs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), [o[1][-2000:] for o in outs]


def assert_five_per_second(log: Any) -> None:
    """45 starts logged; in the first 6 s at most 5 x 6 + 5 (the burst) and at least 80%
    of that; and no 6 s window anywhere holds more than the bucket allows."""
    starts = [r[3] for r in events(log) if r[0] == "start"]
    assert len(starts) == 45
    t0 = starts[0]
    in_six = sum(1 for t in starts if t < t0 + 6.0)
    assert 0.8 * 35 <= in_six <= 35, in_six
    assert max(sum(1 for t in starts if s <= t < s + 6.0) for s in starts) <= 35


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_rate_limit_holds_across_three_runner_processes(url: str, tmp_path: Path) -> None:
    """rate="5/s", 3 runner processes: in 6 s at most 5 x 6 + 5 (the burst) starts,
    counted by the stage itself, and at least 80% of that (no runner starves the rate)."""
    runner = Runner(flow_pipeline.rated, open_store(url))
    runner.submit([{"id": f"r{k}"} for k in range(45)])
    log = tmp_path / "effects.log"
    finish([start(url, "rated", log) for _ in range(3)])
    assert_five_per_second(log)
    assert len({r[1] for r in events(log)}) >= 2, "one runner did all the work"
    assert runner.item_counts() == {"completed": 45}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_global_limit_holds_across_runners_and_a_killed_runners_slots_come_back(
        url: str, tmp_path: Path) -> None:
    """concurrency=3, scope="global" with 4 runners x 4 workers: never more than 3 runs
    at once, counted inside the stage; a SIGKILLed runner's places come back when its
    claims are recovered, and the others finish the work."""
    runner = Runner(flow_pipeline.limited, open_store(url))
    runner.submit([{"id": f"g{k}"} for k in range(60)])
    log = tmp_path / "effects.log"
    procs = [start(url, "limited", log) for _ in range(4)]
    by_pid = {p.pid: p for p in procs}
    deadline = time.time() + 60
    victim = None
    while victim is None:  # kill a runner while one of its stage runs is in progress
        rows = events(log)
        ended = {(r[1], r[2]) for r in rows if r[0] == "end"}
        running = [r[1] for r in rows if r[0] == "start" and (r[1], r[2]) not in ended]
        victim = by_pid.get(running[0]) if running else None
        assert time.time() < deadline, "no runner ran a stage"
        time.sleep(0.005)
    killed_at = time.time()  # its runs end here: nobody can take their places before it died
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    finish([p for p in procs if p is not victim])
    assert time.time() - killed_at < 45  # the dead runner's lease is 60 s: recovered, not lapsed
    rows = events(log)
    ended = {(r[1], r[2]) for r in rows if r[0] == "end"}
    rows += [("end", pid, item, killed_at) for kind, pid, item, _ in list(rows)
             if kind == "start" and pid == victim.pid and (pid, item) not in ended]
    assert most_at_once(rows) <= 3
    assert most_at_once(rows) >= 2  # the limit is used, not starved
    assert runner.item_counts() == {"completed": 60}
    recovered = [h for s in runner.items(limit=None) for h in runner.history(s.item_id)
                 if h.actor == "recovery"]
    assert recovered, "the killed runner's claim was not recovered"
    [status] = runner.limits()
    assert (status.stage, status.concurrency, status.in_use, status.waiting) == ("slow", 3, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_subtask_key_rate_holds_across_three_runner_processes(url: str, tmp_path: Path
                                                                ) -> None:
    """FanOut(rate={"musicbrainz": "5/s"}), 3 runner processes: in 6 s at most 5 x 6 + 5
    (the burst) "musicbrainz" subtasks start, counted by the subtasks themselves, and at
    least 80% of that; the subtask without a rate is not held back."""
    runner = Runner(flow_pipeline.keyed, open_store(url))
    runner.submit([{"id": f"k{k}"} for k in range(45)])
    log = tmp_path / "effects.log"
    finish([start(url, "keyed", log, workers=2) for _ in range(3)])
    assert_five_per_second(log)
    assert len({r[1] for r in events(log)}) >= 2, "one runner ran every subtask"
    assert runner.item_counts() == {"completed": 45}
    assert runner.status("k7").stages["enrich"].output == {"musicbrainz:recording": "mb",
                                                           "local": "k7"}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_named_limit_shared_by_two_stages_holds_across_runner_processes(
        url: str, tmp_path: Path) -> None:
    """Pipeline(limits={"api": 3}) taken by two stages, 4 runners x 4 workers: never more
    than 3 runs of either stage at once, counted inside the stages, and the limit is used."""
    runner = Runner(flow_pipeline.shared, open_store(url))
    runner.submit([{"id": f"s{k}"} for k in range(30)])
    log = tmp_path / "effects.log"
    finish([start(url, "shared", log) for _ in range(4)])
    rows = events(log)
    assert len([r for r in rows if r[0] == "start"]) == 60
    assert {r[2].split(":")[1] for r in rows} == {"first", "second"}
    assert 2 <= most_at_once(rows) <= 3
    assert runner.item_counts() == {"completed": 30}
    [status] = runner.limits()
    assert (status.limit, status.stages, status.concurrency, status.in_use) == (
        "api", ("first", "second"), 3, 0)


@pytest.mark.timeout(60)
def test_with_one_worker_high_priority_items_run_first(tmp_path: Path) -> None:
    """100 low-priority items, then 10 high-priority ones, one worker: the high ones run first."""
    order: list[str] = []

    @stage()
    def work(item: Any) -> None:
        order.append(item["id"])

    pipeline = Pipeline("prio", [work])
    runner = Runner(pipeline, open_store(f"sqlite:///{tmp_path / 'p.db'}"), workers=1)
    runner.submit([{"id": f"low{k}"} for k in range(100)])
    runner.submit([{"id": f"high{k}"} for k in range(10)], priority=10)
    runner.run()
    assert order[:10] == [f"high{k}" for k in range(10)]
    assert order[10:] == [f"low{k}" for k in range(100)]
    assert runner.priority("high3") == 10 and runner.priority("low3") == 0


@pytest.mark.timeout(60)
def test_prioritize_moves_waiting_items_ahead(tmp_path: Path) -> None:
    """Runner.prioritize() changes the order of items already submitted."""
    order: list[str] = []

    @stage()
    def work(item: Any) -> None:
        order.append(item["id"])

    runner = Runner(Pipeline("prio2", [work]), open_store("memory://"), workers=1)
    runner.submit([{"id": f"i{k}"} for k in range(5)])
    assert runner.prioritize(["i3", "i4"], 2) == ["i3", "i4"]
    runner.prioritize("i4", 3)
    runner.run()
    assert order == ["i4", "i3", "i0", "i1", "i2"]
    with pytest.raises(ValueError, match="priority"):
        runner.prioritize("i0", "high")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="priority"):
        runner.submit({"id": "x"}, priority=2**40)


@pytest.mark.timeout(60)
def test_a_rate_limited_run_waits_without_holding_workers(tmp_path: Path) -> None:
    """A run with rate="10/s" and 25 items: 10 at once, then 10 a second; the other
    stage is not held back, and the report says how long the stage waited."""
    starts: dict[str, list[float]] = {"limited": [], "other": []}

    @stage(rate="10/s")
    def limited(item: Any) -> None:
        starts["limited"].append(time.monotonic())

    @stage()
    def other(item: Any) -> None:
        starts["other"].append(time.monotonic())

    runner = Runner(Pipeline("rate", [limited, other]), open_store("memory://"), workers=2)
    runner.submit([{"id": f"i{k}"} for k in range(25)])
    began = time.monotonic()
    report = runner.run()
    took = time.monotonic() - began
    assert report.completed == 50
    assert 1.3 < took < 4.0  # 10 at once, 15 more at 10/s
    assert max(starts["other"]) - began < 1.0  # not held back by its neighbour's limit
    assert report.throttled["limited"] > 1.0 and "other" not in report.throttled


def test_rate_strings_and_bad_options() -> None:
    """Rates read as COUNT/UNIT; bad flow options are named errors at decoration time."""
    assert parse_rate("1/s") == Rate(1, 1) and parse_rate("60/min") == Rate(60, 60)
    assert parse_rate("1000/h").per_second == pytest.approx(1000 / 3600)
    assert str(parse_rate("10/5s")) == "10/5s" and str(parse_rate("5 / min")) == "5/min"
    for bad in ("fast", "0/s", "5/fortnight", "5"):
        with pytest.raises(InvalidStageError, match="rate"):
            stage(rate=bad)(lambda item: None)
    with pytest.raises(InvalidStageError, match="concurrency"):
        stage(scope="global")(lambda item: None)
    with pytest.raises(InvalidStageError, match="scope"):
        stage(concurrency=2, scope="planet")(lambda item: None)  # type: ignore[arg-type]
    with pytest.raises(InvalidStageError, match="priority"):
        stage(priority=1.5)(lambda item: None)  # type: ignore[arg-type]


def cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "treadle", *args], cwd=ROOT,
                          env={**os.environ, "TREADLE_DB": db}, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.timeout(120)
def test_cli_submit_priority_prioritize_and_status_limits(tmp_path: Path) -> None:
    """submit --priority, prioritize (all or none), and status showing the shared limits."""
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    target = "tests/flow_pipeline.py:limited"
    missing = cli("prioritize", target, "g1", "--priority", "3", db=db)
    assert missing.returncode == 2 and "no store at" in missing.stderr
    assert not (tmp_path / "cli.db").exists()
    res = cli("submit", target, "--item", '{"id": "g1"}', "--item", '{"id": "g2"}',
              "--priority", "5", db=db)
    assert res.returncode == 0, res.stderr
    res = cli("prioritize", target, "g2", "--priority", "9", db=db)
    assert res.returncode == 0, res.stderr
    assert "priority 9 for 1 item(s): g2" in res.stdout
    bad = cli("prioritize", target, "g1", "nope", "--priority", "1", db=db)
    assert bad.returncode == 2 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    runner = Runner(flow_pipeline.limited, open_store(db))
    assert (runner.priority("g1"), runner.priority("g2")) == (5, 9)  # unchanged by the refusal
    status = cli("status", target, db=db)
    assert status.returncode == 0, status.stderr
    assert "limits every runner shares" in status.stdout
    shared = status.stdout.split("limits every runner shares")[1]
    line = next(x for x in shared.splitlines() if x.strip().startswith("slow"))
    assert line.split()[-3:] == ["3", "0", "2"]  # global limit, in use, waiting
    listed = cli("items", target, "--priority", "6", "--json", db=db)
    assert listed.returncode == 0, listed.stderr
    assert [(r["item_id"], r["priority"]) for r in json.loads(listed.stdout)] == [("g2", 9)]
    table = cli("items", target, "--priority", "0", db=db).stdout
    assert [line.split()[:2] for line in table.splitlines()[2:4]] == [["g2", "9"], ["g1", "5"]]
    as_json = json.loads(cli("status", target, "--json", db=db).stdout)
    assert as_json["limits"] == [{"stage": "slow", "rate": None, "concurrency": 3,
                                  "tokens": None, "waiting": 2, "in_use": 0}]


def _back_to_schema_4(store: Any) -> None:
    """Make a store look as schema 4 left it: no priorities, no limits table."""
    with store.transaction() as tx:
        tx._exec("DROP TABLE treadle_limit")
        tx._exec("DROP INDEX treadle_stage_ready_p")
        for table in ("treadle_stage", "treadle_item"):
            tx._exec(f"ALTER TABLE {table} DROP COLUMN priority")
        tx._exec("CREATE INDEX treadle_stage_ready ON treadle_stage (pipeline, id) "
                 "WHERE state = 'pending' AND ready = 1")
        tx._exec("UPDATE treadle_meta SET value='4' WHERE key='schema_version'")
    store.close()


@pytest.mark.timeout(120)
def test_a_schema_4_store_is_upgraded_and_the_step_can_run_twice(url: str) -> None:
    """Opening a schema-4 store adds priorities and limits (schema 5); its items keep
    their state and run with priority 0; running the step again changes nothing."""
    from treadle.store.schema import SCHEMA_VERSION

    runner = Runner(flow_pipeline.limited, open_store(url))
    runner.submit([{"id": "old1"}, {"id": "old2"}])
    _back_to_schema_4(runner.store)
    for again in (False, True):
        store = open_store(url)
        assert store._read(  # type: ignore[attr-defined]
            "SELECT value FROM treadle_meta WHERE key='schema_version'") == [(str(SCHEMA_VERSION),)]
        if not again:
            with store.transaction() as tx:  # type: ignore[attr-defined]
                tx._exec("UPDATE treadle_meta SET value='4' WHERE key='schema_version'")
            store.close()
    runner = Runner(flow_pipeline.limited, store, workers=2)
    assert runner.priority("old1") == 0
    runner.submit({"id": "new"}, priority=4)
    runner.prioritize("old2", 2)
    report = runner.run()
    assert report.completed == 3 and runner.item_counts() == {"completed": 3}


@pytest.mark.timeout(300)
def test_the_flow_benchmark_reports_each_variant_against_none() -> None:
    """``python -m benchmarks.flow`` runs and prints the ratio of each variant to none
    (only its shape is checked, never a speed)."""
    stores = "sqlite,postgresql" if os.environ.get("TREADLE_TEST_POSTGRES_URL") else "sqlite"
    done = subprocess.run([sys.executable, "-m", "benchmarks.flow", "--n", "60", "--repeats", "1",
                           "--stores", stores], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for variant, base in [*((v, "none") for v in ("none", "rate", "global", "rate+global",
                                                    "named", "named-rate")),
                          ("fanout", "fanout"), ("fanout+key-rate", "fanout")]:
        assert len([line for line in done.stdout.splitlines()
                    if line.split()[:1] == [variant] and f"x {base}" in line]
                   ) == len(stores.split(",")), (variant, done.stdout)


@pytest.mark.timeout(60)
def test_a_named_limit_holds_across_the_stages_taking_it() -> None:
    """Pipeline(limits={"api": 2}) taken by two stages, 8 workers: never more than 2
    runs of them at once; a stage without the limit is not held back."""
    lock = threading.Lock()
    now = {"api": 0, "free": 0}
    peak = {"api": 0, "free": 0}

    def busy(kind: str) -> None:
        with lock:
            now[kind] += 1
            peak[kind] = max(peak[kind], now[kind])
        time.sleep(0.05)
        with lock:
            now[kind] -= 1

    @stage(limits={"api": 1})
    def fetch(item: Any) -> None:
        busy("api")

    @stage(after=[fetch], limits=["api"])
    def push(item: Any) -> None:
        busy("api")

    @stage()
    def free(item: Any) -> None:
        busy("free")

    pipeline = Pipeline("named", [fetch, push, free], limits={"api": 2})
    runner = Runner(pipeline, open_store("memory://"), workers=8)
    runner.submit([{"id": f"i{k}"} for k in range(20)])
    assert runner.run().completed == 60
    assert peak["api"] == 2 and peak["free"] > 2


@pytest.mark.timeout(60)
def test_a_subtask_key_rate_waits_without_holding_workers() -> None:
    """FanOut(rate={"mb": "10/s"}): the "mb" subtasks start 10 at once, then 10 a
    second; the subtasks without a rate and another stage run meanwhile on the one
    worker; the report says how long the key waited."""
    starts: dict[str, list[float]] = {"mb": [], "local": [], "other": []}

    def note(kind: str) -> str:
        starts[kind].append(time.monotonic())
        return kind

    @stage()
    def enrich(item: Any) -> FanOut:
        return FanOut({"mb:recording": lambda: note("mb"), "local": lambda: note("local")},
                      rate={"mb": "10/s"})

    @stage()
    def other(item: Any) -> None:
        note("other")

    runner = Runner(Pipeline("keyrate", [enrich, other]), open_store("memory://"), workers=1)
    runner.submit([{"id": f"i{k}"} for k in range(25)])
    report = runner.run()
    assert report.completed == 50
    mb = sorted(starts["mb"])
    assert len(mb) == 25 and mb[-1] - mb[0] >= 1.3  # 10 at once, 15 more at 10/s
    assert max(starts["local"] + starts["other"]) < mb[-1]  # not held back by the key
    assert report.throttled["limit:mb"] > 1.0
    assert runner.status("i3").stages["enrich"].output == {"mb:recording": "mb",
                                                           "local": "local"}


@pytest.mark.timeout(60)
def test_a_key_function_and_the_pipelines_named_rate() -> None:
    """FanOut(key=...) picks each subtask's key; FanOut(rate=["name"]) takes the
    Pipeline's named rate, one bucket with the stages that take it."""
    starts: list[float] = []

    def call(n: int) -> int:
        starts.append(time.monotonic())
        return n

    @stage(limits=["mb"])
    def lookup(item: Any) -> None:
        starts.append(time.monotonic())

    @stage()
    def enrich(item: Any) -> FanOut:
        return FanOut({f"lookup-{n}": (lambda n=n: call(n)) for n in range(3)},
                      rate=["mb"], key=lambda name: "mb" if name.startswith("lookup") else None)

    runner = Runner(Pipeline("keyfn", [lookup, enrich], limits={"mb": "20/s"}),
                    open_store("memory://"), workers=4)
    runner.submit([{"id": f"i{k}"} for k in range(10)])  # 10 + 30 starts from one bucket
    report = runner.run()
    assert report.completed == 20
    starts.sort()
    assert len(starts) == 40 and starts[-1] - starts[0] >= 0.9  # 20 at once, 20 more at 20/s


@pytest.mark.timeout(60)
def test_a_fanout_whose_rate_contradicts_the_pipeline_fails_the_stage_by_name() -> None:
    """A FanOut naming an undeclared limit, or a rate other than the Pipeline's for the
    same key, fails its stage with a named error; nothing runs."""
    ran: list[str] = []

    @stage()
    def unknown(item: Any) -> FanOut:
        return FanOut({"mb": lambda: ran.append("x")}, rate=["musicbrains"])

    @stage()
    def other_rate(item: Any) -> FanOut:
        return FanOut({"mb": lambda: ran.append("y")}, rate={"musicbrainz": "5/s"})

    pipeline = Pipeline("badfan", [unknown, other_rate], limits={"musicbrainz": "1/s"})
    runner = Runner(pipeline, open_store("memory://"))
    runner.submit({"id": "i"})
    report = runner.run()
    assert report.failed == 2 and ran == []
    stages = runner.status("i").stages
    assert "UnknownLimitError" in (stages["unknown"].error or "")
    assert "Did you mean 'musicbrainz'" in (stages["unknown"].error or "")
    assert "InvalidLimitError" in (stages["other_rate"].error or "")
    assert "differs" in (stages["other_rate"].error or "")


def test_bad_named_limits_and_fanout_rates_are_named_errors() -> None:
    """Named limits and FanOut rates are checked where they are declared."""
    @stage(limits={"openai": 1})
    def ask(item: Any) -> None: ...

    with pytest.raises(UnknownLimitError, match="Did you mean 'opnai'"):
        Pipeline("p", [ask], limits={"opnai": 4})
    with pytest.raises(InvalidLimitError, match=r"int >= 1 .* or a rate"):
        Pipeline("p", [ask], limits={"openai": 0})
    with pytest.raises(InvalidLimitError, match="rate"):
        Pipeline("p", [ask], limits={"openai": "lots/s"})

    @stage(limits={"openai": 5})
    def greedy(item: Any) -> None: ...

    with pytest.raises(InvalidLimitError, match="could never run"):
        Pipeline("p", [greedy], limits={"openai": 4})
    with pytest.raises(InvalidLimitError, match="units"):
        stage(limits={"openai": 0})(lambda item: None)
    with pytest.raises(InvalidLimitError, match="non-empty"):
        stage(limits=[""])(lambda item: None)
    with pytest.raises(InvalidLimitError, match="rate of key 'mb'"):
        FanOut({"mb": lambda: 1}, rate={"mb": "often"})
    with pytest.raises(InvalidLimitError, match="not callable"):
        FanOut({"mb": lambda: 1}, rate={"mb": "1/s"}, key="mb")  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_subtasks_waiting_for_a_token_resume_on_the_next_run() -> None:
    """A run stopped while subtasks wait for their key's token gives the stage back; the
    next run starts only the subtasks not completed, with new tokens."""
    calls: list[str] = []

    def call(name: str) -> str:
        calls.append(name)
        if name == "mb:1" and calls.count("mb:1") == 1:
            os.kill(os.getpid(), signal.SIGINT)  # stop the run: mb:3 waits for a token
        return name

    @stage()
    def enrich(item: Any) -> FanOut:
        return FanOut({n: (lambda n=n: call(n)) for n in ("mb:1", "mb:2", "mb:3")},
                      rate={"mb": "2/s"})

    store = open_store("memory://")
    runner = Runner(Pipeline("resume", [enrich]), store, workers=2)
    runner.submit({"id": "i"})
    first = runner.run()
    assert first.interrupted and "mb:3" not in calls
    subs = runner.status("i").stages["enrich"].subtasks
    assert subs["mb:3"].state == "pending"
    second = runner.run()
    assert second.completed == 1 and calls.count("mb:3") == 1
    assert calls.count("mb:1") + calls.count("mb:2") <= 4  # completed ones are kept
    assert runner.status("i").stages["enrich"].output == {"mb:1": "mb:1", "mb:2": "mb:2",
                                                          "mb:3": "mb:3"}


@pytest.mark.timeout(120)
def test_cli_status_shows_named_limits(tmp_path: Path) -> None:
    """status lists a named limit with the stages taking it (table and --json)."""
    db = f"sqlite:///{tmp_path / 'named.db'}"
    target = "tests/flow_pipeline.py:shared"
    res = cli("submit", target, "--item", '{"id": "n1"}', "--item", '{"id": "n2"}', db=db)
    assert res.returncode == 0, res.stderr
    status = cli("status", target, db=db)
    assert status.returncode == 0, status.stderr
    shared = status.stdout.split("limits every runner shares")[1]
    line = next(x for x in shared.splitlines() if x.strip().startswith("api"))
    assert "(first, second)" in line and line.split()[-3:] == ["3", "0", "2"]
    as_json = json.loads(cli("status", target, "--json", db=db).stdout)
    assert as_json["limits"] == [{"stage": None, "limit": "api", "stages": ["first", "second"],
                                  "rate": None, "concurrency": 3, "tokens": None,
                                  "waiting": 2, "in_use": 0}]
