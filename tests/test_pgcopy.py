"""History and control rows reach PostgreSQL by ``COPY`` (treadle/store/pgcopy.py): every
value comes back exactly, in order, and a failed stage's awkward error text too."""

from __future__ import annotations

import math

import pytest

from treadle import Pipeline, Runner, open_store, stage
from treadle.store import pgcopy

pytestmark = pytest.mark.timeout(60)

AWKWARD = ["tab\there", "line\nbreak", "cr\rhere", "back\\slash", "\\N", "\\.", "",
           "ünïcødé ✓", "end\\", "quote ' and \" and ,"]


def test_copy_text_escapes_what_the_format_needs():
    assert pgcopy.field(None) == "\\N"
    assert pgcopy.field("\\N") == "\\\\N"  # the text, not NULL
    assert pgcopy.field("a\tb\nc\rd\\e") == "a\\tb\\nc\\rd\\\\e"
    assert pgcopy.field(True) == "t" and pgcopy.field(False) == "f"
    assert pgcopy.field(7) == "7"
    assert float(pgcopy.field(1764527000.123456789)) == 1764527000.123456789
    assert pgcopy.text([("a", None, 1), ("b\t", 2.5, 0)]) == "a\t\\N\t1\nb\\t\t2.5\t0\n"
    with pytest.raises(TypeError, match="no encoding for bytes"):
        pgcopy.field(b"raw")


def test_only_insert_values_statements_are_taken():
    assert pgcopy.split("INSERT INTO t (a, b) VALUES (%s,%s) ON CONFLICT (a) DO NOTHING") == (
        "INSERT INTO t (a, b)", "%s,%s", " ON CONFLICT (a) DO NOTHING")
    for bad in ("UPDATE t SET a=%s", "INSERT INTO t (a) SELECT 1", "INSERT INTO t VALUES (f(%s))"):
        with pytest.raises(ValueError, match="not an INSERT"):
            pgcopy.split(bad)


def test_rows_come_back_equal_and_in_order(postgres_url):
    import psycopg2

    conn = psycopg2.connect(postgres_url)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (id serial PRIMARY KEY, s text, f float8, n integer, "
                    "b boolean)")
        rows = [(s, float(i) / 3, i, i % 2 == 0) for i, s in enumerate(AWKWARD)]
        rows.append((None, math.pi, None, None))
        pgcopy.insert_many(cur, "INSERT INTO t (s, f, n, b) VALUES (%s,%s,%s,%s)", rows)
        # a statement COPY cannot take: one multi-row INSERT instead, same result
        pgcopy.insert_many(cur, "INSERT INTO t (s, f, n, b) VALUES (%s,%s,%s,'t') "
                                "ON CONFLICT (id) DO NOTHING", [("x", 1.5, 1), ("y", 2.5, 2)])
        cur.execute("SELECT s, f, n, b FROM t ORDER BY id")
        assert cur.fetchall() == [*rows, ("x", 1.5, 1, True), ("y", 2.5, 2, True)]
    finally:
        conn.rollback()
        conn.close()


def test_a_failed_stages_awkward_error_text_is_in_the_history(store_url):
    @stage()
    def fails(item):
        raise ValueError(item["text"])

    pipeline = Pipeline("awkward", [fails])
    runner = Runner(pipeline, open_store(store_url))
    runner.submit(*[{"id": f"i{n}", "text": text} for n, text in enumerate(AWKWARD)])
    runner.run()
    for n, text in enumerate(AWKWARD):
        error = f"ValueError: {text}" if text else "ValueError"
        failed = [h for h in runner.history(f"i{n}") if h.state == "failed"]
        assert failed and [h.error for h in failed] == [error] * len(failed)
        assert all('raise ValueError(item["text"])\n' in (h.traceback or "") for h in failed)
        assert runner.status(f"i{n}").stages["fails"].error == error
    events = runner.events(0, 10_000)
    assert [e.id for e in events] == sorted({e.id for e in events})


def test_text_the_connection_cannot_encode_fails_as_a_value_not_a_lost_connection(postgres_url):
    """A lone surrogate (``os.fsdecode`` of a non-UTF-8 name) is refused before COPY starts,
    as an INSERT refused it: a ``UnicodeEncodeError``, and the store does not take it for a
    lost connection (which it would retry for a minute)."""
    import os

    import psycopg2

    store = open_store(postgres_url)
    conn = psycopg2.connect(postgres_url)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE t (s text)")
        bad = os.fsdecode(b"disk \xff full")
        with pytest.raises(UnicodeEncodeError) as info:
            pgcopy.insert_many(cur, "INSERT INTO t (s) VALUES (%s)", [("fine",), (bad,)])
        assert not store.is_disconnect(info.value)
        conn.rollback()
        runner = Runner(Pipeline("p", [_noop]), store)
        with pytest.raises(UnicodeEncodeError):
            runner.pause(actor=bad)
        assert runner.paused() == []  # nothing half-written
    finally:
        conn.close()
        store.close()


@stage()
def _noop(item):
    return item
