"""treadle.testing imports, and capture_signals works, where pytest is not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["pytest"] = None          # import pytest now fails, as where it is not installed
    from treadle import Pipeline, Runner, open_store, stage
    from treadle.testing import StoreConformance, capture_signals

    @stage()
    def double(item):
        return item["n"] * 2

    pipeline = Pipeline("p", [double])
    runner = Runner(pipeline, open_store("memory://"))
    with capture_signals(pipeline) as seen:
        runner.submit({"id": "a", "n": 2})
        runner.run()
    print(seen.names("a"))
    try:
        StoreConformance.test_retry_of_unknown_item_raises.__globals__["pytest"].raises(KeyError)
    except ModuleNotFoundError as exc:
        print("conformance:", exc)
""")


def test_capture_signals_works_without_pytest():
    """capture_signals records a run; the pytest-only conformance suite says it needs pytest."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(["item_submitted", "stage_started", "stage_completed", "item_finished"])
    assert lines[1] == ("conformance: treadle.testing.StoreConformance runs under pytest: "
                        "pip install pytest (pytest.raises was used)")
