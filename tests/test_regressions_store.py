"""Regression tests for the store bugs of issue 12 (each names the behaviour it protects)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from treadle import (
    InvalidTransitionError,
    ItemState,
    Pipeline,
    Review,
    Runner,
    SerializationError,
    StageState,
    open_store,
    stage,
)

from .conftest import NO_POSTGRES, POSTGRES_URL


# -- bug 3: retry / rerun while an item is rolling back ----------------------------------
def rollback_pipeline(started: threading.Event, release: threading.Event) -> Pipeline:
    def undo_reserve(item):
        started.set()
        assert release.wait(30), "the test never released the rollback"

    @stage(rollback=undo_reserve)
    def reserve(item):
        return {"reserved": item["id"]}

    @stage(after=[reserve])
    def ship(item):
        raise RuntimeError("carrier down")

    return Pipeline("rb_retry", [reserve, ship], on_failure="rollback")


@pytest.mark.timeout(60)
def test_retry_and_rerun_are_refused_while_the_item_rolls_back(store):
    """retry() and rerun() of an item whose rollback runs raise and change nothing;
    the rollback is then recorded and the item ends rolled back."""
    started, release = threading.Event(), threading.Event()
    runner = Runner(rollback_pipeline(started, release), store, workers=2)
    runner.submit({"id": "o1"})
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(runner.run()))
    t.start()
    try:
        assert started.wait(30)
        before = store.dump()
        with pytest.raises(InvalidTransitionError, match=r"'o1'.*roll.*back.*wait"):
            runner.retry("o1")
        with pytest.raises(InvalidTransitionError, match=r"'o1'.*roll.*back.*wait"):
            runner.retry()  # every failed stage: o1's is one of them
        with pytest.raises(InvalidTransitionError, match=r"'o1'.*roll.*back.*wait"):
            runner.rerun("o1", from_stage="ship")
        assert store.dump() == before
    finally:
        release.set()
        t.join(30)
    assert done
    st = runner.status("o1")
    assert st.state == ItemState.ROLLED_BACK
    assert st.stages["reserve"].state == StageState.ROLLED_BACK
    assert st.stages["ship"].state == StageState.FAILED
    assert [h.state for h in runner.history("o1") if h.stage == "reserve"][-1] == "rolled_back"


def test_retry_and_rerun_are_refused_while_a_rollback_waits_for_a_runner(store):
    """An item marked rolling_back (no runner has taken its rollback yet) is not retried."""
    from treadle.store.base import Transition

    pipe = rollback_pipeline(threading.Event(), threading.Event())
    runner = Runner(pipe, store)
    runner.submit({"id": "o1"}, {"id": "o2"})
    store.register_runner("me", "h", 1, 60)
    claims = store.commit(pipe, "me", [], 10).claims
    claims = store.commit(pipe, "me", [Transition(c.item_id, c.stage, c.attempt, "completed",
                                                  output="1") for c in claims], 10).claims
    store.commit(pipe, "me", [
        Transition(c.item_id, c.stage, c.attempt, "failed", error="down") if c.item_id == "o1"
        else Transition(c.item_id, c.stage, c.attempt, "completed", output="2") for c in claims], 0)
    before = store.dump()
    with pytest.raises(InvalidTransitionError, match=r"'o1'.*rolling back.*[Ww]ait"):
        runner.retry("o1", stage="ship")
    with pytest.raises(InvalidTransitionError, match=r"'o1'.*rolling back"):
        runner.rerun("o1", from_stage="reserve")
    assert store.dump() == before
    runner.rerun("o2", from_stage="ship")  # another item is not held up


# -- bug 6: decisions carry the review version the reviewer saw --------------------------
@stage()
def draft(item, ctx):
    return Review({"text": f"draft v{ctx.attempt}"}, message="check the draft")


@stage(after=[draft])
def publish(item, ctx):
    return ctx.outputs["draft"]


versioned = Pipeline("versioned", [draft, publish])


@pytest.mark.timeout(60)
def test_a_decision_on_a_review_version_no_longer_shown_is_refused(store):
    """A reviewer who saw version 1 cannot approve, reject or send back version 2."""
    runner = Runner(versioned, store, workers=2)
    runner.submit({"id": "d1"})
    runner.run()
    seen = runner.status("d1").stages["draft"].review
    assert seen is not None and seen.version == 1 and seen.data == {"text": "draft v1"}
    runner.request_changes("d1", "draft", feedback="shorter", expect=1)
    runner.run()
    now = runner.status("d1").stages["draft"].review
    assert now is not None and now.version == 2 and now.data == {"text": "draft v2"}
    before = store.dump()
    message = r"'draft' of item 'd1' was re-run since you saw version 1.*version 2.*look again"
    with pytest.raises(InvalidTransitionError, match=message):
        runner.approve("d1", "draft", expect=1)
    with pytest.raises(InvalidTransitionError, match=message):
        runner.approve("d1", "draft", data={"text": "mine"}, expect=1)
    with pytest.raises(InvalidTransitionError, match=message):
        runner.reject("d1", "draft", reason="no", expect=1)
    with pytest.raises(InvalidTransitionError, match=message):
        runner.request_changes("d1", "draft", feedback="again", expect=1)
    assert store.dump() == before
    runner.approve("d1", "draft", expect=2)
    runner.run()
    st = runner.status("d1")
    assert st.stages["publish"].output == {"text": "draft v2"}
    assert st.stages["draft"].review is not None and st.stages["draft"].review.version == 2


@pytest.mark.timeout(60)
def test_cli_sends_the_version_it_showed(tmp_path, monkeypatch):
    """reviews --json lists the version; approve --expect and the review loop send it."""
    from treadle.cli import main
    from treadle.cli.interactive import review_loop

    db = f"sqlite:///{tmp_path / 'v.db'}"
    store = open_store(db)
    runner = Runner(versioned, store, workers=2)
    runner.submit({"id": "d1"}, {"id": "d2"})
    runner.run()
    mod = tmp_path / "versioned_mod.py"
    mod.write_text("from tests.test_regressions_store import versioned\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = io.StringIO()
    assert main(["reviews", "versioned_mod:versioned", "--json", "--db", db], stdout=out,
                stderr=io.StringIO()) == 0
    assert [(r["item_id"], r["version"]) for r in json.loads(out.getvalue())] == [
        ("d1", 1), ("d2", 1)]
    runner.request_changes("d1", "draft", feedback="again")
    runner.run()
    err = io.StringIO()
    assert main(["approve", "versioned_mod:versioned", "d1", "draft", "--expect", "1",
                 "--db", db], stdout=io.StringIO(), stderr=err) == 2
    assert "version 1" in err.getvalue() and "version 2" in err.getvalue()
    assert runner.status("d1").stages["draft"].state == StageState.AWAITING_REVIEW

    # The loop shows d1 at version 2; someone sends it back and it is re-run before the answer.
    answers = iter(["a", "a"])

    def ask(prompt: str) -> str:
        if prompt.startswith("[a]pprove") and runner.status("d1").stages["draft"].review.version == 2:
            runner.request_changes("d1", "draft", feedback="meanwhile")
            runner.advance("d1")
        return next(answers)

    loop_out = io.StringIO()
    tally = review_loop(runner, reviewer="ann", ask=ask, out=loop_out)
    assert "not decided" in loop_out.getvalue() and "version 2" in loop_out.getvalue()
    assert tally["approved"] == 1  # d2 only
    assert runner.status("d1").stages["draft"].state == StageState.AWAITING_REVIEW
    assert runner.status("d2").stages["draft"].state == StageState.COMPLETED
    store.close()


# -- bug 7: the item cache is shared by the threads using one store ---------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_threads_committing_on_one_store_with_a_tiny_item_cache(kind, tmp_path, request):
    """Many threads claiming through one store never lose an item of their batch."""
    url = (f"sqlite:///{tmp_path / 'c.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    url += ("&" if "?" in url else "?") + "item_cache=800"  # two or three items

    @stage()
    def one(item):
        return item["id"]

    @stage(after=[one])
    def two(item):
        return item["id"]

    pipe = Pipeline("cache_threads", [one, two])
    store = open_store(url)
    Runner(pipe, store).submit([{"id": f"i{n}"} for n in range(400)])
    errors: list[BaseException] = []

    def work(n: int) -> None:
        owner = f"t{n}"
        store.register_runner(owner, "h", 1, 60)
        try:
            result = store.commit(pipe, owner, [], 5)
            while result.claims:
                from treadle.store.base import Transition

                assert all(json.loads(c.item)["id"] == c.item_id for c in result.claims)
                done = [Transition(c.item_id, c.stage, c.attempt, "completed",
                                   output=json.dumps(c.item_id)) for c in result.claims]
                result = store.commit(pipe, owner, done, 5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not errors, errors
    assert store.counts(pipe) == {"one": {"completed": 400}, "two": {"completed": 400}}
    store.close()


# -- bug 10: request_changes with feedback that is not JSON -------------------------------
@pytest.mark.timeout(60)
@pytest.mark.parametrize("feedback", [object(), {"tags": {"a", "b"}}, float("nan"), "bad \ud800"],
                         ids=["object", "set", "nan", "surrogate"])
def test_request_changes_with_non_json_feedback_changes_nothing(store, feedback):
    """Feedback that is not JSON is a SerializationError and the store is unchanged."""
    runner = Runner(versioned, store, workers=1)
    runner.submit({"id": "d1"})
    runner.run()
    before = store.dump()
    with pytest.raises(SerializationError, match="feedback"):
        runner.request_changes("d1", "draft", feedback=feedback)
    with pytest.raises(SerializationError, match="feedback"):
        store.request_changes(versioned, "d1", "draft", feedback=feedback, actor="x",
                              reviewer=None)
    assert store.dump() == before
    assert runner.status("d1").stages["draft"].state == StageState.AWAITING_REVIEW


# -- bug 11: retry() of many failed stages is linear ------------------------------------
@pytest.mark.timeout(120)
def test_retry_of_thousands_of_failed_stages(store):
    """retry() of every failed stage moves each one exactly once, ready or waiting."""
    @stage()
    def first(item):
        if item["id"] % 2:
            raise RuntimeError("odd")
        return 1

    @stage(after=[first])
    def second(item):
        raise RuntimeError("always")

    pipe = Pipeline("many_failed", [first, second])
    runner = Runner(pipe, store, workers=4)
    n = 3000
    runner.submit([{"id": i} for i in range(n)])
    runner.run()
    assert store.counts(pipe)["first"] == {"completed": n // 2, "failed": n // 2}
    moved = runner.retry()
    assert len(moved) == n and len(set(moved)) == n
    counts = store.counts(pipe)
    assert counts["first"] == {"completed": n // 2, "pending": n // 2}
    assert counts["second"] == {"pending": n}
    # the odd items' second stage waits for first again; the even ones' is ready
    assert store.outlook(pipe).ready == n


# -- bug 12: recover() reads only what it looks for --------------------------------------
def test_recover_uses_indexes_on_sqlite(tmp_path):
    """The running rows and rolling-back items recover() reads are found by an index."""
    store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    plans = [" ".join(str(c) for c in row) for row in store._read(
        "EXPLAIN QUERY PLAN SELECT item_id, stage, attempt, owner FROM treadle_stage "
        "WHERE pipeline=? AND state='running'", ("p",))]
    assert any("treadle_stage_running" in p for p in plans), plans
    plans = [" ".join(str(c) for c in row) for row in store._read(
        "EXPLAIN QUERY PLAN SELECT item_id, state FROM treadle_item "
        "WHERE pipeline=? AND state LIKE 'rolling_back%'", ("p",))]
    assert any("treadle_item_rolling_back" in p for p in plans), plans
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_first_schema_store_gains_the_recovery_indexes(kind, tmp_path, request):
    """A store written with schema 1 is migrated: the indexes appear, the data stays."""
    from treadle.store import schema

    url = (f"sqlite:///{tmp_path / 'm.db'}" if kind == "sqlite"
           else request.getfixturevalue("postgres_url"))
    store = open_store(url)
    runner = Runner(versioned, store)
    runner.submit({"id": "kept"})
    # back to schema 1: its tables had no recovery indexes
    with store.transaction() as tx:
        for name in ("treadle_stage_running", "treadle_item_rolling_back"):
            tx._exec(f"DROP INDEX {name}")
        tx._exec("UPDATE treadle_meta SET value='1' WHERE key='schema_version'")
    store.close()
    new = open_store(url)
    assert new._read("SELECT value FROM treadle_meta WHERE key='schema_version'") == [
        (str(schema.SCHEMA_VERSION),)]
    if kind == "sqlite":
        names = {r[0] for r in new._read("SELECT name FROM sqlite_master WHERE type='index'")}
    else:
        names = {r[0] for r in new._read("SELECT indexname FROM pg_indexes")}
    assert {"treadle_stage_running", "treadle_item_rolling_back"} <= names
    Runner(versioned, new).run()
    assert Runner(versioned, new).status("kept").stages["draft"].state == "awaiting_review"
    new.close()


# -- bug 15: rows of dead runners are removed --------------------------------------------
def dead_pids(n: int) -> list[int]:
    procs = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(n)]
    for p in procs:
        p.wait()
    return [p.pid for p in procs]


@pytest.mark.timeout(60)
def test_rows_of_dead_runners_are_removed(store):
    """recover() deletes the runner rows of processes gone on this host and of long-lapsed leases."""
    host = socket.gethostname()
    for n, pid in enumerate(dead_pids(5)):
        store.register_runner(f"{host}:{pid}:dead{n}", host, pid, 30)
    store.register_runner("elsewhere:1:lapsed", "elsewhere", 1, -3600)  # lapsed an hour ago
    store.register_runner("elsewhere:2:live", "elsewhere", 2, 300)
    runner = Runner(versioned, store, workers=1)
    runner.submit({"id": "d1"})
    runner.run()
    with store.transaction() as tx:
        owners = {r[0] for r in tx.runners()}
    assert owners == {"elsewhere:2:live"}


@pytest.mark.timeout(60)
def test_a_runner_whose_row_was_removed_registers_again_on_heartbeat(store):
    """A runner taken for dead (its row deleted) is known again at its next heartbeat."""
    store.register_runner("h:1:paused", "h", 1, 30)
    with store.transaction() as tx:
        tx.delete_runners(["h:1:paused"])
    store.heartbeat("h:1:paused", 30)
    with store.transaction() as tx:
        assert [r[:3] for r in tx.runners()] == [("h:1:paused", "h", 1)]


# -- PostgreSQL: ?schema= in the store URL ------------------------------------------------
@pytest.mark.timeout(60)
def test_postgres_schema_option_creates_and_uses_the_schema():
    """postgresql://...?schema=NAME creates NAME if needed and keeps every table there."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    import psycopg2

    name = f"treadle_opt_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        store = open_store(f"{POSTGRES_URL}{sep}schema={name}")
        runner = Runner(versioned, store)
        runner.submit({"id": "s1"})
        runner.run()
        assert runner.status("s1").stages["draft"].state == "awaiting_review"
        store.close()
        admin = psycopg2.connect(POSTGRES_URL)
        cur = admin.cursor()
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s", (name,))
        assert {r[0] for r in cur} >= {"treadle_item", "treadle_stage", "treadle_history"}
        admin.close()
    finally:
        admin = psycopg2.connect(POSTGRES_URL)
        admin.autocommit = True
        admin.cursor().execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.close()


def test_postgres_schema_option_rejects_a_bad_name_and_masks_the_password():
    """A schema name that is not an identifier is a StoreError; the password stays hidden."""
    from treadle import StoreError

    with pytest.raises(StoreError) as info:
        open_store("postgresql://u:hunter2@127.0.0.1:1/db?schema=bad;name")
    assert "hunter2" not in str(info.value) and "schema" in str(info.value)


# -- MemoryStore: a failure mid-transaction leaves it unchanged ---------------------------
@pytest.mark.parametrize("where, limit", [("append_history", 10), ("set_ready", 0),
                                          ("claim_rows", 10), ("claim", 10)])
def test_memory_store_rolls_back_a_transaction_that_fails_midway(monkeypatch, where, limit):
    """A primitive raising inside a transaction leaves the memory store as it was."""
    from treadle.store import memtables
    from treadle.store.base import Transition

    store = open_store("memory://")
    runner = Runner(versioned, store)
    runner.submit({"id": "a"}, {"id": "b"})
    claims = store.commit(versioned, "me", [], 10).claims
    assert len(claims) == 2
    before, before_a = store.dump(), store.history(versioned, "a")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(memtables.MemoryTx, where, boom)
    done = [Transition(c.item_id, c.stage, c.attempt, "completed", output='"x"') for c in claims]
    with pytest.raises(RuntimeError, match="disk on fire"):  # (no claims: successors only
        store.commit(versioned, "me", done, limit)            # marked ready, no chaining)
    assert store.dump() == before
    assert store.history(versioned, "a") == before_a  # its per-item index rolled back too
    monkeypatch.undo()
    # and it still works: the same results commit, the next stages are claimed
    result = store.commit(versioned, "me", done, 10)
    assert len(result.accepted) == 2 and {c.stage for c in result.claims} == {"publish"}
    for item in ("a", "b"):  # an item's history (indexed) is the feed's rows of that item
        feed = [e["seq"] for e in store.events(versioned, 0, 1000) if e["item_id"] == item]
        assert [h["seq"] for h in store.history(versioned, item)] == feed
        assert [e["seq"] for e in store.events(versioned, 0, 1000, item)] == feed
        assert [e["seq"] for e in store.events(versioned, feed[1], 1000, item)] == feed[2:]


# -- the engine heartbeats and recovers from threads of its own ---------------------------
@pytest.mark.timeout(120)
def test_heartbeat_and_recover_run_alongside_commits(store):
    """heartbeat() and recover() on other threads while one thread commits: no error, no loss."""
    from treadle.store.base import Transition

    @stage()
    def only(item):
        return 1

    pipe = Pipeline("beats", [only])
    Runner(pipe, store).submit([{"id": i} for i in range(300)])
    host = socket.gethostname()
    store.register_runner("committer", host, 1, 60)
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop(fn) -> None:
        try:
            while not stop.is_set():
                fn()
        except BaseException as exc:
            errors.append(exc)

    helpers = [threading.Thread(target=loop, args=(lambda: store.heartbeat("committer", 60),)),
               threading.Thread(target=loop, args=(lambda: store.recover(pipe, host,
                                                                         lambda pid: True),))]
    for t in helpers:
        t.start()
    try:
        result = store.commit(pipe, "committer", [], 7)
        while result.claims:
            result = store.commit(pipe, "committer", [
                Transition(c.item_id, c.stage, c.attempt, "completed", output="1")
                for c in result.claims], 7)
    finally:
        stop.set()
        for t in helpers:
            t.join(30)
    assert not errors, errors
    assert store.counts(pipe) == {"only": {"completed": 300}}
