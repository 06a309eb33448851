"""Regression: retry() racing cancel() on PostgreSQL must not un-cancel the item."""
import os, subprocess, sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not os.environ.get("TREADLE_TEST_POSTGRES_URL"), reason="needs PostgreSQL")
def test_retry_racing_cancel_leaves_the_item_cancelled():
    script = Path(__file__).with_name("pg_retry_cancel_race.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
