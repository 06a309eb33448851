"""The API behind the volume commands: Runner.items filters, bulk decisions in batches,
and open_store(create=False)."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import pytest

from treadle import BulkResult, Runner, StoreError, open_store
from treadle.testing import capture_signals

from .bulk_pipeline import pipeline, seed

# -- Runner.items --------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_items_filters_by_error_and_since_and_pages(store_url):
    """items(error=, since=, limit=, offset=) filters in the store and pages through it."""
    runner = seed(store_url, fine=2, slow=3, oops=1)
    failed = runner.items(state="failed")
    # oldest change first: in the order the stages failed
    assert sorted(s.item_id for s in failed) == ["oops-0000", "slow-0000", "slow-0001", "slow-0002"]
    assert [s.stages["check"].updated_at for s in failed] == sorted(
        s.stages["check"].updated_at for s in failed)
    assert sorted(s.item_id for s in runner.items(state="failed", error="timeout")) == [
        "slow-0000", "slow-0001", "slow-0002"]
    assert [s.item_id for s in runner.items("check", error="BAD FORMAT")] == ["oops-0000"]
    assert runner.items(since=dt.datetime.now() + dt.timedelta(minutes=5)) == []
    assert len(runner.items(since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))) == 6
    assert len(runner.items(since=time.time() - 60, state="failed")) == 4
    pages = [runner.items(state="failed", limit=3, offset=o) for o in (0, 3)]
    assert [s.item_id for page in pages for s in page] == [s.item_id for s in failed]
    assert len(runner.items(limit=None)) == 6


def test_items_refuses_bad_filters_clearly():
    """Unknown stage or state, an empty error, a since that is no time, a bad limit: named errors."""
    runner = Runner(pipeline, open_store("memory://"))
    for kwargs, error, fragment in (
        ({"stage": "chek"}, KeyError, "Did you mean 'check'"),
        ({"state": "done"}, ValueError, "state='done' is not a stage state; use one of: pending"),
        ({"error": " "}, ValueError, "error= is a text to look for"),
        ({"since": "2h"}, TypeError, "since= takes a datetime or an epoch time"),
        ({"limit": 0}, ValueError, "limit must be an int >= 1 or None"),
        ({"offset": -1}, ValueError, "offset must be an int >= 0"),
    ):
        with pytest.raises(error, match=fragment):
            runner.items(**kwargs)


# -- bulk decisions ------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_approve_all_decides_in_batches_of_500_and_signals_each():
    """approve_all(where_message=) decides 1,100 reviews in three transactions, one signal each."""
    runner = seed("memory://", fine=1100, odd=5)
    sizes: list[int] = []
    decide_many = runner.store.decide_many

    def counting(shape, keys, **kw):
        sizes.append(len(keys))
        return decide_many(shape, keys, **kw)

    runner.store.decide_many = counting  # type: ignore[method-assign]
    with capture_signals() as events:
        result = runner.approve_all("check", where_message="looks FINE", reviewer="ann")
    assert isinstance(result, BulkResult)
    assert sizes == [500, 500, 100]
    assert len(result.done) == 1100 and result.skipped == [] and result.by_stage() == {"check": 1100}
    assert len(events.of("review_decided")) == 1100
    assert {e.data["reviewer"] for e in events.of("review_decided")} == {"ann"}
    assert runner.counts()["check"] == {"completed": 1100, "awaiting_review": 5}


@pytest.mark.timeout(60)
def test_reject_all_and_retry_all_report_what_they_did(store_url):
    """reject_all needs a reason; retry_all(error=) moves the matching failed stages only."""
    runner = seed(store_url, hold=3, slow=2, oops=1)
    with pytest.raises(ValueError, match="needs a reason"):
        runner.reject_all("intake", reason="")
    rejected = runner.reject_all("intake", reason="duplicates", reviewer="sam")
    assert rejected.item_ids == ["hold-0000", "hold-0001", "hold-0002"]
    assert runner.status("hold-0001").stages["intake"].review.note == "duplicates"
    assert runner.reject_all(reason="again").done == []  # nothing waits any more
    retried = runner.retry_all(error="upstream timeout", actor="ops")
    assert sorted(retried.done) == [("slow-0000", "check"), ("slow-0001", "check")]
    assert retried.skipped == []
    assert runner.status("oops-0000").stages["check"].state == "failed"
    assert runner.retry_all("check").item_ids == ["oops-0000"]  # rejected intake rows: other stage


# -- open_store(create=False) ----------------------------------------------------------

def test_open_store_without_create_refuses_what_is_no_store(tmp_path: Path):
    """A missing, empty, foreign or non-SQLite file, and memory://: "no store at", nothing written."""
    missing = tmp_path / "missing.db"
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    text = tmp_path / "notes.db"
    text.write_text("notes\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for path, why in ((missing, "does not exist"), (empty, "is empty"),
                      (foreign, "without treadle's tables"), (text, "is not an SQLite database")):
        with pytest.raises(StoreError, match=rf"no store at sqlite:///.*{why}"):
            open_store(f"sqlite:///{path}", create=False)
    with pytest.raises(StoreError, match="no store at memory://"):
        open_store("memory://", create=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_open_store_without_create_opens_a_store(store_url):
    """An existing store of any kind opens with create=False (memory:// never exists before)."""
    open_store(store_url).close()
    if store_url == "memory://":
        return
    store = open_store(store_url, create=False)
    assert store.counts(pipeline) == {"intake": {}, "check": {}, "publish": {}}
    store.close()


def test_open_store_without_create_makes_no_postgres_schema(postgres_url):
    """A ?schema= that does not exist is "no store at", and is not created."""
    import psycopg2

    url = f"{postgres_url}&schema=treadle_never_made"
    with pytest.raises(StoreError, match=r"no store at postgresql://.*schema 'treadle_never_made'"):
        open_store(url, create=False)
    con = psycopg2.connect(postgres_url)
    try:
        cur = con.cursor()
        cur.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name='treadle_never_made'")
        assert cur.fetchall() == []
    finally:
        con.close()
