"""Nested pipelines under SIGKILL, in real subprocesses (tests/nested/albums.py).

A kill inside the transaction that spawns children leaves no child (and the
parent's claim is taken over); a kill while children run loses none and
doubles none; in both cases every parent completes exactly once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from treadle import ItemState, Runner, open_store
from treadle._crash import CRASH_EXIT

from .nested.albums import ALBUMS, TRACKS, albums, tracks
from .procs import ROOT, Script

SCRIPT = ROOT / "tests" / "nested" / "albums.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def db(sql_url: str) -> str:
    """An SQLite file, and a PostgreSQL schema of the test's own (conftest.sql_url)."""
    return sql_url


def _env(log: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TREADLE_CRASH_AT"}
    return {**env, "NESTED_LOG": str(log), "PYTHONPATH": str(ROOT), **extra}


def _check_complete_once(db: str) -> None:
    store = open_store(db)
    parents, children = Runner(albums, store), Runner(tracks, store)
    assert children.item_counts(exact=True) == {"completed": len(ALBUMS) * TRACKS}
    for a in ALBUMS:
        ids = [f"{a}/t{n}" for n in range(TRACKS)]
        assert [c[2] for c in store.children(albums, a)] == ids  # none lost, none doubled
        status = parents.status(a)
        assert status.state == ItemState.COMPLETED
        assert sorted(status.stages["split"].output) == ids
        done = Counter(h.stage for h in parents.history(a) if h.state == "completed")
        assert done == {"split": 1, "export": 1}


def test_kill_inside_the_spawn_transaction(db: str, tmp_path: Path) -> None:
    """Killed mid-spawn: nothing of the spawn is stored; the next run spawns once."""
    log = tmp_path / "log"
    proc = subprocess.run([sys.executable, str(SCRIPT), db], timeout=120,
                          env=_env(log, TREADLE_CRASH_AT="mid-spawn"))
    assert proc.returncode == CRASH_EXIT
    store = open_store(db)
    assert Runner(tracks, store).item_counts(exact=True) == {}
    assert all(store.children(albums, a) == [] for a in ALBUMS)
    subprocess.run([sys.executable, str(SCRIPT), db], timeout=120, env=_env(log), check=True)
    _check_complete_once(db)


def test_sigkill_while_children_run(db: str, tmp_path: Path) -> None:
    """SIGKILLed with children half done: the next run finishes them, nothing doubled."""
    log = tmp_path / "log"
    script = Script(SCRIPT, db, log, "NESTED_LOG")
    script.env.update(NESTED_SLOW="0.05")
    script.env.pop("TREADLE_CRASH_AT", None)
    script.kill_after(3 + 12)  # the three splits and some of the tracks' stages
    lines = [line.split() for line in script.lines()]
    assert 0 < sum(1 for s, *_ in lines if s == "identify") < len(ALBUMS) * TRACKS
    store: Any = open_store(db)
    assert any(s.state != ItemState.COMPLETED for s in Runner(albums, store).items())
    script.run()
    _check_complete_once(db)
