"""Stages on a Dask cluster (``treadle.contrib.dask``): a LocalCluster of worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                  "(pip install 'treadle[dask]')")

from treadle import Runner, open_store  # noqa: E402
from treadle.contrib.dask import DaskExecutor  # noqa: E402
from treadle.states import StageState  # noqa: E402

from . import dask_stages  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def cluster() -> Any:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True,
                                  dashboard_address=None, resources={"GPU": 1}) as c:
        yield c


@pytest.fixture
def client(cluster: Any) -> Any:
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def _items(log: Path, ids: list[str], **extra: Any) -> list[dict[str, Any]]:
    return [{"id": i, "log": str(log), **extra} for i in ids]


def _state(runner: Runner, item_id: str) -> dict[str, Any]:
    st = runner.status(item_id)
    return {name: (s.state.value, s.attempts, s.error,
                   None if name == "load" else s.output,
                   {n: (t.state.value, t.attempts) for n, t in s.subtasks.items()})
            for name, s in st.stages.items()}


def test_a_pipeline_on_dask_ends_like_on_the_thread_pool(client, tmp_path):
    """Fan-out, retry, a timeout and a review: the store ends the same on Dask as on threads."""
    ids = ["ok", "flaky", "bad", "slow"]
    ends = {}
    for name, executor in (("threads", None), ("dask", DaskExecutor(client))):
        log = tmp_path / f"{name}.log"
        runner = Runner(dask_stages.pipeline, open_store(f"sqlite:///{tmp_path / name}.db"),
                        executor=executor, workers=2)
        runner.submit(*_items(log, ids))
        runner.run()
        ends[name] = {i: _state(runner, i) for i in ids}
        if name == "dask":
            pids = {runner.status(i).stages["load"].output["pid"] for i in ids}
            assert os.getpid() not in pids  # ran in the workers' processes
    assert ends["dask"] == ends["threads"]
    dask_end = ends["dask"]
    assert dask_end["ok"]["check"][0] == "awaiting_review"
    assert dask_end["flaky"]["load"][:2] == ("completed", 2)
    assert dask_end["bad"]["fan"][0] == "failed"
    assert dask_end["slow"]["maybe_slow"][2] == "StageTimeout: timed out after 1.5 s"


def test_claims_follow_the_cluster_size(client, cluster):
    """The executor's capacity is the cluster's threads, re-read as workers come and go."""
    ex = DaskExecutor(client)
    ex.REFRESH = 0.0
    assert ex.capacity == 4
    cluster.scale(3)
    client.wait_for_workers(3, timeout=60)
    assert ex.capacity == 6
    cluster.scale(2)
    deadline = time.monotonic() + 30
    while ex.capacity != 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ex.capacity == 4


def test_stage_resources_limit_where_and_how_many_run(client, tmp_path):
    """``resources={"gpu": {"GPU": 1}}``: with one GPU per worker, at most two ``gpu`` runs
    at once, while ``work`` (no resources) uses all four threads."""
    log = tmp_path / "res.log"
    runner = Runner(dask_stages.simple, open_store(f"sqlite:///{tmp_path / 'r.db'}"),
                    executor=DaskExecutor(client, resources={"gpu": {"GPU": 1}}))
    runner.submit(*_items(log, [f"i{n}" for n in range(8)], sleep=0.3))
    assert runner.run().completed == 16
    rows = [ln.split() for ln in log.read_text().splitlines()]

    def peak(stage: str) -> int:
        spans = [(float(a), float(b)) for _, what, a, b, _ in rows if what == stage]
        assert len(spans) == 8
        return max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)

    assert peak("gpu") <= 2
    assert peak("work") >= 3


def test_a_killed_worker_loses_nothing_and_doubles_nothing(client, tmp_path):
    """SIGKILL of a Dask worker process mid-run: every stage completes, once in the store."""
    log = tmp_path / "kill.log"
    runner = Runner(dask_stages.simple, open_store(f"sqlite:///{tmp_path / 'k.db'}"),
                    executor=DaskExecutor(client))
    ids = [f"i{n}" for n in range(16)]
    runner.submit(*_items(log, ids, sleep=0.4))
    done = threading.Event()
    threading.Thread(target=lambda: (runner.run(), done.set()), daemon=True).start()
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    assert done.wait(90), "run() did not return"
    for i in ids:
        st = runner.status(i)
        assert st.state == "completed", (i, st)
        completed = Counter(h.stage for h in runner.history(i) if h.state == "completed")
        assert completed == {"work": 1, "gpu": 1}
    assert not [s for i in ids for s in runner.status(i).stages.values()
                if s.state == StageState.RUNNING]


def test_run_dask_runs_the_cli_on_the_cluster(cluster, tmp_path):
    """``python -m treadle run TARGET --dask ADDRESS``: the stages run on the cluster."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    log = tmp_path / "cli.log"
    item = '{"id": "c1", "log": "%s", "sleep": 0.01}' % log
    done = subprocess.run(
        [sys.executable, "-m", "treadle", "run", f"{root}/tests/dask_stages.py:simple",
         "--db", db, "--item", item, "--dask", cluster.scheduler_address],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert f"Dask cluster at {cluster.scheduler_address}" in done.stdout
    pids = {int(ln.split()[4]) for ln in log.read_text().splitlines()}
    assert done.returncode == 0 and pids and not pids & {os.getpid()}
    runner = Runner(dask_stages.simple, open_store(db))
    assert runner.status("c1").state == "completed"
