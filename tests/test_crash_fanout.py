"""Real-subprocess kill test of fan-out resume: SIGKILL mid fan-out, then resume.

The worker (tests/crash/fanworker.py) runs ``fan -> join`` of
tests/crash/fanpipe.py: ``fan`` fans out four subtasks per item. The stage
function and every subtask log ``item key attempt pid`` before they work, so
the log says which process ran what; the test compares it with the store's
history. Kill points are drawn from a seeded RNG (``TREADLE_CRASH_SEED``);
``TREADLE_FANRESUME_ITEMS`` and ``TREADLE_FANRESUME_KILLS`` scale the run
(the figure in docs/fanout.md was measured at 200 items and 60 kills).

With rebuildable subtasks (``plan``) the stage function runs once per item:
again only when a kill cut it before its fan-out was recorded. With closures
it runs again for every fan-out in flight at each kill. In both modes each
subtask completes exactly once and runs again only when it had not
committed in the process that was killed.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from treadle import Runner, open_store

from .procs import import_from
from .test_crash import finish, kill_at_targets, pid_of, read_log, report_of

HERE = Path(__file__).resolve().parent
WORKER = HERE / "crash" / "fanworker.py"
fanpipe = import_from(HERE / "crash", "fanpipe")

SEED = int(os.environ.get("TREADLE_CRASH_SEED", "20240611"))
N_ITEMS = int(os.environ.get("TREADLE_FANRESUME_ITEMS", "40"))
KILLS = int(os.environ.get("TREADLE_FANRESUME_KILLS", "6"))

pytestmark = pytest.mark.slow


def start_worker(db: Path, log: Path, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(db), str(log), "--mode", mode, "--items", str(N_ITEMS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["plan", "closure"])
def test_sigkill_mid_fanout_resumes_and_runs_each_subtask_to_completion_once(
        tmp_path: Path, mode: str) -> None:
    """Killed mid fan-out again and again, the runner resumes: every item completes with
    its outputs, each subtask completes once and re-runs only if it had not committed;
    with rebuildable subtasks the stage function runs once per item (again only where a
    kill cut it before its fan-out was recorded)."""
    db, log = tmp_path / "fan.db", tmp_path / "effects.log"
    rng = random.Random(SEED)
    total = N_ITEMS * (1 + len(fanpipe.SUBTASKS))
    targets = sorted(rng.sample(range(total * 5 // 100, total * 85 // 100), KILLS))
    ctx = f"mode={mode} seed={SEED} targets={targets}"
    killed = kill_at_targets(lambda: start_worker(db, log, mode), log, targets, rng, ctx, 0.02)
    assert len(killed) >= KILLS * 2 // 3, f"only {len(killed)} kills landed mid-run ({ctx})"

    proc = start_worker(db, log, mode)
    out, err = finish(proc, 120)
    assert proc.returncode == 0, (ctx, out, err)
    assert "Traceback" not in err, err
    assert report_of(out)["items"] == {"completed": N_ITEMS}

    runs: dict[tuple[str, str], list[int]] = defaultdict(list)  # (item, key) -> pids, in order
    for item_id, key, _, pid in read_log(log):
        runs[(item_id, key)].append(pid)
    stage_runs = Counter(item_id for (item_id, key), pids in runs.items() if key == "fan"
                         for _ in pids)
    per_item = sum(stage_runs.values()) / N_ITEMS
    print(f"\nfan-out resume, {mode}: {per_item:.2f} stage-function runs per item "
          f"({N_ITEMS} items, {len(killed)} kills landed)")

    store = open_store(f"sqlite:///{db}")
    runner = Runner(fanpipe.build(mode), store)
    try:
        for item in fanpipe.items(N_ITEMS):
            item_id = item["id"]
            st = runner.status(item_id).stages
            assert st["fan"].output == fanpipe.expected(item_id), item_id
            assert st["join"].output == sorted(fanpipe.expected(item_id).values())
            history = runner.history(item_id)
            started_in = {pid_of(h.actor) for h in history
                          if h.subtask and h.state == "running"}
            for name in fanpipe.SUBTASKS:
                done = [h for h in history if h.subtask == name and h.state == "completed"]
                assert len(done) == 1, f"{item_id}/{name} completed {len(done)} times ({ctx})"
                pids = runs[(item_id, f"fan/{name}")]
                # the last execution is the one that committed; every earlier one was cut
                # short by a kill before its result committed, once per process at most
                assert pids and pids[-1] == pid_of(done[0].actor), (item_id, name, pids, ctx)
                assert len(set(pids)) == len(pids), (item_id, name, pids, ctx)
                assert set(pids[:-1]) <= killed, (item_id, name, pids, killed, ctx)
            fans = runs[(item_id, "fan")]
            assert len(set(fans)) == len(fans), (item_id, fans, ctx)
            if mode == "plan":
                # a stage function re-ran only where its process died before its fan-out
                # was recorded (no subtask claimed by that process)
                for pid in fans[:-1]:
                    assert pid in killed and pid not in started_in, (item_id, fans, ctx)
                assert fans[-1] in started_in, (item_id, fans, ctx)
    finally:
        store.close()
