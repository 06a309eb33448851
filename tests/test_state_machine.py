"""Stateful property test: the same random operations on memory, SQLite and PostgreSQL
stores, through the public ``Runner`` API, leave every store in the same state.

Operations: submit items, run to quiescence, crash (claims, and part of a fan-out,
committed by an owner that is gone) and restart, approve / approve with an edit /
reject, request changes, retry, rerun from a stage, cancel, and the bulk forms
(approve_all, reject_all, retry_all). After every step: the stores
agree on every item's stage, subtask and item states and outputs, and every
operation had the same outcome (value or error) on each; no (item, stage, attempt)
or (item, stage, subtask, attempt) is recorded completed twice; after a run no
stage is ``running``; every decision is in the store's history and status;
``counts()`` equals a count of the stage rows, and on the SQL stores every stage
counter equals a ``GROUP BY`` of the stage rows (``store/counts.py``).

Profiles (``TREADLE_HYPOTHESIS_PROFILE``): ``ci`` (default, about half a minute)
and ``long`` (see docs/durability.md, "Property tests").
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from typing import Any, Literal
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from treadle import BulkResult, FanOut, Pipeline, Review, Runner, Skipped, open_store, stage
from treadle.store import counts
from treadle.store.base import StateStore, Transition
from treadle.store.fanout import FanOutStart, SubResult
from treadle.store.sql import SqlStore

from .conftest import POSTGRES_URL, REQUIRE_POSTGRES, required

PROFILES = {
    # ci does not shrink: a failure is reported at once, with its full step list and a
    # blob to replay it; shrinking on a loaded machine could outlast the test's timeout.
    "ci": settings(max_examples=20, stateful_step_count=15, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck), print_blob=True,
                   phases=[Phase.explicit, Phase.reuse, Phase.generate]),
    "long": settings(max_examples=300, stateful_step_count=40, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck), print_blob=True),
}
PROFILE = os.environ.get("TREADLE_HYPOTHESIS_PROFILE", "ci")
TEST_TIMEOUT = {"ci": 150, "long": 6 * 3600}.get(PROFILE, 150)
RUN_TIMEOUT = 60.0  # one run() that takes longer has hung (generous: CI machines get loaded)
DEAD = "dead-owner"  # never registered: a runner process that is gone
SUBTASKS = ("p", "q", "r")


# -- the pipeline: every stage a deterministic function of the item and attempt ------------
def undo(item: dict[str, Any]) -> None:
    """A compensation with nothing to undo (what matters is that it is recorded)."""


def make_pipeline(on_failure: Literal["stop", "rollback"] = "stop") -> Pipeline:
    """scan -> (enrich: a FanOut, check: a Review for even n) -> publish -> archive."""
    rollback = undo if on_failure == "rollback" else None

    @stage(rollback=rollback)
    def scan(item: dict[str, Any], ctx: Any) -> dict[str, int]:
        n = item["n"]
        if n % 5 == 0 and ctx.attempt == 1:
            raise RuntimeError(f"scan of {n} fails on its first attempt")
        return {"n": n}

    @stage(after=[scan])
    def enrich(item: dict[str, Any], ctx: Any) -> FanOut:
        n, attempt = item["n"], ctx.attempt

        def part(name: str) -> Any:
            def run() -> Any:
                if name == "q" and n % 3 == 0 and attempt == 1:
                    raise ConnectionError(f"q is down for {n}")
                return f"{name}{n}"
            return run

        return FanOut({name: part(name) for name in SUBTASKS})

    @stage(after=[scan], rollback=rollback)
    def check(item: dict[str, Any], ctx: Any) -> Any:
        n = item["n"]
        if n % 2 == 0:
            return Review({"n": n, "attempt": ctx.attempt}, message="Confirm n")
        return {"n": n, "auto": True}

    @stage(after=[enrich, check])
    def publish(item: dict[str, Any], ctx: Any) -> Any:
        if item["n"] % 7 == 6:
            return Skipped("sevens are not published")
        return {"check": ctx.outputs["check"], "enrich": ctx.outputs["enrich"]}

    @stage(after=[publish], when=lambda item, ctx: item["n"] % 4 != 1)
    def archive(item: dict[str, Any], ctx: Any) -> str:
        return f"archived {item['n']}"

    return Pipeline("differential", [scan, enrich, check, publish, archive],
                    on_failure=on_failure)


def guarded_run(*runners: Runner) -> None:
    """``run()`` on each runner, concurrently; fails the test if one does not return
    within RUN_TIMEOUT, re-raises the first error."""
    errors: list[BaseException] = []

    def target(runner: Runner) -> None:
        try:
            runner.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,), name="guarded-run", daemon=True)
               for r in runners]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    for thread, runner in zip(threads, runners):
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            frames = sys._current_frames()
            stacks = "\n".join(
                f"--- {t.name}:\n" + "".join(traceback.format_stack(frames[t.ident]))
                for t in threading.enumerate() if t.ident in frames and t is not threading.current_thread())
            pytest.fail(f"run() on {runner.store!r} did not return within {RUN_TIMEOUT:g} s; "
                        f"{runner.store.counts(runner.pipeline)}\nthreads:\n{stacks}")
    if errors:
        raise errors[0]


def outcome(fn: Any) -> tuple[str, Any]:
    """What a call did, comparable across stores: its value or its error's type."""
    try:
        return ("ok", fn())
    except Exception as exc:
        return ("error", type(exc).__name__)


class StoresAgree(RuleBasedStateMachine):
    """One runner per store kind, driven in lockstep."""

    items = Bundle("items")

    def __init__(self, postgres: str | None, on_failure: Literal["stop", "rollback"] = "stop") -> None:
        super().__init__()
        self.pipeline = make_pipeline(on_failure)
        self.tmp = tempfile.mkdtemp(prefix="treadle-sm-")
        self.postgres = postgres
        self.schema: str | None = None
        urls = {"memory": "memory://", "sqlite": f"sqlite:///{self.tmp}/store.db"}
        if postgres:
            self.schema = f"treadle_sm_{uuid.uuid4().hex[:12]}"
            self._admin(f'CREATE SCHEMA "{self.schema}"')
            sep = "&" if "?" in postgres else "?"
            urls["postgresql"] = f"{postgres}{sep}options={quote(f'-csearch_path={self.schema}')}"
        self.stores: dict[str, StateStore] = {k: open_store(u) for k, u in urls.items()}
        self.runners = {k: Runner(self.pipeline, s, workers=3)
                        for k, s in self.stores.items()}
        self.known: set[str] = set()
        self.clean = True  # no crash since the last run
        self.just_ran = False  # the last step was a run
        # Retried or rerun items that the next run did not move (for the failure messages).
        self.touched: set[str] = set()  # items retried or rerun since the last run
        self.stale: set[str] = set()  # touched items the next run did not move
        self._before_run: dict[str, Any] = {}
        self.decisions: list[tuple[str, str, str, str]] = []  # (item, stage, state, reviewer)
        self.current: dict[str, tuple[str, Any]] = {}  # item -> (decision, edit) still standing

    def _admin(self, sql: str) -> None:
        import psycopg2

        assert self.postgres is not None
        conn = psycopg2.connect(self.postgres)
        try:
            conn.autocommit = True
            conn.cursor().execute(sql)
        finally:
            conn.close()

    def teardown(self) -> None:
        for s in self.stores.values():
            s.close()
        if self.schema:
            self._admin(f'DROP SCHEMA "{self.schema}" CASCADE')
        shutil.rmtree(self.tmp, ignore_errors=True)

    def each(self, call: Any) -> Any:
        """Apply ``call(runner)`` to every store; all must have the same outcome."""
        self.just_ran = False
        results = {k: outcome(lambda r=r: call(r)) for k, r in self.runners.items()}
        first = next(iter(results.values()))
        assert all(v == first for v in results.values()), results
        return first

    # -- rules ------------------------------------------------------------------------------
    @initialize(target=items, ns=st.lists(st.integers(0, 23), min_size=1, max_size=4, unique=True))
    def first_items(self, ns: list[int]) -> MultipleResults[str]:
        """Start from a few items run once, so that later steps find work in every state."""
        ids = [self._submit(n) for n in ns]
        self.run()
        return multiple(*ids)

    @rule(target=items, n=st.integers(0, 23))
    def submit(self, n: int) -> str:
        return self._submit(n)

    def _submit(self, n: int) -> str:
        item_id = f"i{n}"
        self.each(lambda r: r.submit({"id": item_id, "n": n}))
        self.known.add(item_id)
        return item_id

    def _item_view(self, item: str) -> Any:
        return self.views_of(self.runners["memory"], [item])[item]

    def _ran(self) -> None:
        """Bookkeeping after a run: which retried or rerun items it left unmoved."""
        for item, before in self._before_run.items():
            if self._item_view(item) == before:
                self.stale.add(item)
            else:
                self.stale.discard(item)
        self.touched.clear()
        self.clean = self.just_ran = True

    def _snapshot(self) -> None:
        self._before_run = {item: self._item_view(item) for item in self.touched}

    @rule()
    def run(self) -> None:
        self._snapshot()
        for runner in self.runners.values():
            guarded_run(runner)
        self._ran()

    @rule()
    def run_two_runners(self) -> None:
        """Two runners share each store at once: together they do the work once."""
        self._snapshot()
        for runner in self.runners.values():
            guarded_run(runner, Runner(self.pipeline, runner.store, workers=2))
        self._ran()

    @rule(item=items, fanout=st.booleans(), mid_rollback=st.booleans())
    def crash(self, item: str, fanout: bool, mid_rollback: bool) -> None:
        """A runner claims the item's ready stages (and starts a fan-out, one subtask
        done; or, in a rollback pipeline, records a stage's failure and claims the
        item's rollback), then its process dies: the next run must recover the rest."""
        claimed = self.each(lambda r: [
            (c.stage, c.attempt)
            for c in r.store.commit(r.pipeline, DEAD, [], 100, only=[item]).claims])
        if mid_rollback and self.pipeline.on_failure == "rollback" and claimed[0] == "ok" \
                and claimed[1]:
            stage_name, attempt = claimed[1][0]
            failed = Transition(item, stage_name, attempt, "failed", error="RuntimeError: crashed")
            self.each(lambda r: len(r.store.commit(r.pipeline, DEAD, [failed], 0).accepted))
            self.each(lambda r: r.store.claim_rollbacks(r.pipeline, DEAD, 100))
        for stage_name, attempt in claimed[1] if fanout and claimed[0] == "ok" else []:
            if stage_name == "enrich":
                start = FanOutStart(item, "enrich", attempt, SUBTASKS)
                started = self.each(lambda r: [p.run for p in r.store.commit(
                    r.pipeline, DEAD, [], 0, fanouts=[start]).fanouts])
                for name, sub_attempt in started[1][0] if started[0] == "ok" else []:
                    if name == "p":  # one subtask's result committed before the crash
                        done = SubResult(item, "enrich", "p", sub_attempt, "completed",
                                         output=f'"p{item[1:]}"')
                        self.each(lambda r: len(r.store.commit(
                            r.pipeline, DEAD, [], 0, subtasks=[done]).sub_accepted))
        self.clean = False

    def _decide(self, item: str, stage_name: str, state: str, call: Any) -> bool:
        """Make one decision on every store; True if it was accepted (by all)."""
        reviewer = f"rev{len(self.decisions)}"
        result = self.each(lambda r: call(r, reviewer))
        if result[0] == "ok":
            self.decisions.append((item, stage_name, state, reviewer))
        return bool(result[0] == "ok")

    @rule(item=items, stage_name=st.sampled_from(["check", "publish"]),
          edit=st.none() | st.integers(0, 9))
    def approve(self, item: str, stage_name: str, edit: int | None) -> None:
        data = None if edit is None else {"edited": edit}
        kw = {} if data is None else {"data": data}
        accepted = self._decide(
            item, stage_name, "completed",
            lambda r, who: r.approve(item, stage_name, reviewer=who, note="ok", **kw))
        if accepted and stage_name == "check":
            self.current[item] = ("approved", data)

    @rule(item=items)
    def reject(self, item: str) -> None:
        if self._decide(item, "check", "rejected",
                        lambda r, who: r.reject(item, "check", reason="wrong n", reviewer=who)):
            self.current[item] = ("rejected", None)

    @rule(item=items)
    def request_changes(self, item: str) -> None:
        if self._decide(item, "check", "changes_requested",
                        lambda r, who: r.request_changes(item, "check", feedback={"fix": who},
                                                         reviewer=who)):
            self.current.pop(item, None)

    def awaiting(self) -> list[str]:
        """Items whose ``check`` awaits review (the stores agree on it: an invariant)."""
        memory = self.runners["memory"]
        return memory.store.item_ids(memory.pipeline, "check", "awaiting_review", None)

    @precondition(lambda self: bool(self.awaiting()))
    @rule(data=st.data(), kind=st.sampled_from(["approve", "edit", "reject", "changes"]),
          edit=st.integers(0, 9))
    def decide_waiting(self, data: st.DataObject, kind: str, edit: int) -> None:
        """A decision on an item that awaits one (the rules above mostly hit the others)."""
        item = data.draw(st.sampled_from(self.awaiting()), label="item")
        if kind in ("approve", "edit"):
            self.approve(item, "check", edit if kind == "edit" else None)
        elif kind == "reject":
            self.reject(item)
        else:
            self.request_changes(item)
        assert self.decisions and self.decisions[-1][0] == item  # accepted everywhere

    @rule(item=st.none() | items)
    def retry(self, item: str | None) -> None:
        result = self.each(lambda r: sorted(r.retry(item)))
        if result[0] == "ok":
            for moved, _ in result[1]:
                self.current.pop(moved, None)
                self.touched.add(moved)

    @rule(item=items, from_stage=st.sampled_from(["scan", "enrich", "check", "publish"]))
    def rerun(self, item: str, from_stage: str) -> None:
        result = self.each(lambda r: r.rerun(item, from_stage=from_stage))
        if result[0] == "ok":
            self.touched.add(item)
        if result[0] == "ok" and from_stage in ("scan", "check"):
            self.current.pop(item, None)

    @rule(item=items)
    def cancel(self, item: str) -> None:
        """Cancel an item (refused, on every store alike, once it has finished)."""
        if self.each(lambda r: r.cancel([item], reason="not wanted"))[0] == "ok":
            self.current.pop(item, None)

    @rule(kind=st.sampled_from(["approve", "reject"]))
    def decide_all(self, kind: str) -> None:
        """Decide every review waiting at ``check`` in one bulk call."""
        def call(r: Runner) -> Any:  # sorted: see retry_all
            if kind == "approve":
                res = r.approve_all("check", reviewer="bulk")
            else:
                res = r.reject_all("check", reason="bulk", reviewer="bulk")
            return BulkResult(sorted(res.done), sorted(res.skipped))
        result = self.each(call)
        if result[0] == "ok":
            for done, _ in result[1].done:
                self.current[done] = ("approved", None) if kind == "approve" else ("rejected", None)

    @rule()
    def retry_all(self) -> None:
        # the same rows on every store; rows that failed in one commit tie on their
        # change time, and stores may list a tie in different orders
        def call(r: Runner) -> Any:
            res = r.retry_all()
            return BulkResult(sorted(res.done), sorted(res.skipped))
        result = self.each(call)
        if result[0] == "ok":
            for moved, _ in result[1].done:
                self.current.pop(moved, None)
                self.touched.add(moved)

    # -- invariants -----------------------------------------------------------------------
    def views(self) -> dict[str, Any]:
        return {kind: self.views_of(r, sorted(self.known)) for kind, r in self.runners.items()}

    @staticmethod
    def views_of(r: Runner, items: list[str]) -> dict[str, Any]:
        """Per item: its state and, per stage, state, attempts, output, error, subtasks."""
        view = {}
        for item in items:
            s = r.status(item)
            view[item] = (s.state.value, {
                name: (st_.state.value, st_.attempts, st_.output, st_.error,
                       sorted((n, t.state.value, t.attempts) for n, t in st_.subtasks.items()))
                for name, st_ in s.stages.items()})
        return view

    @invariant()
    def stores_agree(self) -> None:
        views = self.views()
        first_kind, first = next(iter(views.items()))
        for kind, view in views.items():
            for item in sorted(self.known):
                assert view[item] == first[item], (item, kind, view[item], first_kind, first[item])

    @invariant()
    def counts_match_rows(self) -> None:
        """counts() is a count of the stage rows (a cancelled item's pending ones as
        ``cancelled``); a SQL store's counters equal a GROUP BY of its stage rows."""
        for kind, r in self.runners.items():
            states = r.store.stored_item_states(r.pipeline, None)
            expect: dict[str, Counter[str]] = {s: Counter() for s in r.pipeline.order}
            for item, item_state in states.items():
                for rec in r.store.stage_records(r.pipeline, item):
                    cancelled = rec.state == "pending" and item_state == "cancelled"
                    expect[rec.stage]["cancelled" if cancelled else rec.state] += 1
            assert r.counts() == {s: dict(c) for s, c in expect.items()}, (kind, r.counts(), expect)
            if isinstance(r.store, SqlStore):  # the counter rows themselves
                assert counts.drift(r.store._read) == {}, kind

    @invariant()
    def no_completion_twice(self) -> None:
        for kind, r in self.runners.items():
            for item in self.known:
                done = Counter((h.stage, h.subtask, h.attempt) for h in r.history(item)
                               if h.state == "completed")
                twice = [k for k, n in done.items() if n > 1]
                assert not twice, (kind, item, twice)

    @invariant()
    def nothing_running_after_a_run(self) -> None:
        if not self.clean:
            return
        for kind, r in self.runners.items():
            running = {i: c["running"] for i, c in r.counts().items() if c.get("running")}
            assert not running, (kind, running)

    @invariant()
    def settled_item_states_are_exact_after_a_run(self) -> None:
        """Right after a run, the item states the store keeps match those its stages imply
        (a decision, retry or rerun settles them only at the next run)."""
        if not self.just_ran:
            return
        for kind, r in self.runners.items():
            settled = Counter(r.item_counts())
            exact = Counter(r.item_counts(exact=True))
            assert settled == exact, (kind, dict(settled), dict(exact), self.stale)

    @invariant()
    def every_decision_is_recorded(self) -> None:
        for kind, r in self.runners.items():
            histories = {i: r.history(i) for i in {d[0] for d in self.decisions}}
            for item, stage_name, state, reviewer in self.decisions:
                assert any(h.stage == stage_name and h.state == state and h.actor == reviewer
                           for h in histories[item]), (kind, item, stage_name, state, reviewer)
            for item, (decision, data) in self.current.items():
                st_ = r.status(item).stages["check"]
                if decision == "approved" and st_.state.value == "completed":
                    assert st_.review is not None and st_.review.decision == "approved", (kind, item)
                    if data is not None:
                        assert st_.output == data, (kind, item, st_.output)
                        pub = r.status(item).stages["publish"]
                        if pub.state.value == "completed":
                            assert pub.output["check"] == data, (kind, item, pub.output)
                if decision == "rejected" and st_.state.value == "rejected":
                    assert st_.review is not None and st_.review.decision == "rejected", (kind, item)


def require_postgres_in_ci() -> None:
    """Without a server the test compares memory and SQLite only, except where CI demands it."""
    if not POSTGRES_URL and required(REQUIRE_POSTGRES):
        pytest.fail(f"TREADLE_TEST_POSTGRES_URL is not set; {REQUIRE_POSTGRES}=1 requires it",
                    pytrace=False)


@pytest.mark.timeout(TEST_TIMEOUT)
def test_memory_sqlite_and_postgresql_agree_step_by_step() -> None:
    """Random operation sequences leave memory, SQLite and PostgreSQL stores in one state."""
    require_postgres_in_ci()
    run_state_machine_as_test(lambda: StoresAgree(POSTGRES_URL), settings=PROFILES[PROFILE])


@pytest.mark.timeout(TEST_TIMEOUT)
def test_stores_agree_with_rollbacks() -> None:
    """The same with ``on_failure="rollback"``: compensations, and crashes in the middle of
    them, leave every store in one state."""
    require_postgres_in_ci()
    profile = PROFILES[PROFILE]
    run_state_machine_as_test(lambda: StoresAgree(POSTGRES_URL, "rollback"),
                              settings=settings(profile, max_examples=max(1, profile.max_examples // 2)))
