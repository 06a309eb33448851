"""Stage counters (store/counts.py, schema 7): built by the migration, read by counts(),
shown with the cancelled column; items(stage, state) and the cancelled items read
through indexes (query plans)."""

from __future__ import annotations

from typing import Any

import pytest

from treadle import Runner, open_store
from treadle.cli.render import counts_table
from treadle.store import counts, schema
from treadle.store.sql import SqlStore

from .bulk_pipeline import pipeline as bulk_pipeline

pytestmark = pytest.mark.timeout(120)


def _sql(store: Any) -> SqlStore:
    assert isinstance(store, SqlStore)
    return store


def _run_some(runner: Runner, n: int) -> None:
    kinds = ("hold", "fine", "slow", "plain")
    runner.submit(*({"id": f"t{i}", "kind": kinds[i % 4]} for i in range(n)))
    runner.run()


def test_a_schema_6_store_gains_exact_counters(sql_url: str) -> None:
    """Opening a schema 6 store builds the counters from its rows (and the new index)."""
    store = _sql(open_store(sql_url))
    runner = Runner(bulk_pipeline, store, workers=2)
    _run_some(runner, 30)
    runner.cancel([runner.items(state="awaiting_review", limit=1)[0].item_id])
    expect = runner.counts()
    with store.transaction() as tx:  # back to schema 6: no counters, the old index
        tx._exec("DROP TABLE treadle_count")
        tx._exec("DROP INDEX treadle_stage_by_state")
        tx._exec("CREATE INDEX stagerun_pipeline_stage_state_updated_at ON treadle_stage "
                 "(pipeline, stage, state, updated_at)")
        tx._exec("UPDATE treadle_meta SET value='6' WHERE key='schema_version'")
    store.close()

    new = _sql(open_store(sql_url))
    assert new._read("SELECT value FROM treadle_meta WHERE key='schema_version'") == [
        (str(schema.SCHEMA_VERSION),)]
    assert counts.drift(new._read) == {}
    assert Runner(bulk_pipeline, new).counts() == expect
    assert any(c.get("cancelled") for c in expect.values())
    indexes = {r[0] for r in new._read(
        "SELECT name FROM sqlite_master WHERE type='index'" if "sqlite" in sql_url
        else "SELECT indexname FROM pg_indexes WHERE schemaname=current_schema()")}
    assert "treadle_stage_by_state" in indexes
    assert "stagerun_pipeline_stage_state_updated_at" not in indexes
    new.close()


def _plan(store: SqlStore, sql: str, params: tuple[Any, ...]) -> str:
    if store.url.startswith("sqlite"):
        return "\n".join(str(r[-1]) for r in store._read(f"EXPLAIN QUERY PLAN {sql}", params))
    return "\n".join(str(r[0]) for r in store._read(f"EXPLAIN {sql}", params))


def test_items_by_stage_and_state_and_the_cancelled_items_read_an_index(sql_url: str) -> None:
    """items(stage, state, limit) reads the first rows of (pipeline, stage, state,
    updated_at, id) in order, never sorting the rows of one submission (they share
    updated_at); cancelled items come from the item states' index."""
    store = _sql(open_store(sql_url))
    runner = Runner(bulk_pipeline, store)
    runner.submit(*({"id": f"t{i}", "kind": "plain"} for i in range(3000)))  # PostgreSQL: ANALYZEd
    runner.cancel(["t5", "t7"])
    assert [s.item_id for s in runner.items(state="cancelled")] == ["t5", "t7"]
    assert [s.item_id for s in runner.items(state="cancelled", limit=1, offset=1)] == ["t7"]
    stage_name = bulk_pipeline.order[0]
    got = runner.items(stage=stage_name, state="pending", limit=100)
    assert [s.item_id for s in got][:3] == ["t0", "t1", "t2"]
    plan = _plan(store, "SELECT item_id, state, attempt, error, review, updated_at, id "
                 "FROM treadle_stage WHERE pipeline=? AND stage=? AND state=? "
                 "ORDER BY updated_at, id LIMIT 100", (bulk_pipeline.name, stage_name, "pending"))
    assert "treadle_stage_by_state" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
    plan = _plan(store, "SELECT item_id FROM treadle_item WHERE pipeline=? AND state=? "
                 "ORDER BY id LIMIT 100", (bulk_pipeline.name, "cancelled"))
    assert "pipeline_state" in plan, plan
    store.close()


def test_the_counts_table_has_a_cancelled_column(tmp_path: Any) -> None:
    """A cancelled item's unfinished stages show as cancelled, not pending."""
    runner = Runner(bulk_pipeline, open_store(f"sqlite:///{tmp_path / 's.db'}"))
    runner.submit({"id": "a", "kind": "plain"}, {"id": "b", "kind": "plain"})
    runner.cancel(["a"])
    got = runner.counts()
    assert all(c == {"pending": 1, "cancelled": 1} for c in got.values()), got
    text = counts_table(got)
    assert "cancelled" in text.splitlines()[0]
