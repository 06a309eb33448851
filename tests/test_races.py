"""Races on PostgreSQL found by attacking cancel, pause and retry with concurrent sessions:
each script widens its window on purpose (a held lock, a slow trigger) and exits 1 when it
reproduces the race (see the docstring at the top of each script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_postgres

RACES = Path(__file__).resolve().parent / "races"
ROOT = RACES.parent.parent


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", [
    "pg_retry_cancel_race.py",      # a retry overwrote a concurrent cancel
    "pg_pause_missed.py",           # a pause committed out of id order was never seen
    "pg_cancel_spurious_event.py",  # cancel recorded history from a stale read
    "pg_cancel_deadlock.py",        # cancel vs result commits: a raw deadlock error
])
def test_race_stays_fixed(script: str) -> None:
    url = require_postgres()
    env = {**os.environ, "TREADLE_TEST_POSTGRES_URL": url, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(RACES / script)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=200)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
